"""Tests for the built-in ``cutout`` model: U²-Netp and the guided filter on real photographs.

The photographs are scikit-image's ``coffee`` (600 x 400: an espresso cup with a spoon on a
saucer, on a wooden table) and ``chelsea`` (451 x 300: a cat's head, close up, in front of a
blurred room). U²-Netp mattes the salient object: the cup with its saucer and spoon; the cat.
The regions below were drawn by looking at the photos; each lies well inside or well outside
the object (``(top, bottom, left, right)`` in image pixels):

- coffee: the cup (its rim, the coffee and the red body down to the handle), the saucer below
  the cup; the table in the top-right corner, the bottom-right corner and the left edge;
- chelsea: the face (forehead to nose), both eyes; the room right of the cat's head.

Measured here with the default knobs (mean matte over the region): cup 1.000, saucer 0.987,
tables 0.000; face 0.991, eyes 1.000, room 0.000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.builtin_models.blur.model import gaussian_blur
from frameserve.builtin_models.cutout.model import Cutout, solve_size
from frameserve.builtin_models.person_matte.edges import grow_matte
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import FrameError, ModelSetupError
from frameserve.networks.u2net import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_SIZE,
    OnnxU2NetP,
    U2NetP,
    load_u2netp,
    read_onnx_convolutions,
)
from frameserve.plugin.model import SCENE_LINEAR
from frameserve.weights import shipped_weights_path

WEIGHTS = shipped_weights_path("cutout", "u2netp.onnx")

COFFEE_INSIDE = {"cup": (80, 250, 200, 380), "saucer": (290, 360, 150, 420)}
COFFEE_OUTSIDE = {
    "table top right": (0, 60, 450, 600),
    "table bottom right": (280, 400, 500, 600),
    "table left": (300, 400, 0, 60),
}
CHELSEA_INSIDE = {"face": (40, 240, 110, 330), "eyes": (85, 165, 130, 350)}
CHELSEA_OUTSIDE = {"room": (90, 300, 390, 451)}


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as ``(3, H, W)`` float32 sRGB values in 0-1."""
    image = getattr(skimage.data, name)().astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def region(matte: torch.Tensor, box: tuple[int, int, int, int], scale: float = 1.0) -> float:
    """Mean of ``matte`` (``(H, W)``) over ``box`` (photo coordinates times ``scale``)."""
    top, bottom, left, right = (round(v * scale) for v in box)
    return float(matte[top:bottom, left:right].mean())


def smoothstep(values: np.ndarray) -> np.ndarray:
    """The edge the model draws with threshold 0.5 and softness 1."""
    return values * values * (3.0 - 2.0 * values)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


@pytest.fixture(scope="module")
def torch_net() -> U2NetP:
    """The network rebuilt in PyTorch, with the ONNX file's weights."""
    return load_u2netp(WEIGHTS)


@pytest.fixture(scope="module")
def session() -> onnxruntime.InferenceSession:
    """The ONNX file in onnxruntime, used directly (the reference)."""
    return onnxruntime.InferenceSession(str(WEIGHTS), providers=["CPUExecutionProvider"])


def run_cutout(
    runner: Runner, image: torch.Tensor, *, colourspace: str = "srgb", **knobs: object
) -> torch.Tensor:
    """The model's RGBA output for ``image``, through the runner."""
    spec = runner.registry.get("cutout").spec
    request = build_request(spec, {"image": image}, knobs, colourspace=colourspace)
    return runner.run(request).frames["image"]


@pytest.fixture(scope="module")
def coffee_rgba(runner: Runner) -> torch.Tensor:
    return run_cutout(runner, photo("coffee"))


def reference_input(image: np.ndarray) -> np.ndarray:
    """``(1, 3, 320, 320)`` input for the ONNX file, written here from the weights' README:
    RGB scaled to 0-1 by the image's maximum, minus the ImageNet mean, over its std.
    """
    scaled = image / image.max()
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return ((scaled - mean) / std)[None].astype(np.float32)


