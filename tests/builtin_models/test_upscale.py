"""Tests for the built-in upscale models (``upscale_x2``, ``upscale_x3``, ``upscale_x4``): VDSR.

Quality is measured the way VDSR was trained and published: a scikit-image photograph is
downscaled with an antialiased bicubic (PyTorch's ``interpolate(..., antialias=True)``, which
is MATLAB's ``imresize``), upscaled back, and compared on BT.601 luma with a border of ``s``
pixels left out. VDSR must beat the better of two bicubics (MATLAB's kernel and PyTorch's
sharper default) by at least 1 dB. The crops are 120 pixels wide, so the network runs in well
under a second on a CPU; on these two VDSR gains 1.7-3.7 dB, near the median of 120-pixel
crops of the two photographs on a 90-pixel grid. Smooth or defocused crops gain less (little
detail was lost), down to 0.3 dB; whole photographs gain 1.5-3.8 dB at x2.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.builtin_models.upscale_x2.model import UpscaleX2
from frameserve.builtin_models.upscale_x3.model import UpscaleX3
from frameserve.builtin_models.upscale_x4.model import UpscaleX4
from frameserve.builtin_models.upscaling import (
    VDSRUpscale,
    bicubic_upscale,
    bt601_luma,
    input_reach,
    vdsr_upscale,
)
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.engine.tiling import TileGrid
from frameserve.errors import KnobError, ModelSetupError
from frameserve.media.imageio import read_image, write_image
from frameserve.networks.vdsr import PARAMETER_COUNT, VDSR, load_vdsr
from frameserve.plugin.model import SpatialNeeds
from frameserve.serve.mlclient.menu import menu_model
from frameserve.serve.server import FrameServer
from frameserve.weights import shipped_weights_path
from tests.support.commands import frameserve_here
from tests.support.node_client import NodeClient, decode_image
from tests.support.registries import registry_of

SCALES = (2, 3, 4)
WEIGHTS = shipped_weights_path("upscale", "vdsr.pth")


class SmallTilesX2(UpscaleX2):
    """``upscale_x2`` cut into tiles of at most 40 input pixels."""

    id = "upscale_x2_small_tiles"
    spatial = SpatialNeeds(fully_convolutional=True, overlap=input_reach(2), max_size=40)


class SmallTilesX3(UpscaleX3):
    """``upscale_x3`` cut into tiles of at most 30 input pixels."""

    id = "upscale_x3_small_tiles"
    spatial = SpatialNeeds(fully_convolutional=True, overlap=input_reach(3), max_size=30)


class SmallTilesX4(UpscaleX4):
    """``upscale_x4`` cut into tiles of at most 24 input pixels."""

    id = "upscale_x4_small_tiles"
    spatial = SpatialNeeds(fully_convolutional=True, overlap=input_reach(4), max_size=24)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


@pytest.fixture(scope="module")
def net() -> VDSR:
    return load_vdsr(WEIGHTS)


def photo(name: str, top: int, left: int, size: int) -> torch.Tensor:
    """A ``(3, size, size)`` float32 crop of a scikit-image photograph, sRGB-encoded, 0-1."""
    image = getattr(skimage.data, name)()[top : top + size, left : left + size]
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def downscale(image: torch.Tensor, scale: int) -> torch.Tensor:
    """``image`` (``(3, H, W)``, H and W multiples of ``scale``) made ``scale`` times smaller.

    An antialiased bicubic (a = -0.5, the kernel widened by ``scale``): MATLAB's ``imresize``,
    the degradation VDSR was trained to undo.
    """
    small = F.interpolate(image[None], scale_factor=1 / scale, mode="bicubic", antialias=True)
    return small[0]


def luma_psnr(result: torch.Tensor, truth: torch.Tensor, shave: int) -> float:
    """PSNR in dB of the BT.601 luma of two ``(3, H, W)`` frames, ``shave`` border pixels off."""
    window = (..., slice(shave, -shave), slice(shave, -shave))
    error = bt601_luma(result[None])[window] - bt601_luma(truth[None])[window]
    return 10.0 * math.log10(1.0 / float((error**2).mean()))


def upscale(runner: Runner, model_id: str, image: torch.Tensor, **knobs: object) -> torch.Tensor:
    """Run ``model_id`` on an sRGB-encoded ``(3, H, W)`` frame through the runner."""
    spec = runner.registry.get(model_id).spec
    request = build_request(spec, [image], knobs, colourspace="srgb")
    return runner.run(request).frames["image"]


# -- the network -------------------------------------------------------------------------------


def test_shipped_weights_load_strictly(net: VDSR) -> None:
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert len(state) == 20
    assert set(state) == set(net.state_dict())
    assert sum(p.numel() for p in net.parameters()) == PARAMETER_COUNT == 664_704
    assert all(torch.equal(net.state_dict()[name], state[name]) for name in state)
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    del state["output.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ModelSetupError, match=r"missing \['output\.weight'\], unexpected none"):
        load_vdsr(tmp_path / "short.pth")
    state["output.weight"] = torch.zeros(3, 64, 3, 3)
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(ModelSetupError, match=r"do not fit the network: .*size mismatch.*output"):
        load_vdsr(tmp_path / "wide.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ModelSetupError, match="hold a list; expected a state dict"):
        load_vdsr(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelSetupError, match="cannot read VDSR weights"):
        load_vdsr(tmp_path / "junk.pth")


def test_network_takes_one_channel_luma_only(net: VDSR) -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) luma, got shape \(1, 3, 8, 8\)"):
        net.residual(torch.zeros(1, 3, 8, 8))


# -- bicubic and luma --------------------------------------------------------------------------


def keys_matrix(length: int, scale: int, a: float = -0.5) -> torch.Tensor:
    """The ``(length * scale, length)`` matrix of Keys' cubic upscaling, edge pixels repeated."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    matrix = torch.zeros(length * scale, length, dtype=torch.float64)
    for out in range(length * scale):
        position = (out + 0.5) / scale - 0.5  # pixel centres, as MATLAB's imresize
        for tap in range(math.floor(position) - 1, math.floor(position) + 3):
            matrix[out, min(max(tap, 0), length - 1)] += kernel(position - tap)
    return matrix


