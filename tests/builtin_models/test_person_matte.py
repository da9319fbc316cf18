"""Tests for the built-in ``person_matte`` model: SINet / ExtremeC3Net and the guided filter.

The photograph is scikit-image's astronaut (512 x 512, a head-and-shoulders portrait). The
regions below were chosen by looking at it; each is unambiguous (person or not) and away from
the person's outline:

- face: the forehead, eyes, nose and mouth; torso: the orange suit left of the white straps;
- background: the grey backdrop between the hair and the model shuttle; the shuttle itself
  (model on a stand, right); the flag (left edge), which ExtremeC3Net partly takes for a person
  (a known weakness), so it is checked for SINet only.

Frames are sent sRGB-encoded (the model's own colourspace) unless a test is about colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.builtin_models.person_matte.edges import grow_matte, shape_edge
from frameserve.builtin_models.person_matte.model import (
    PersonMatte,
    network_size,
    normalise_for_network,
)
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import FrameError, KnobError, ModelSetupError
from frameserve.networks.extremec3 import ExtremeC3Net, load_extremec3
from frameserve.networks.guided_filter import (
    apply_guided_filter,
    box_mean,
    solve_guided_filter,
)
from frameserve.networks.sinet import SINet, load_sinet
from frameserve.plugin.model import SCENE_LINEAR
from frameserve.weights import shipped_weights_path

SINET_WEIGHTS = shipped_weights_path("portrait-matte", "SINet.pth")
EXTREMEC3_WEIGHTS = shipped_weights_path("portrait-matte", "ExtremeC3.pth")
NETWORKS = ("sinet", "extremec3net")

# (top, bottom, left, right) in the 512 x 512 astronaut.
FACE = (90, 160, 195, 255)
TORSO = (330, 480, 60, 220)
BACKDROP = (10, 120, 300, 350)
SHUTTLE = (30, 240, 380, 450)
FLAG = (0, 250, 0, 60)


def astronaut() -> torch.Tensor:
    """The astronaut as a ``(3, 512, 512)`` float32 frame, sRGB-encoded, 0-1."""
    image = skimage.data.astronaut().astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def region(matte: torch.Tensor, box: tuple[int, int, int, int], scale: float = 1.0) -> float:
    """Mean of ``matte`` (``(H, W)``) over ``box`` (astronaut coordinates times ``scale``)."""
    top, bottom, left, right = (round(v * scale) for v in box)
    return float(matte[top:bottom, left:right].mean())


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry(builtins=True), device="cpu")


@pytest.fixture(scope="module")
def astronaut_matte(runner: Runner) -> torch.Tensor:
    """The matte of the astronaut with every knob at its default."""
    return alpha(runner, astronaut())


def run_matte(
    runner: Runner,
    image: torch.Tensor,
    hints: torch.Tensor | None = None,
    *,
    colourspace: str = "srgb",
    **knobs: object,
) -> torch.Tensor:
    """The model's RGBA output for ``image`` (and ``hints``), through the runner."""
    spec = runner.registry.get("person_matte").spec
    frames = {"image": image} if hints is None else {"image": image, "hints": hints}
    request = build_request(spec, frames, knobs, colourspace=colourspace)
    return runner.run(request).frames["image"]


def alpha(
    runner: Runner, image: torch.Tensor, hints: torch.Tensor | None = None, **knobs: object
) -> torch.Tensor:
    """The matte (the output's alpha, ``(H, W)``)."""
    return run_matte(runner, image, hints, **knobs)[3]


# -- the networks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "weights", "tensors", "parameters"),
    [(load_sinet, SINET_WEIGHTS, 393, 86_910), (load_extremec3, EXTREMEC3_WEIGHTS, 405, 37_738)],
)
def test_shipped_weights_load_strictly(load, weights: Path, tensors: int, parameters: int) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = load(weights)
    assert len(state) == tensors
    assert sum(p.numel() for p in net.parameters()) == parameters
    # every tensor of the file is in the network with its value (strict=True did the rest)
    own = net.state_dict()
    assert all(torch.equal(own[name], value) for name, value in state.items())
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    state = torch.load(SINET_WEIGHTS, map_location="cpu", weights_only=True)
    del state["classifier.1.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(ModelSetupError, match=r"missing \['classifier\.1\.weight'\]"):
        load_sinet(tmp_path / "short.pth")
    state["classifier.1.weight"] = torch.zeros(2, 2, 5, 5)
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(ModelSetupError, match=r"SINet weights .* size mismatch"):
        load_sinet(tmp_path / "wide.pth")
    # the other network's weights are not this one's
    with pytest.raises(ModelSetupError, match=r"ExtremeC3Net weights .* missing \['Fine"):
        load_extremec3(SINET_WEIGHTS)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelSetupError, match="cannot read SINet weights"):
        load_sinet(tmp_path / "junk.pth")