def square_photo(name: str) -> torch.Tensor:
    """A photograph stretched to 320 x 320 (as the network sees any frame)."""
    return F.interpolate(
        photo(name)[None], size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True
    )[0].clamp(0.0, 1.0)


# -- the network -------------------------------------------------------------------------------


def test_the_declaration() -> None:
    spec = Cutout.spec()
    assert spec.id == "cutout" and spec.colourspace_in == "srgb"
    assert spec.outputs[0].channels == 4
    (weights,) = spec.weights or ()
    assert weights.licence == "Apache-2.0" and weights.commercial
    assert "xuebinqin/U-2-Net" in weights.source
    folder = WEIGHTS.parent
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "U^2-Net" in (folder / "NOTICE").read_text()


def test_the_pytorch_network_matches_onnxruntime(
    session: onnxruntime.InferenceSession, torch_net: U2NetP
) -> None:
    x = np.concatenate([reference_input(square_photo(n).numpy()) for n in ("coffee", "chelsea")])
    expected = np.concatenate([session.run(["1959"], {"input.1": x[i : i + 1]})[0] for i in (0, 1)])
    assert sum(p.numel() for p in torch_net.parameters()) == 1_125_485
    with torch.inference_mode():
        got = torch_net(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1, INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)  # measured: 1.3e-5
    # the wrapper around the session gives the file's own answer, image by image
    wrapped = OnnxU2NetP(WEIGHTS)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(wrapped, expected)


def test_the_model_agrees_with_the_onnx_file_at_320(
    runner: Runner, session: onnxruntime.InferenceSession
) -> None:
    image = square_photo("coffee")
    # no guided filter and no reshaping beyond the smooth step: alpha is the network's map
    rgba = run_cutout(runner, image, snap=0.0, threshold=0.5, softness=1.0)
    expected = session.run(["1959"], {"input.1": reference_input(image.numpy())})[0][0, 0]
    np.testing.assert_allclose(rgba[3].numpy(), smoothstep(expected), rtol=0, atol=1e-6)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(ModelSetupError, match="cannot read U²-Netp weights"):
        load_u2netp(junk)
    with pytest.raises(ModelSetupError, match="cannot load U²-Netp"):
        OnnxU2NetP(junk)
    assert len(read_onnx_convolutions(WEIGHTS)) == len(U2NetP().convolutions()) == 119
    with pytest.raises(FrameError, match=r"takes \(N, 3, 320, 320\)"):
        OnnxU2NetP(WEIGHTS)(torch.zeros(1, 3, 64, 64))


# -- the photographs ---------------------------------------------------------------------------


def test_coffee_the_cup_is_matted_and_the_table_is_not(coffee_rgba: torch.Tensor) -> None:
    image = photo("coffee")
    assert coffee_rgba.shape == (4, 400, 600)
    assert torch.equal(coffee_rgba[:3], image)  # the plate passes untouched
    matte = coffee_rgba[3]
    assert float(matte.min()) >= 0.0 and float(matte.max()) <= 1.0
    for box in COFFEE_INSIDE.values():
        assert region(matte, box) > 0.95
    for box in COFFEE_OUTSIDE.values():
        assert region(matte, box) < 0.05
    assert 0.3 < float(matte.mean()) < 0.7


def test_chelsea_the_cat_is_matted_and_the_room_is_not(runner: Runner) -> None:
    matte = run_cutout(runner, photo("chelsea"))[3]
    assert matte.shape == (300, 451)
    for box in CHELSEA_INSIDE.values():
        assert region(matte, box) > 0.95
    for box in CHELSEA_OUTSIDE.values():
        assert region(matte, box) < 0.05


def test_the_pytorch_path_gives_the_same_matte(
    coffee_rgba: torch.Tensor, torch_net: U2NetP
) -> None:
    # What a GPU runs, forced here on the CPU: the same weights rebuilt in PyTorch.
    model = Cutout()
    model.network = torch_net
    knobs = {knob.name: knob.default for knob in Cutout.knobs}
    with torch.inference_mode():
        rgba = model.predict({"image": photo("coffee")}, knobs)
    difference = (rgba[3] - coffee_rgba[3]).abs()
    # measured: at most 2.6e-5, 2.9e-8 on average
    assert float(difference.max()) < 1e-3 and float(difference.mean()) < 1e-6