@pytest.mark.parametrize("scale", SCALES)
def test_bicubic_is_matlabs_kernel(scale: int) -> None:
    generator = torch.Generator().manual_seed(scale)
    image = torch.randn(2, 3, 17, 23, generator=generator)
    ours = bicubic_upscale(image, scale)
    assert ours.shape == (2, 3, 17 * scale, 23 * scale)
    rows, cols = keys_matrix(17, scale), keys_matrix(23, scale)
    reference = torch.einsum("yh,nchw,xw->ncyx", rows, image.double(), cols).float()
    inside = (..., slice(2 * scale, -2 * scale), slice(2 * scale, -2 * scale))  # edges differ
    torch.testing.assert_close(ours[inside], reference[inside], atol=1e-5, rtol=0)
    # ... and not PyTorch's default a = -0.75, which VDSR was not trained on.
    sharper = torch.einsum(
        "yh,nchw,xw->ncyx",
        keys_matrix(17, scale, -0.75),
        image.double(),
        keys_matrix(23, scale, -0.75),
    ).float()
    assert float((ours - sharper)[inside].abs().max()) > 0.05
    # Flat frames stay flat, edges included; scale 1 changes nothing.
    torch.testing.assert_close(
        bicubic_upscale(torch.full((1, 1, 5, 4), 7.5), scale),
        torch.full((1, 1, 5 * scale, 4 * scale), 7.5),
    )
    assert bicubic_upscale(image, 1) is image


def test_bicubic_and_luma_errors() -> None:
    with pytest.raises(ValueError, match=r"expected \(N, C, H, W\) frames, got shape \(3, 4, 4\)"):
        bicubic_upscale(torch.zeros(3, 4, 4), 2)
    with pytest.raises(ValueError, match=r"scale must be a whole number of at least 1, got 1\.5"):
        bicubic_upscale(torch.zeros(1, 3, 4, 4), 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) RGB frames, got shape \(1, 4, 2, 2\)"):
        bt601_luma(torch.zeros(1, 4, 2, 2))


def test_luma_is_matlabs_rgb2ycbcr() -> None:
    rgb = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.5, 0.9]])
    luma = bt601_luma(rgb.T.reshape(1, 3, 1, 4)).flatten()
    expected = torch.tensor([16.0, 235.0, 81.481, 16 + 0.2 * 65.481 + 0.5 * 128.553 + 0.9 * 24.966])
    torch.testing.assert_close(luma * 255.0, expected, atol=1e-4, rtol=0)