@pytest.mark.parametrize("cls", [SINet, ExtremeC3Net])
def test_networks_keep_the_input_size(cls: type[torch.nn.Module]) -> None:
    net = cls().eval()
    with torch.inference_mode():
        out = net(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, 2 if cls is SINet else 1, 64, 96)


def test_network_input_is_the_authors_normalisation() -> None:
    # Pure red, green and blue pixels: BGR order, minus the mean, over the std, over 255.
    rgb = torch.eye(3).reshape(1, 3, 3, 1)
    normalised = normalise_for_network(rgb)[0, :, :, 0]  # (channel BGR, pixel)
    mean = torch.tensor([107.304565, 115.69884, 132.35703])
    std = torch.tensor([63.97182, 65.1337, 68.29726])
    bgr_of_pixels = torch.eye(3).flip(0) * 255.0  # pixel p's B, G, R values
    expected = (bgr_of_pixels - mean[:, None]) / std[:, None] / 255.0
    torch.testing.assert_close(normalised, expected)


def test_network_size_keeps_the_aspect_in_multiples_of_32() -> None:
    assert network_size(512, 512, 224) == (224, 224)
    assert network_size(2160, 3840, 224) == (224, 384)
    assert network_size(1080, 1920, 320) == (320, 576)
    assert network_size(100, 5000, 224) == (224, 896)  # the long side is capped
    assert network_size(8, 8, 64) == (64, 64)


# -- the astronaut -----------------------------------------------------------------------------


@pytest.mark.parametrize("network", NETWORKS)
def test_the_matte_covers_the_astronaut_and_not_the_background(
    runner: Runner, network: str
) -> None:
    image = astronaut()
    rgba = run_matte(runner, image, network=network)
    assert rgba.shape == (4, 512, 512)
    assert torch.equal(rgba[:3], image)  # the plate passes untouched
    matte = rgba[3]
    assert float(matte.min()) >= 0.0 and float(matte.max()) <= 1.0
    assert region(matte, FACE) > 0.9
    assert region(matte, TORSO) > 0.9
    assert region(matte, BACKDROP) < 0.1
    assert region(matte, SHUTTLE) < 0.1
    if network == "sinet":
        assert region(matte, FLAG) < 0.1
    # the person is a large part of the frame, but far from all of it
    assert 0.3 < float(matte.mean()) < 0.7


def test_colour_the_plate_comes_back_and_the_matte_is_not_converted(runner: Runner) -> None:
    srgb = astronaut()[:, ::4, ::4].contiguous()  # 128 x 128
    linear = runner.colour.convert(srgb, "srgb", SCENE_LINEAR)
    rgba = run_matte(runner, linear, colourspace=SCENE_LINEAR)
    torch.testing.assert_close(rgba[:3], linear, rtol=2e-5, atol=2e-6)
    # alpha is exactly what the model computed from the sRGB values: copied, not converted
    expected = alpha(runner, runner.colour.convert(linear, SCENE_LINEAR, "srgb"))
    torch.testing.assert_close(rgba[3], expected, rtol=0, atol=1e-6)
    assert float(rgba[3].max()) == 1.0 and float(rgba[3].min()) == 0.0


def test_hdr_values_and_nan_do_not_break_the_matte(runner: Runner) -> None:
    image = astronaut()[:, ::2, ::2].contiguous()
    plain = alpha(runner, image)
    hot = image.clone()
    hot[:, :40, 180:] *= 20.0  # a blown-out corner of backdrop (values far above 1)
    hot[:, 0, 0] = float("nan")
    hot[:, 1, 0] = -3.0
    rgba = run_matte(runner, hot)
    assert torch.equal(rgba[:3].nan_to_num(7.0), hot.nan_to_num(7.0))  # RGB untouched, NaN too
    matte = rgba[3]
    assert bool(torch.isfinite(matte).all())
    assert float((matte - plain).abs().mean()) < 0.02
    assert region(matte, FACE, 0.5) > 0.9 and region(matte, BACKDROP, 0.5) < 0.1


