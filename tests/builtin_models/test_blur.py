"""Tests for the built-in ``blur`` model: both implementations against a reference Gaussian.

The reference is SciPy's ``ndimage.gaussian_filter`` in float64 with the model's kernel
radius (``ceil(3 sigma)``) and the matching border mode (extend = ``nearest``, mirror =
``mirror``, black = ``constant`` 0). A direct 2-D float64 convolution written here checks
the reference itself on a small frame.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import torch

from frameserve.builtin_models.blur.model import gaussian_blur, gaussian_kernel, kernel_radius
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import FrameError, KnobError

SCIPY_MODES = {"extend": "nearest", "mirror": "mirror", "black": "constant"}
BACKENDS = ("opencv", "torch")
TOLERANCE = 1e-4


def reference_blur(image: np.ndarray, sigma: float, edges: str) -> np.ndarray:
    """SciPy's Gaussian of ``image`` (``(C, H, W)``) in float64, the model's radius and edges."""
    if sigma <= 0:
        return image.astype(np.float64)
    radius = kernel_radius(sigma)
    return np.asarray(
        scipy.ndimage.gaussian_filter(
            image.astype(np.float64),
            sigma=(0.0, sigma, sigma),
            mode=SCIPY_MODES[edges],
            cval=0.0,
            radius=(0, radius, radius),
        )
    )


def direct_blur(image: np.ndarray, sigma: float, edges: str) -> np.ndarray:
    """A 2-D (not separable) float64 convolution, pixel by pixel, with explicit borders."""
    channels, height, width = image.shape
    radius = kernel_radius(sigma)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / sigma**2)
    weights /= weights.sum()

    def source(index: int, length: int) -> int | None:
        if 0 <= index < length:
            return index
        if edges == "black":
            return None
        if edges == "extend" or length == 1:
            return min(max(index, 0), length - 1)
        period = 2 * (length - 1)
        index %= period
        return period - index if index >= length else index

    out = np.zeros((channels, height, width))
    for y in range(height):
        for x in range(width):
            for dy, row_weights in zip(offsets, weights, strict=True):
                sy = source(y + int(dy), height)
                for dx, weight in zip(offsets, row_weights, strict=True):
                    sx = source(x + int(dx), width)
                    if sy is not None and sx is not None:
                        out[:, y, x] += weight * image[:, sy, sx]
    return out


def photo(height: int, width: int, channels: int = 3) -> torch.Tensor:
    """A crop of scikit-image's coffee as ``(channels, height, width)`` float32; the fourth
    channel, if any, is a ramp with values above 1 (scene-linear highlights are not clipped).
    """
    rgb = skimage.data.coffee()[:height, :width].astype(np.float32) / 255.0
    planes = [rgb[..., c] for c in range(3)]
    if channels == 4:
        planes.append(
            np.linspace(0.0, 4.0, height * width, dtype=np.float32).reshape(height, width)
        )
    return torch.from_numpy(np.stack(planes[:channels]))


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


def test_the_reference_is_a_gaussian() -> None:
    image = photo(9, 13).numpy()
    for edges in SCIPY_MODES:
        for sigma in (0.7, 2.5):  # radius 3 (inside the frame) and 8 (wider than it)
            np.testing.assert_allclose(
                reference_blur(image, sigma, edges), direct_blur(image, sigma, edges), atol=1e-12
            )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edges", tuple(SCIPY_MODES))
@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.5, 1.0, 2.0, 5.0, 13.7])
def test_matches_the_reference(backend: str, edges: str, sigma: float) -> None:
    image = photo(61, 97, channels=4)  # not square, 4 channels, values up to 4
    blurred = gaussian_blur(image, sigma, edges, backend=backend)
    assert blurred.shape == image.shape and blurred.dtype == torch.float32
    expected = reference_blur(image.numpy(), sigma, edges)
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edges", tuple(SCIPY_MODES))
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 7), (3, 2, 3), (4, 5, 2)])
def test_tiny_frames_and_kernels_wider_than_the_frame(
    backend: str, edges: str, shape: tuple[int, int, int]
) -> None:
    image = torch.from_numpy(np.random.default_rng(7).random(shape, dtype=np.float32))
    for sigma in (0.3, 4.0):
        blurred = gaussian_blur(image, sigma, edges, backend=backend)
        expected = reference_blur(image.numpy(), sigma, edges)
        np.testing.assert_allclose(blurred.numpy(), expected, rtol=0, atol=TOLERANCE)


def test_the_two_implementations_agree_on_a_photo() -> None:
    image = photo(300, 400)
    for sigma in (2.0, 20.0):
        opencv = gaussian_blur(image, sigma, "extend", backend="opencv")
        torch_path = gaussian_blur(image, sigma, "extend", backend="torch")
        torch.testing.assert_close(opencv, torch_path, rtol=0, atol=1e-5)


def test_size_zero_is_the_frame_itself_and_flat_frames_stay_flat() -> None:
    image = photo(40, 50)
    assert gaussian_blur(image, 0.0) is image
    flat = torch.full((3, 40, 50), 2.5)
    for backend in BACKENDS:
        for edges in ("extend", "mirror"):
            blurred = gaussian_blur(flat, 7.0, edges, backend=backend)
            torch.testing.assert_close(blurred, flat, rtol=0, atol=1e-5)


def test_auto_picks_opencv_on_the_cpu_and_keeps_dtype_and_input() -> None:
    image = photo(30, 40)
    before = image.clone()
    auto = gaussian_blur(image, 3.0)
    assert torch.equal(auto, gaussian_blur(image, 3.0, backend="opencv"))
    assert torch.equal(image, before)  # the input is not touched
    half = gaussian_blur(image.half(), 3.0)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), auto, rtol=0, atol=2e-3)
    double = gaussian_blur(image.double(), 3.0, backend="torch")
    assert double.dtype == torch.float64
    strided = gaussian_blur(image[:, ::2, ::2], 3.0)  # not contiguous
    torch.testing.assert_close(strided, gaussian_blur(image[:, ::2, ::2].contiguous(), 3.0))


@pytest.mark.parametrize("edges", tuple(SCIPY_MODES))
def test_frames_off_the_cpu_stay_on_their_device(edges: str) -> None:
    # A GPU frame takes the PyTorch path and never leaves the device. There is no GPU here;
    # PyTorch's "meta" device (shapes only, no data) stands in: any copy to the CPU or to
    # numpy (what the OpenCV path does) would fail on it.
    frame = torch.empty(3, 20, 30, device="meta")
    blurred = gaussian_blur(frame, 2.0, edges)
    assert blurred.device.type == "meta" and blurred.shape == (3, 20, 30)
    with pytest.raises(FrameError, match="the OpenCV blur takes CPU tensors"):
        gaussian_blur(frame, 2.0, edges, backend="opencv")


def test_bad_arguments_are_refused() -> None:
    image = photo(8, 8)
    with pytest.raises(KnobError, match="edges 'wrap' is not one of extend, mirror, black"):
        gaussian_blur(image, 1.0, "wrap")
    with pytest.raises(KnobError, match="backend 'fft'"):
        gaussian_blur(image, 1.0, backend="fft")
    with pytest.raises(FrameError, match=r"\(C, H, W\)"):
        gaussian_blur(image[0], 1.0)


def test_kernel() -> None:
    assert kernel_radius(0.01) == 1 and kernel_radius(2.0) == 6 and kernel_radius(2.1) == 7
    kernel = gaussian_kernel(2.0, device=torch.device("cpu"))
    assert kernel.shape == (13,) and math.isclose(float(kernel.sum()), 1.0, rel_tol=1e-6)
    assert torch.equal(kernel, kernel.flip(0))


@pytest.mark.parametrize("edges", tuple(SCIPY_MODES))
def test_the_model_through_the_runner(runner: Runner, edges: str) -> None:
    image = photo(120, 170)
    spec = runner.registry.get("blur").spec
    assert spec.weights == ()
    result = runner.run(build_request(spec, {"image": image}, {"size": 4.5, "edges": edges}))
    blurred = result.frames["image"]
    assert blurred.shape == (3, 120, 170)
    expected = reference_blur(image.numpy(), 4.5, edges)
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=0, atol=TOLERANCE)
    assert result.objects == ()


def test_the_brightest_button_reports_nuke_coordinates(runner: Runner) -> None:
    image = torch.zeros(3, 40, 60)
    image[:, 10, 45] = 50.0  # row 10 from the top is y = 29 in Nuke
    spec = runner.registry.get("blur").spec
    result = runner.run(build_request(spec, {"image": image}, {"size": 1.0, "brightest": True}))
    assert len(result.objects) == 1
    assert "x=45, y=29" in str(result.objects[0].to_data())