def test_detail_goes_into_luma_and_chroma_stays_bicubic(net: VDSR) -> None:
    """The shortcut ``RGB_up + 255/219 * r`` equals a real round trip through YCbCr."""
    small = photo("coffee", 120, 200, 72)[None]
    result = vdsr_upscale(net, small, 2)
    upscaled = bicubic_upscale(small, 2)
    # MATLAB's rgb2ycbcr for values 0-1 (then / 255), and its exact inverse.
    matrix = torch.tensor(
        [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]],
        dtype=torch.float64,
    )
    offset = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)

    def to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
        return (torch.einsum("ij,njhw->nihw", matrix, rgb.double()) + offset[:, None, None]) / 255

    ycbcr = to_ycbcr(upscaled)
    luma = ycbcr[:, :1]
    residual = net.residual(luma.float().clamp(min=16 / 255)).double()
    ycbcr = torch.cat([luma + residual, ycbcr[:, 1:]], dim=1)
    inverse = torch.linalg.inv(matrix)
    back = torch.einsum("ij,njhw->nihw", inverse, ycbcr * 255 - offset[:, None, None])
    torch.testing.assert_close(result.double(), back, atol=2e-5, rtol=0)
    # Chroma is the bicubic's own; the luma changed.
    torch.testing.assert_close(
        to_ycbcr(result)[:, 1:], to_ycbcr(upscaled)[:, 1:], atol=2e-5, rtol=0
    )
    assert float((to_ycbcr(result)[:, 0] - to_ycbcr(upscaled)[:, 0]).abs().max()) > 0.05


# -- the models through the runner -------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_models_declare_scale_colour_and_tiles(runner: Runner, scale: int) -> None:
    entry = runner.registry.get(f"upscale_x{scale}")
    assert entry.ok and entry.builtin
    assert issubclass(entry.model_class, VDSRUpscale)
    assert entry.model_class.output_scale == scale
    spec = entry.spec
    assert (spec.colourspace_in, spec.colourspace_out) == ("srgb", "srgb")
    assert spec.spatial.fully_convolutional
    # An output pixel sees 20 upscaled pixels and the bicubic's 2 input pixels.
    assert spec.spatial.overlap == input_reach(scale) == math.ceil(20 / scale) + 2
    assert spec.spatial.max_size is not None and spec.spatial.max_size * scale <= 1024
    assert spec.half_precision
    assert [(i.name, i.channels) for i in spec.inputs] == [("image", 3)]
    assert [(o.name, o.channels) for o in spec.outputs] == [("image", 3)]


@pytest.mark.parametrize("scale", SCALES)
def test_vdsr_beats_bicubic_by_a_decibel(runner: Runner, scale: int) -> None:
    for name, top, left in (("astronaut", 90, 90), ("coffee", 180, 270)):
        truth = photo(name, top, left, 120)
        small = downscale(truth, scale)
        result = upscale(runner, f"upscale_x{scale}", small)
        assert result.shape == truth.shape
        ours = luma_psnr(result, truth, scale)
        matlab_bicubic = luma_psnr(bicubic_upscale(small[None], scale)[0], truth, scale)
        torch_bicubic = luma_psnr(
            F.interpolate(small[None], scale_factor=scale, mode="bicubic")[0], truth, scale
        )
        best = max(matlab_bicubic, torch_bicubic)
        assert ours >= best + 1.0, f"{name} x{scale}: VDSR {ours:.2f} dB, bicubic {best:.2f} dB"


@pytest.mark.parametrize("scale", SCALES)
def test_output_is_scale_times_the_input(runner: Runner, scale: int) -> None:
    image = photo("chelsea", 50, 60, 40)[:, :29, :37]  # odd sizes
    result = upscale(runner, f"upscale_x{scale}", image)
    assert result.shape == (3, 29 * scale, 37 * scale)
    assert result.dtype == torch.float32 and bool(result.isfinite().all())


def test_detail_knob_mixes_bicubic_and_vdsr(runner: Runner) -> None:
    image = photo("astronaut", 100, 200, 40)
    plain = upscale(runner, "upscale_x2", image, detail=0.0)
    torch.testing.assert_close(plain, bicubic_upscale(image[None], 2)[0], atol=1e-6, rtol=0)
    full = upscale(runner, "upscale_x2", image)
    half = upscale(runner, "upscale_x2", image, detail=0.5)
    torch.testing.assert_close(half, (plain + full) / 2, atol=1e-5, rtol=0)
    assert float((full - plain).abs().max()) > 0.05
    spec = runner.registry.get("upscale_x2").spec
    with pytest.raises(KnobError, match="detail"):
        build_request(spec, [image], {"detail": 3.0})