# -- knobs -------------------------------------------------------------------------------------


def test_grow_and_choke_move_the_edge_by_whole_pixels(
    runner: Runner, astronaut_matte: torch.Tensor
) -> None:
    image = astronaut()
    base = astronaut_matte
    grown = alpha(runner, image, grow=6)
    choked = alpha(runner, image, grow=-6)
    assert float(grown.sum()) > float(base.sum()) > float(choked.sum())
    # exactly: each is the base matte's maximum / minimum over a 13 x 13 window
    torch.testing.assert_close(grown, F.max_pool2d(base[None], 13, 1, 6)[0])
    inside = (slice(6, -6), slice(6, -6))  # the window reaches past the frame at the edges
    torch.testing.assert_close(choked[inside], -F.max_pool2d(-base[None], 13, 1, 6)[0][inside])


def test_threshold_moves_the_edge_and_softness_widens_it(runner: Runner) -> None:
    image = astronaut()
    low, high = alpha(runner, image, threshold=0.2), alpha(runner, image, threshold=0.8)
    assert float(low.sum()) > float(high.sum())
    assert bool((low >= high - 1e-6).all())  # a lower threshold only ever takes more

    def soft_pixels(matte: torch.Tensor) -> int:
        return int(((matte > 0.02) & (matte < 0.98)).sum())

    hard, medium, soft = (alpha(runner, image, softness=s) for s in (0.0, 0.3, 1.0))
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert soft_pixels(hard) == 0 < soft_pixels(medium) < soft_pixels(soft)


def test_shape_edge_and_grow_matte_directly() -> None:
    values = torch.linspace(-0.2, 1.2, 15).reshape(1, 1, 15)
    shaped = shape_edge(values, 0.5, 0.4)
    assert float(shaped[0, 0, 0]) == 0.0 and float(shaped[0, 0, -1]) == 1.0
    torch.testing.assert_close(
        shape_edge(torch.tensor([[[0.5]]]), 0.5, 0.4), torch.tensor([[[0.5]]])
    )
    assert bool((shaped[..., 1:] >= shaped[..., :-1]).all())
    generator = torch.Generator().manual_seed(3)
    matte = torch.rand(1, 37, 41, generator=generator)
    for pixels in (1, 2, 5, 17, 30):
        reference = F.max_pool2d(
            F.pad(matte[None], (pixels,) * 4, mode="replicate"), 2 * pixels + 1, 1
        )[0]
        torch.testing.assert_close(grow_matte(matte, pixels), reference)
    assert grow_matte(matte, 0) is matte


def test_snap_zero_is_a_plain_upscale(runner: Runner, astronaut_matte: torch.Tensor) -> None:
    plain, snapped = alpha(runner, astronaut(), snap=0.0), astronaut_matte
    assert not torch.equal(plain, snapped)  # the 4K test shows what snapping is for
    # both find the person, and only where the upscaled network matte is unsure do they differ
    assert abs(region(plain, TORSO) - region(snapped, TORSO)) < 0.05
    assert abs(region(plain, FACE) - region(snapped, FACE)) < 0.05
    assert float((plain - snapped).abs().mean()) < 0.05


def test_a_larger_network_size_finds_a_small_figure(runner: Runner) -> None:
    """The astronaut at half size in a corner of a grey 1080p frame."""
    frame = torch.empty(3, 1080, 1920)
    frame[:] = astronaut()[:, 10:120, 300:350].mean(dim=(1, 2))[:, None, None]
    top, left = 700, 1200
    frame[:, top : top + 256, left : left + 256] = F.interpolate(
        astronaut()[None], size=(256, 256), mode="bilinear", antialias=True
    )[0]

    def face(matte: torch.Tensor) -> float:
        return region(matte[top:, left:], FACE, 0.5)

    small, large = alpha(runner, frame), alpha(runner, frame, network_size=448)
    assert face(large) > 0.85 and face(large) > face(small) + 0.1
    assert region(large[top:, left:], TORSO, 0.5) > 0.9
    assert float(large[:600].max()) < 0.05  # the grey above the figure


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 300), (300, 7)])
def test_tiny_and_thin_frames_work(runner: Runner, size: tuple[int, int]) -> None:
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(sum(size)))
    rgba = run_matte(runner, image, paint(size=size), grow=2)  # empty hints: nothing forced
    assert rgba.shape == (4, *size)
    assert bool(((rgba[3] >= 0) & (rgba[3] <= 1)).all())
    forced = run_matte(runner, image, paint((0, 0, 300, 0, 300), size=size))[3]
    assert bool((forced == 1.0).all())


