"""Tests for the built-in restoration models: ``deblur``, ``denoise`` and ``denoise-dncnn``.

Quality is measured on photographs the networks never saw in training (``astronaut`` and
``camera``, made RGB), 256-pixel crops, sRGB values, PSNR with peak 1 over every pixel:

- **deblur**: the crop blurred in linear light along a straight 11-pixel path at 30 degrees and
  along a curved 13-pixel path (heading 100 degrees at its middle, turning 1.5 radians; image
  coordinates, y down), no noise; the blur reads a margin of real pixels around the crop, so no
  edge is made up. The model is told the path with its knobs (as the artist sees it: y up) and
  must beat the blurred input by at least 3 dB.
- **denoise**: Gaussian noise of sigma 25/255 on sRGB values (seeded), clipped to 0-1. The model
  must beat the noisy input by at least 6 dB.

Every frame goes through the real :class:`~frameserve.engine.runner.Runner` (padding, tiling, colour
conversion), as a request in sRGB (the models' own colourspace) or in scene-linear.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.builtin_models.deblur.model import Deblur
from frameserve.builtin_models.denoise.model import DNCNN_WEIGHTS_ENV, Denoise, DenoiseDnCNN
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ModelSetupError
from frameserve.networks.motion_blur import blur, motion_kernel
from frameserve.networks.restoration import RestorationUNet, load_restoration_unet
from frameserve.plugin.model import SpatialNeeds
from frameserve.weights import shipped_weights_path
from tests.support.registries import registry_of

SIGMA = 25.0 / 255.0
#: (length in pixels, angle at the middle in degrees, turn in radians), image coordinates
BLURS = ((11.0, 30.0, 0.0), (13.0, 100.0, 1.5))
#: Held-out crops: (photo, top, left), 256 pixels square plus the blur's margin.
CROPS = (("astronaut", 10, 140), ("camera", 40, 150))
SIZE = 256


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as a float32 ``(3, H, W)`` tensor of sRGB values in 0-1."""
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image[..., :3].transpose(2, 0, 1)))


def crop(name: str, top: int, left: int, size: int = SIZE) -> torch.Tensor:
    return photo(name)[:, top : top + size, left : left + size].contiguous()