def test_knobs_output_and_grow(runner: Runner, coffee_rgba: torch.Tensor) -> None:
    small = photo("coffee")[:, ::2, ::2].contiguous()  # 300 x 200
    rgba = run_cutout(runner, small, output="matte_only", grow=-5, softness=0.0)
    assert torch.equal(rgba[:3], torch.zeros_like(small))
    matte = rgba[3]
    assert set(torch.unique(matte).tolist()) <= {0.0, 1.0}  # a hard edge
    grown = run_cutout(runner, small, output="matte_only", grow=5, softness=0.0)[3]
    assert float(grown.sum()) > float(matte.sum())
    assert bool((grown >= matte).all())


def test_colour_hdr_and_nan(runner: Runner, coffee_rgba: torch.Tensor) -> None:
    srgb = photo("coffee")
    linear = runner.colour.convert(srgb, "srgb", SCENE_LINEAR)
    rgba = run_cutout(runner, linear, colourspace=SCENE_LINEAR)
    torch.testing.assert_close(rgba[:3], linear, rtol=2e-5, atol=2e-6)
    # the matte is computed from the sRGB values and copied, not converted
    torch.testing.assert_close(rgba[3], coffee_rgba[3], rtol=0, atol=1e-3)
    hot = srgb.clone()
    hot[:, 0:20, 0:30] = 40.0  # a highlight far above 1 in the table (top left)
    hot[:, 390:, 590:] = float("nan")
    matte = run_cutout(runner, hot)[3]
    assert bool(torch.isfinite(matte).all())
    assert region(matte, COFFEE_INSIDE["cup"]) > 0.95
    assert region(matte, COFFEE_OUTSIDE["table bottom right"]) < 0.05


def test_a_4k_frame_gives_a_full_size_matte_whose_edges_follow_the_plate(
    runner: Runner, coffee_rgba: torch.Tensor
) -> None:
    # A 4K plate with a known matte: the cup and saucer (coffee upscaled, cut out along the
    # matte of the 600 x 400 photo, which the other tests check) over a defocused room (chelsea
    # blurred and upscaled). The cut-out's edge is sharp at 4K: the network sees the plate at
    # 320 x 320 (a network pixel is 12 x 6.75 plate pixels), so the edge's place at full
    # resolution comes from the guided filter.
    size = (2160, 3840)
    known = (F.interpolate(coffee_rgba[3][None, None], size=size, mode="bilinear")[0] > 0.5).float()
    cup = F.interpolate(photo("coffee")[None], size=size, mode="bicubic")[0].clamp(0.0, 1.0)
    room = F.interpolate(gaussian_blur(photo("chelsea"), 6.0)[None], size=size, mode="bilinear")[0]
    plate = known * cup + (1.0 - known) * room
    # the band within 40 pixels of the known edge
    near_edge = (grow_matte(known, 40) - grow_matte(known, -40))[0] > 0

    def band_error(matte: torch.Tensor) -> tuple[float, float]:
        """Mean |matte - known| in the band, and the fraction on the wrong side of 0.5."""
        difference = (matte - known[0]).abs()[near_edge]
        wrong = ((matte > 0.5) != (known[0] > 0.5))[near_edge]
        return float(difference.mean()), float(wrong.float().mean())

    matte = run_cutout(runner, plate)[3]
    assert matte.shape == size
    assert solve_size(*size) == (640, 1138)
    error, wrong = band_error(matte)
    plain_error, plain_wrong = band_error(run_cutout(runner, plate, snap=0.0)[3])
    # measured: 0.0016 and 0.013 % with the guided filter, 0.026 and 2.2 % without
    assert error < 0.005 and wrong < 0.001
    assert plain_error > 4 * error and plain_wrong > 4 * wrong
    assert float((matte - known[0]).abs().mean()) < 0.001