def test_unknown_network_is_a_knob_error(runner: Runner) -> None:
    with pytest.raises(KnobError, match=r"'network': 'unet' is not allowed; choose one of"):
        run_matte(runner, astronaut(), network="unet")


# -- hints -------------------------------------------------------------------------------------


def paint(
    *boxes: tuple[int, int, int, int, int], size: tuple[int, int] = (512, 512)
) -> torch.Tensor:
    """Hints ``(2, *size)``: each box ``(channel, top, bottom, left, right)`` painted 1."""
    hints = torch.zeros(3, *size)
    for channel, top, bottom, left, right in boxes:
        hints[channel, top:bottom, left:right] = 1.0
    return hints


@pytest.mark.parametrize("mode", ["follow_plate", "as_painted"])
def test_hints_include_background_and_exclude_the_person(
    runner: Runner, astronaut_matte: torch.Tensor, mode: str
) -> None:
    image = astronaut()
    plain = astronaut_matte
    # exclude the face, include the model shuttle
    hints = paint((1, 40, 200, 170, 290), (0, 20, 250, 370, 460))
    steered = alpha(runner, image, hints, hints_mode=mode)
    assert region(steered, FACE) < 0.05 < 0.9 < region(plain, FACE)
    assert region(steered, SHUTTLE) > 0.95 > 0.1 > region(plain, SHUTTLE)
    # the rest is the network's answer
    assert region(steered, TORSO) > 0.9 and region(steered, BACKDROP) < 0.1
    if mode == "as_painted":
        assert float(steered[40:200, 170:290].max()) == 0.0
        assert float(steered[20:250, 370:460].min()) == 1.0


def test_an_include_hint_snaps_to_the_plate_edge_when_following_it(runner: Runner) -> None:
    """A two-tone plate, no person: a box painted a few pixels past the colour edge at x=256."""
    generator = torch.Generator().manual_seed(0)
    image = torch.empty(3, 512, 512)
    image[:] = torch.tensor([0.55, 0.55, 0.55])[:, None, None]
    image[:, :, :256] = torch.tensor([0.9, 0.4, 0.15])[:, None, None]
    image += 0.01 * torch.randn(3, 512, 512, generator=generator)
    assert float(alpha(runner, image).max()) < 0.05  # no person in it
    for overshoot in (-4, 4):
        hints = paint((0, 128, 384, 64, 256 + overshoot))
        rows = slice(200, 300)  # away from the box's top and bottom
        followed = alpha(runner, image, hints, snap=6.0)[rows, 128:384]
        painted = alpha(runner, image, hints, snap=6.0, hints_mode="as_painted")[rows, 128:384]
        followed_edge = 128 + float((followed > 0.5).sum(dim=1).float().mean())
        painted_edge = 128 + float((painted > 0.5).sum(dim=1).float().mean())
        assert abs(followed_edge - 256) <= 1.0, overshoot
        if overshoot > 0:
            assert painted_edge == 256 + overshoot


def test_hints_of_the_wrong_size_or_channels_are_refused(runner: Runner) -> None:
    image = astronaut()[:, :64, :96].contiguous()
    with pytest.raises(
        FrameError, match=r"'hints' .* is 48x64; it must be the size of 'image', 96x64"
    ):
        run_matte(runner, image, torch.zeros(3, 64, 48))
    with pytest.raises(
        FrameError, match=r"input 'hints' .* needs 3 channel\(s\); the request sent 2"
    ):
        run_matte(runner, image, torch.zeros(2, 64, 96))


def test_hints_are_optional_and_declared(runner: Runner) -> None:
    spec = PersonMatte.spec()
    assert [i.name for i in spec.required_inputs] == ["image"]
    hints = next(i for i in spec.inputs if i.name == "hints")
    assert hints.optional and hints.channels == 3  # what the MLClient node sends: RGB
    assert hints.channel_names == ("include", "exclude", "unused")
    assert spec.colourspace_in == spec.colourspace_out == "srgb"
    assert not spec.spatial.fully_convolutional


# -- 4K ----------------------------------------------------------------------------------------