def blurred_crop(
    name: str, top: int, left: int, path: tuple[float, float, float], size: int = SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blurred, sharp)`` crops; the blur reads real pixels around the crop."""
    length, degrees, turn = path
    kernel = motion_kernel(length, turn=turn, angle=math.radians(degrees))
    margin = (kernel.shape[0] - 1) // 2
    around = crop(name, top, left, size + 2 * margin)
    blurred = blur(around[None], torch.from_numpy(kernel)[None])[0]
    sharp = around[:, margin:-margin, margin:-margin]
    return blurred, sharp


def knobs_for(path: tuple[float, float, float]) -> dict[str, float]:
    """The deblur knobs of a path given in image coordinates (y down, radians for the turn):
    the artist sees the frame y up, so angles and turns change sign."""
    length, degrees, turn = path
    return {"length": length, "angle": -degrees, "curve": -math.degrees(turn)}


def noisy(clean: torch.Tensor, seed: int = 0, sigma: float = SIGMA) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp(0, 1)


def psnr(result: torch.Tensor, truth: torch.Tensor) -> float:
    error = float(((result.clamp(0, 1) - truth) ** 2).mean())
    return 10.0 * math.log10(1.0 / error)


def run(
    runner: Runner, model_id: str, image: torch.Tensor, colourspace: str = "srgb", **knobs: object
) -> torch.Tensor:
    """Run ``model_id`` on a ``(3, H, W)`` frame through the runner; return its output."""
    spec = runner.registry.get(model_id).spec
    request = build_request(spec, [image], knobs, colourspace=colourspace)
    return runner.run(request).frames["image"]


# -- weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "model"), [("deblur", Deblur), ("denoise", Denoise)])
def test_shipped_weights_load_strictly_and_fit_the_declaration(family: str, model: type) -> None:
    path = shipped_weights_path(family, f"{family}.pth")
    assert path.stat().st_size < 2.5e6  # small enough to ship in the repository
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = load_restoration_unet(path, family)
    assert set(network.state_dict()) == set(state)
    assert all(torch.equal(network.state_dict()[k], v.float()) for k, v in state.items())
    assert model.spatial.size_multiple % network.multiple == 0
    assert (path.parent / "LICENSE").is_file() and (path.parent / "NOTICE").is_file()


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    state = torch.load(shipped_weights_path("denoise", "denoise.pth"), weights_only=True)
    del state["tail.bias"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ModelSetupError, match=r"do not fit the network: missing \['tail\.bias'\]"):
        load_restoration_unet(tmp_path / "short.pth", "denoise")
    state["tail.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ModelSetupError, match=r"do not fit the network: .*size mismatch.*tail"):
        load_restoration_unet(tmp_path / "wrong.pth", "denoise")
    other = {"conv.weight": torch.zeros(3, 3, 3, 3)}
    with pytest.raises(ValueError, match="not RestorationUNet weights"):
        RestorationUNet.for_state_dict(other)
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ModelSetupError, match=r"denoise weights .*: not RestorationUNet weights"):
        load_restoration_unet(tmp_path / "other.pth", "denoise")


# -- quality on held-out photographs -------------------------------------------------------------


@pytest.mark.parametrize(("name", "top", "left"), CROPS)
@pytest.mark.parametrize("path", BLURS, ids=["straight-11px", "curved-13px"])
def test_deblur_beats_the_blurred_input_by_3_db(
    runner: Runner, name: str, top: int, left: int, path: tuple[float, float, float]
) -> None:
    blurred, sharp = blurred_crop(name, top, left, path)
    deblurred = run(runner, "deblur", blurred, **knobs_for(path))
    before, after = psnr(blurred, sharp), psnr(deblurred, sharp)
    assert after - before >= 3.0, f"{name}: {before:.2f} dB -> {after:.2f} dB"


def test_deblur_uses_the_path_it_is_told(runner: Runner) -> None:
    """The same blur, told a path at right angles or mirrored, gains far less or loses."""
    path = BLURS[0]
    blurred, sharp = blurred_crop("astronaut", 10, 140, path, size=128)
    right = psnr(run(runner, "deblur", blurred, **knobs_for(path)), sharp)
    for wrong in ({"angle": -path[1] + 90.0}, {"angle": path[1]}):
        told = {**knobs_for(path), **wrong}
        assert psnr(run(runner, "deblur", blurred, **told), sharp) < right - 1.5, wrong
    # length 0 is off: the plate comes back exactly
    assert torch.equal(run(runner, "deblur", blurred, length=0.0), blurred)


@pytest.mark.parametrize(("name", "top", "left"), CROPS)
def test_denoise_beats_the_noisy_input_by_6_db(
    runner: Runner, name: str, top: int, left: int
) -> None:
    clean = crop(name, top, left)
    grainy = noisy(clean)
    denoised = run(runner, "denoise", grainy)
    before, after = psnr(grainy, clean), psnr(denoised, clean)
    assert after - before >= 6.0, f"{name}: {before:.2f} dB -> {after:.2f} dB"


def test_a_clean_frame_is_left_nearly_alone(runner: Runner) -> None:
    clean = crop("astronaut", 10, 140)
    assert psnr(run(runner, "denoise", clean), clean) > 34.0  # measured: 36.3


@pytest.mark.parametrize("model_id", ["deblur", "denoise"])
def test_strength_blends_between_the_plate_and_the_result(runner: Runner, model_id: str) -> None:
    frame = noisy(crop("camera", 40, 150, 64))
    knobs = {"length": 9.0} if model_id == "deblur" else {}
    full = run(runner, model_id, frame, **knobs)
    torch.testing.assert_close(run(runner, model_id, frame, strength=0.0, **knobs), frame)
    half = run(runner, model_id, frame, strength=0.5, **knobs)
    torch.testing.assert_close(half, (frame + full) / 2, atol=1e-5, rtol=0)


# -- big frames, HDR values ----------------------------------------------------------------------


def mosaic(height: int, width: int) -> torch.Tensor:
    """A frame of ``height`` x ``width`` tiled with a held-out photograph, mirrored."""
    tile = photo("astronaut")
    tile = torch.cat([tile, tile.flip(-1)], dim=-1)
    tile = torch.cat([tile, tile.flip(-2)], dim=-2)
    reps = (1, -(-height // tile.shape[1]), -(-width // tile.shape[2]))
    return tile.repeat(*reps)[:, :height, :width].contiguous()


@pytest.mark.parametrize("model_id", ["deblur", "denoise"])
def test_a_4k_frame_is_tiled_and_restored(runner: Runner, model_id: str) -> None:
    height, width = 2160, 3840
    spec = runner.registry.get(model_id).spec
    assert spec.spatial.fully_convolutional
    assert spec.spatial.max_size is not None and spec.spatial.max_size < width
    knobs: dict[str, float] = {}
    if model_id == "denoise":
        clean = mosaic(height, width)
        degraded, needed = noisy(clean), 6.0
    else:
        path = (11.0, 30.0, 0.0)
        kernel = torch.from_numpy(motion_kernel(path[0], angle=math.radians(path[1])))
        margin = (kernel.shape[-1] - 1) // 2
        around = mosaic(height + 2 * margin, width + 2 * margin)
        degraded = blur(around[None], kernel[None])[0]
        clean, needed, knobs = around[:, margin:-margin, margin:-margin], 3.0, knobs_for(path)
    restored = run(runner, model_id, degraded, **knobs)
    assert restored.shape == (3, height, width)
    assert psnr(restored, clean) - psnr(degraded, clean) >= needed


class SmallTilesDenoise(Denoise):
    """``denoise`` cut into tiles of at most 168 pixels: a 200-pixel frame is 3 x 3 tiles (the
    middle one has seams on all four sides)."""

    id = "denoise_small_tiles"
    spatial = SpatialNeeds(
        fully_convolutional=True, size_multiple=8, overlap=Denoise.spatial.overlap, max_size=168
    )


def test_tiles_stitch_into_the_frame_computed_in_one_piece(
    runner: Runner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The declared overlap covers the network's whole reach: stitching is exact."""
    tiled_runner = Runner(
        registry_of(tmp_path_factory.mktemp("tiles"), SmallTilesDenoise), device="cpu"
    )
    frame = noisy(crop("coffee", 100, 200, 200))
    whole = run(runner, "denoise", frame)
    tiled = run(tiled_runner, "denoise_small_tiles", frame)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