def test_hdr_values_survive(runner: Runner) -> None:
    """Scene-linear highlights up to 8 and negative values come back, and stay put."""
    image = photo("coffee", 150, 250, 64) ** 2.2  # roughly scene-linear
    image[:, 4:30, 4:30] = 8.0  # a highlight
    image[:, 34:60, 34:60] = -0.25  # negative values (a filter's lobe, out of gamut)
    image[1, 40, 10] = float("nan")
    spec = runner.registry.get("upscale_x2").spec
    request = build_request(spec, [image], {}, colourspace="scene_linear")
    result = runner.run(request).frames["image"]
    assert result.shape == (3, 128, 128)
    # The NaN spreads over the bicubic's taps in its own channel only, not VDSR's 20 pixels.
    rows, cols = torch.nonzero(~result[1].isfinite(), as_tuple=True)
    assert 0 < rows.numel() <= 100
    assert int(rows.min()) >= 76 and int(rows.max()) <= 89
    assert int(cols.min()) >= 16 and int(cols.max()) <= 29
    assert bool(result[[0, 2]].isfinite().all())
    # The highlight keeps its value (more than 20 pixels in: plain bicubic), is not clipped.
    middle = result[:, 30:38, 30:38]
    torch.testing.assert_close(middle, torch.full_like(middle, 8.0), atol=1e-3, rtol=0)
    assert float(result[[0, 2]].max()) >= 8.0
    middle = result[:, 90:98, 90:98]
    torch.testing.assert_close(middle, torch.full_like(middle, -0.25), atol=1e-3, rtol=0)
    # Elsewhere, VDSR still adds detail to the photograph.
    plain = runner.run(build_request(spec, [image], {"detail": 0.0}, colourspace="scene_linear"))
    assert float((result - plain.frames["image"])[[0, 2], 64:, :60].abs().max()) > 0.01


def test_hdr_plates_gain_detail_like_sdr_ones(runner: Runner) -> None:
    """A photograph pushed two stops (sRGB-encoded values up to 1.74) gains a decibel too."""
    linear = runner.colour.convert(photo("astronaut", 90, 90, 120), "srgb", "scene_linear")
    truth = runner.colour.convert(linear * 4.0, "scene_linear", "srgb")
    bright = float((bt601_luma(truth[None]) > 235 / 255).float().mean())
    assert bright > 0.3
    small = downscale(truth, 2)
    result = upscale(runner, "upscale_x2", small)
    peak = float(bt601_luma(truth[None]).max())
    ours = luma_psnr(result / peak, truth / peak, 2)
    bicubic = max(
        luma_psnr(bicubic_upscale(small[None], 2)[0] / peak, truth / peak, 2),
        luma_psnr(
            F.interpolate(small[None], scale_factor=2, mode="bicubic")[0] / peak, truth / peak, 2
        ),
    )
    assert ours >= bicubic + 1.0, f"{bright:.0%} above 1: VDSR {ours:.2f}, bicubic {bicubic:.2f}"


# -- tiles, 4K and frameserve run --------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_class", "height", "width"),
    [(SmallTilesX2, 43, 44), (SmallTilesX3, 33, 32), (SmallTilesX4, 27, 26)],
)
def test_tiles_match_the_whole_frame(
    runner: Runner, tmp_path: Path, model_class: type[VDSRUpscale], height: int, width: int
) -> None:
    scale = model_class.output_scale
    needs = model_class.spatial
    grid = TileGrid(height, width, overlap=needs.overlap, max_tile=needs.max_size)
    assert len({t.top for t in grid.tiles}) == len({t.left for t in grid.tiles}) == 2
    image = photo("astronaut", 20, 120, 80)[:, :height, :width]
    tiled_runner = Runner(registry_of(tmp_path, model_class), device="cpu")
    tiled = upscale(tiled_runner, model_class.id, image)
    whole = upscale(runner, f"upscale_x{scale}", image)
    assert tiled.shape == whole.shape == (3, height * scale, width * scale)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)  # 3e-5 with overlap 6 at x2