UHD_SCALE = 2160 / 512
UHD_LEFT = 840  # the upscaled astronaut's left edge in the 3840-wide frame


def uhd_frame() -> torch.Tensor:
    """A 3840 x 2160 frame: the astronaut upscaled (bicubic) to 2160 x 2160 in the middle of
    the backdrop's grey."""
    image = astronaut()
    frame = torch.empty(3, 2160, 3840)
    frame[:] = image[:, 10:120, 300:350].mean(dim=(1, 2))[:, None, None]
    big = F.interpolate(image[None], size=(2160, 2160), mode="bicubic", align_corners=False)
    frame[:, :, UHD_LEFT : UHD_LEFT + 2160] = big[0].clamp(0.0, 1.0)
    return frame


def uhd_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    top, bottom, left, right = (round(v * UHD_SCALE) for v in box)
    return top, bottom, left + UHD_LEFT, right + UHD_LEFT


def edge_width(matte: torch.Tensor) -> float:
    """Mean width in pixels of the matte's transition: soft pixels per pixel of edge length."""
    inside = matte > 0.5
    length = int((inside[:, 1:] != inside[:, :-1]).sum() + (inside[1:] != inside[:-1]).sum())
    soft = int(((matte > 0.05) & (matte < 0.95)).sum())
    return soft / max(1, length)


def plate_gradient_at_edges(image: torch.Tensor, matte: torch.Tensor) -> float:
    """How much stronger the plate's gradient is where the matte is mid-way than on average."""
    luma = image.mean(dim=0)
    gradient = torch.zeros_like(luma)
    gradient[1:-1, 1:-1] = (
        (luma[1:-1, 2:] - luma[1:-1, :-2]) ** 2 + (luma[2:, 1:-1] - luma[:-2, 1:-1]) ** 2
    ).sqrt()
    edge = (matte > 0.2) & (matte < 0.8)
    return float(gradient[edge].mean() / gradient.mean())


def test_a_4k_frame_gets_a_sharp_matte_that_follows_the_plate(runner: Runner) -> None:
    frame = uhd_frame()
    rgba = run_matte(runner, frame)
    assert rgba.shape == (4, 2160, 3840)
    assert torch.equal(rgba[:3], frame)
    matte = rgba[3]
    for box, person in ((FACE, True), (TORSO, True), (BACKDROP, False), (SHUTTLE, False)):
        top, bottom, left, right = uhd_box(box)
        mean = float(matte[top:bottom, left:right].mean())
        assert mean > 0.9 if person else mean < 0.1, box
    assert float(matte[:, :600].max()) < 0.05  # the plain grey either side
    # Edges of the head and shoulders: a few pixels wide and on the plate's edges. The network's
    # own 224-pixel matte upscaled bilinearly (snap 0, softness 1) has edges about 30 pixels
    # wide; shaped like ours but not snapped, they are narrower but stay off the plate's edges.
    window = (slice(0, 1300), slice(UHD_LEFT + 200, UHD_LEFT + 1700))
    plate = frame[(slice(None), *window)]
    raw = alpha(runner, frame, snap=0.0, softness=1.0)[window]
    unsnapped = alpha(runner, frame, snap=0.0)[window]
    assert edge_width(matte[window]) < 8.0
    assert edge_width(raw) > 3.0 * edge_width(matte[window])
    on_edges = plate_gradient_at_edges(plate, matte[window])
    assert on_edges > 3.0
    assert on_edges > 1.3 * plate_gradient_at_edges(plate, unsnapped)
    assert on_edges > 1.3 * plate_gradient_at_edges(plate, raw)


# -- the guided filter -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(23, 31), (1, 7), (5, 3), (1, 1)])
@pytest.mark.parametrize("radius", [0, 1, 3, 10, 40])
def test_box_mean_is_a_window_mean_cut_to_the_frame(radius: int, shape: tuple[int, int]) -> None:
    height, width = shape
    generator = torch.Generator().manual_seed(radius)
    x = torch.rand(2, height, width, generator=generator, dtype=torch.float64)
    ours = box_mean(x, radius)
    # the reference: every pixel's window, cut to the frame, averaged one by one
    reference = torch.empty_like(x)
    for i in range(height):
        for j in range(width):
            window = x[:, max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1]
            reference[:, i, j] = window.mean(dim=(1, 2))
    torch.testing.assert_close(ours, reference)