class SmallTilesDeblur(Deblur):
    """``deblur`` cut into tiles of at most 224 pixels: a 288-pixel frame is 3 x 3 tiles (the
    middle one has seams on all four sides)."""

    id = "deblur_small_tiles"
    spatial = SpatialNeeds(
        fully_convolutional=True, size_multiple=16, overlap=Deblur.spatial.overlap, max_size=224
    )


def test_deblur_tiles_stitch_seamlessly(
    runner: Runner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The network reaches a little past the declared overlap (99.9% of its input's influence
    lies within it): the seams stay far below what it changes (measured: 1.2e-5 at most)."""
    tiled_runner = Runner(
        registry_of(tmp_path_factory.mktemp("deblur_tiles"), SmallTilesDeblur), device="cpu"
    )
    path = BLURS[1]
    frame, _ = blurred_crop("coffee", 60, 160, path, size=288)
    whole = run(runner, "deblur", frame, **knobs_for(path))
    tiled = run(tiled_runner, "deblur_small_tiles", frame, **knobs_for(path))
    assert float((whole - frame).abs().mean()) > 0.01  # what the network changes
    assert float((tiled - whole).abs().max()) < 1e-3


@pytest.mark.parametrize("model_id", ["deblur", "denoise"])
def test_hdr_values_pass_through(runner: Runner, model_id: str) -> None:
    """Scene-linear highlights far above 1 come back; NaN stays NaN and does not spread.

    The part of a highlight above 1 (in sRGB) passes through; the network sees it at 1, so near
    its edges the correction of the clamped edge applies, and only its middle is compared.
    """
    linear = crop("astronaut", 10, 140, 96) ** 2.2  # roughly scene-linear, 0-1
    linear[:, 8:56, 8:56] = 50.0  # a light source
    linear[:, 80, 70] = float("nan")
    knobs = {"length": 9.0, "angle": 20.0} if model_id == "deblur" else {}
    result = run(runner, model_id, linear, colourspace="scene_linear", **knobs)
    torch.testing.assert_close(result[:, 24:40, 24:40], linear[:, 24:40, 24:40], rtol=0.01, atol=0)
    assert torch.isnan(result[:, 80, 70]).all()
    assert int(torch.isnan(result).sum()) == 3
    # elsewhere the frame is the photograph, restored (deblur sharpens a sharp photograph
    # along the path it is told), not garbage
    limit = 0.1 if model_id == "deblur" else 0.05
    assert float((result[:, 64:] - linear[:, 64:]).abs().nanmean()) < limit


# -- the authors' DnCNN weights ------------------------------------------------------------------


def kair_state_dict(channels: int, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of KAIR's published DnCNN weights (random
    values): ``model.{0,2,...}.{weight,bias}``, 64 channels wide."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(depth):
        inputs = channels if layer == 0 else 64
        outputs = channels if layer == depth - 1 else 64
        weight = torch.randn(outputs, inputs, 3, 3, generator=generator) * 0.05
        state[f"model.{2 * layer}.weight"] = weight
        state[f"model.{2 * layer}.bias"] = torch.randn(outputs, generator=generator) * 0.01
    return state


def reference_dncnn(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DnCNN computed straight from the weights: ``x - convs(x)``, ReLU between convs."""
    depth = len(state) // 2
    y = x
    for layer in range(depth):
        y = F.conv2d(y, state[f"model.{2 * layer}.weight"], state[f"model.{2 * layer}.bias"], 1, 1)
        if layer < depth - 1:
            y = F.relu(y)
    return x - y


@pytest.mark.parametrize(
    ("channels", "depth", "wrapper"),
    [(3, 20, None), (1, 17, None), (3, 20, "params"), (3, 20, "state_dict")],
    ids=["colour", "grey", "basicsr-params", "checkpoint-state-dict"],
)
def test_the_authors_dncnn_weights_load_from_the_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channels: int, depth: int, wrapper: str | None
) -> None:
    state = kair_state_dict(channels, depth)
    torch.save(state if wrapper is None else {wrapper: state}, tmp_path / "dncnn.pth")
    monkeypatch.setenv(DNCNN_WEIGHTS_ENV, str(tmp_path / "dncnn.pth"))
    runner = Runner(ModelRegistry(builtins=True), device="cpu")
    frame = noisy(crop("coffee", 100, 200, 48))
    result = run(runner, "denoise-dncnn", frame)
    if channels == 1:  # a grey network denoises R, G and B in turn
        expected = reference_dncnn(state, frame[:, None])[:, 0]
    else:
        expected = reference_dncnn(state, frame[None])[0]
    torch.testing.assert_close(result, expected, atol=1e-4, rtol=1e-4)