def test_a_4k_plate_is_upscaled_in_tiles(runner: Runner) -> None:
    """A UHD plate through ``upscale_x2`` (``detail`` 0: the network is minutes on a CPU)."""
    generator = torch.Generator().manual_seed(4)
    plate = torch.rand(3, 2160, 3840, generator=generator) * 1.5 - 0.1
    result = upscale(runner, "upscale_x2", plate, detail=0.0)
    assert result.shape == (3, 4320, 7680)
    needs = UpscaleX2.spatial
    grid = TileGrid(2160, 3840, overlap=needs.overlap, max_tile=needs.max_size)
    seam = (
        sorted({t.top for t in grid.tiles})[1] - 15,
        sorted({t.left for t in grid.tiles})[1] - 15,
    )
    for top, left in ((0, 0), seam, (2100, 3780)):  # corners, and where four tiles meet
        window = plate[None, :, top : top + 60, left : left + 60]
        expected = bicubic_upscale(window, 2)[0]
        inner = slice(8 if top else 0, 112), slice(8 if left else 0, 112)
        got = result[:, 2 * top : 2 * top + 120, 2 * left : 2 * left + 120]
        torch.testing.assert_close(got[(..., *inner)], expected[(..., *inner)], atol=1e-5, rtol=0)


def test_frameserve_run_writes_frames_twice_the_size(
    runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRAMESERVE_MODELS", raising=False)
    frames = {}
    plates = {1: ("astronaut", 60, 200), 2: ("coffee", 90, 300)}
    for frame, (name, top, left) in plates.items():
        frames[frame] = photo(name, top, left, 28)[:, :20] ** 2.2  # scene-linear EXR plates
        write_image(tmp_path / f"plate.{frame:04d}.exr", frames[frame].numpy())
    args = ["--input", tmp_path / "plate.####.exr", "--output", tmp_path / "big.####.exr"]
    (done,) = frameserve_here(["run", "upscale_x2", *args, "--frames", "1-2"])
    assert done.returncode == 0, done.stderr
    spec = runner.registry.get("upscale_x2").spec
    for frame, pixels in frames.items():
        written = read_image(tmp_path / f"big.{frame:04d}.exr").pixels
        assert written.shape == (3, 40, 56)
        expected = runner.run(build_request(spec, [pixels], {}, colourspace="scene_linear"))
        np.testing.assert_allclose(written, expected.frames["image"].numpy(), atol=1e-4)


@pytest.mark.parametrize("level", [5.0, 40.0, -3.0, 1e6])
def test_flat_regions_keep_their_level_at_any_value(net: VDSR, level: float) -> None:
    """Highlights, negatives and a sun at 1e6 stay put and finite: the network adds ~nothing."""
    flat = torch.full((1, 3, 16, 16), level)
    result = vdsr_upscale(net, flat, 3)
    middle = result[..., 21:27, 21:27]  # more than 20 pixels from the frame's edges
    torch.testing.assert_close(middle, torch.full_like(middle, level), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result, torch.full_like(result, level), rtol=5e-3, atol=1e-5)


def test_upscale_detail_restores_a_plate_enlarged_beforehand(runner: Runner) -> None:
    """The node-friendly model equals the x2 model on a plate enlarged with the same bicubic."""
    truth = photo("astronaut", 90, 90, 120)
    small = downscale(truth, 2)
    enlarged = bicubic_upscale(small[None], 2)[0]  # what a Reformat (cubic) gives the artist
    restored = upscale(runner, "upscale_detail", enlarged)
    assert restored.shape == truth.shape
    torch.testing.assert_close(restored, upscale(runner, "upscale_x2", small), atol=1e-4, rtol=0)
    assert luma_psnr(restored, truth, 2) >= luma_psnr(enlarged, truth, 2) + 1.0


def test_the_mlclient_node_gets_upscale_detail_and_a_clear_error_from_upscale_x2(
    server: FrameServer,
) -> None:
    plate = photo("coffee", 100, 100, 48).numpy()
    node = NodeClient(*server.mlclient_address)
    reply = node.infer(node.model("upscale_detail"), [plate])
    assert decode_image(reply.r2.images[0]).shape == plate.shape
    assert "upscale_x2" not in {m.name for m in node.info().r1.models}  # not on the menu
    named = menu_model(server.engine.model("upscale_x2").spec, label="Upscale x2")
    refused = node.infer(named, [plate])  # a client that names it anyway: refused unrun
    assert refused.HasField("error")
    assert "makes outputs 2x the size of its inputs" in refused.error.msg