def reference_guided_filter(
    guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """He et al.'s colour guided filter written out plainly in float64 (one 3x3 solve per pixel)."""
    g, p = guide.double(), source.double()
    mean = lambda x: box_mean(x, radius)  # noqa: E731 - checked against a loop above
    mean_g, mean_p = mean(g), mean(p)
    cov_gp = mean(g * p) - mean_g * mean_p
    sigma = torch.stack(
        [
            torch.cat([mean(g[i : i + 1] * g[j : j + 1]) - mean_g[i] * mean_g[j] for j in range(3)])
            for i in range(3)
        ]
    )  # (3, 3, H, W)
    sigma = sigma.permute(2, 3, 0, 1) + eps * torch.eye(3, dtype=torch.float64)
    slope = torch.linalg.solve(sigma, cov_gp.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)
    offset = mean_p - (slope * mean_g).sum(dim=0, keepdim=True)
    return (mean(slope) * g).sum(dim=0, keepdim=True) + mean(offset)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_matches_the_plain_algorithm(channels: int) -> None:
    generator = torch.Generator().manual_seed(channels)
    guide = torch.rand(3, 40, 52, generator=generator)
    guide[:, :, 26:] += 0.5  # an edge for the matte to follow
    source = (torch.rand(1, 40, 52, generator=generator) > 0.5).float()
    if channels == 1:
        guide = guide[:1]
        g, p = guide.double(), source.double()
        mean = lambda x: box_mean(x, 4)  # noqa: E731
        slope = (mean(g * p) - mean(g) * mean(p)) / (mean(g * g) - mean(g) ** 2 + 1e-3)
        expected = mean(slope) * g + mean(mean(p) - slope * mean(g))
    else:
        expected = reference_guided_filter(guide, source, 4, 1e-3)
    coefficients = solve_guided_filter(guide, source, radius=4, eps=1e-3)
    ours = apply_guided_filter(coefficients, guide)
    torch.testing.assert_close(ours.double(), expected, atol=2e-5, rtol=0)


def test_guided_filter_puts_a_blurred_edge_on_the_guides_edge() -> None:
    """Solved at 1/4 size, applied at full size: the matte steps where the guide steps."""
    guide = torch.zeros(3, 64, 256)
    guide[:, :, 101:] = 1.0  # the plate's edge, between x = 100 and 101
    # the network's matte at 1/4 size: a soft edge two (small) pixels right of the plate's
    blurry = torch.sigmoid((torch.arange(64.0) - 27.0) / 1.5).expand(1, 16, 64)
    small_guide = F.interpolate(guide[None], size=(16, 64), mode="area")[0]
    coefficients = solve_guided_filter(small_guide, blurry, radius=4, eps=1e-4)
    row = apply_guided_filter(coefficients, guide)[0, 32]
    steps = row[1:] - row[:-1]
    assert int(steps.argmax()) == 100 and float(steps[100]) > 0.3
    assert float(row[:100].max()) < 0.1 and float(row[101:].min()) > 0.45
    # a plain upscale of the same matte has no step: a wide ramp about 8 pixels to the right
    upscaled = F.interpolate(blurry[None], size=(64, 256), mode="bilinear")[0, 0, 32]
    assert float((upscaled[1:] - upscaled[:-1]).max()) < 0.1
    assert int((upscaled < 0.5).sum()) >= 106


def test_guided_filter_errors_and_clamp() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels, got 2"):
        solve_guided_filter(torch.zeros(2, 8, 8), torch.zeros(1, 8, 8), radius=1, eps=1e-3)
    with pytest.raises(ValueError, match=r"source \(1, 8, 9\) must be \(1, h, w\)"):
        solve_guided_filter(torch.zeros(3, 8, 8), torch.zeros(1, 8, 9), radius=1, eps=1e-3)
    guide = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    coefficients = solve_guided_filter(guide, guide[:1], radius=2, eps=1e-3)
    hot = guide.clone()
    hot[:, 0, 0] = float("nan")
    hot[:, 1, 1] = 50.0
    clamped = apply_guided_filter(coefficients, hot, clamp=(0.0, 1.0))
    assert bool(torch.isfinite(clamped).all())
    fixed = guide.clone()
    fixed[:, 0, 0] = 0.0
    fixed[:, 1, 1] = 1.0
    torch.testing.assert_close(clamped, apply_guided_filter(coefficients, fixed))