def test_the_dncnn_spatial_needs_match_the_authors_depth() -> None:
    assert DenoiseDnCNN.spatial.overlap == 20  # 20 3x3 convolutions see 20 pixels each way


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("unset", f"set {DNCNN_WEIGHTS_ENV} to its path"),
        ("missing", f"{DNCNN_WEIGHTS_ENV} is '.*nowhere.pth', which is not a file"),
        ("junk", r"cannot read DnCNN weights '.*weights\.pth'"),
        ("list", r"DnCNN weights '.*' hold a list; expected a state dict"),
        ("batch-norm", "unexpected keys.*running_mean.*batch normalisation"),
        ("short", r"do not fit the network: .*size mismatch.*model\.8"),
    ],
)
def test_bad_dncnn_weights_give_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: str, message: str
) -> None:
    path = tmp_path / "weights.pth"
    if setup == "unset":
        monkeypatch.delenv(DNCNN_WEIGHTS_ENV, raising=False)
    else:
        monkeypatch.setenv(DNCNN_WEIGHTS_ENV, str(path))
    if setup == "missing":
        monkeypatch.setenv(DNCNN_WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    elif setup == "junk":
        path.write_bytes(b"not weights")
    elif setup == "list":
        torch.save([1, 2], path)
    elif setup == "batch-norm":
        state = kair_state_dict(3, 5)
        state["model.3.running_mean"] = torch.zeros(64)
        torch.save(state, path)
    elif setup == "short":
        state = kair_state_dict(3, 5)
        state["model.8.weight"] = torch.zeros(64, 64, 3, 3)  # the last layer must give 3
        torch.save(state, path)
    runner = Runner(ModelRegistry(builtins=True), device="cpu")
    with pytest.raises(ModelSetupError, match=message):
        run(runner, "denoise-dncnn", torch.zeros(3, 16, 16))
