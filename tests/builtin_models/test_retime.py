"""Tests for ``retime`` and ``motion_vectors_learned`` (RIFE v4.0) on real images.

Sintel frames 9 and 11 give frame 10 to compare an in-between with (``tests/data/sintel``);
scikit-image's photographs, moved by known sub-pixel motion, give exact answers. Every figure
the issue asks for is printed (``pytest -s``) next to what it is compared with.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.colour import SCENE_LINEAR, default_manager
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import FrameError, ModelSetupError
from frameserve.networks.optical_flow import backward_warp
from frameserve.networks.rife import IFNet, choose_scale, load_rife
from frameserve.serve.server import FrameServer
from frameserve.weights import shipped_weights_path
from tests.builtin_models.test_motion_vectors import (
    interior,
    photo,
    sample,
    sintel,
    smooth_field,
    vectors,
)
from tests.support.node_client import NodeClient, decode_image
from tests.support.servers import start_server


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry([], builtins=True), device="cpu")


def retime(
    runner: Runner,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    colourspace: str = "srgb",
    **knobs: object,
) -> torch.Tensor:
    """Run ``retime`` through the runner; return its ``(3, H, W)`` frame."""
    spec = runner.registry.get("retime").spec
    result = runner.run(build_request(spec, [a, b], knobs, colourspace=colourspace))
    return result.frames["image"]


def psnr(image: torch.Tensor, truth: torch.Tensor) -> float:
    """Peak signal-to-noise ratio for 0-1 values, in dB."""
    return 10.0 * math.log10(1.0 / ((image - truth) ** 2).mean().item())


def shifted_photo(name: str, dx: float, dy: float, size: int = 256) -> torch.Tensor:
    """A crop of a photograph moved by ``(dx, dy)`` pixels (cubic spline, sub-pixel exact)."""
    image = getattr(__import__("skimage.data").data, name)()[..., :3].astype(np.float32) / 255
    moved = np.stack(
        [scipy.ndimage.shift(image[..., c], (dy, dx), order=3, mode="reflect") for c in range(3)],
        axis=-1,
    )
    crop = moved[64 : 64 + size, 64 : 64 + size].clip(0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def sintel_plates() -> dict[int, torch.Tensor]:
    return {frame: sintel(frame) for frame in (9, 10, 11)}


# -- the network and its weights ---------------------------------------------------------------


def test_the_shipped_weights_are_float16_and_load_strictly() -> None:
    path = shipped_weights_path("retime", "rife_flownet.pkl")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len(state) == 222 and all(key.startswith("module.") for key in state)
    assert {tensor.dtype for tensor in state.values()} == {torch.float16}
    assert sum(tensor.numel() for tensor in state.values()) == 8_738_588
    net = load_rife(path)
    assert next(net.parameters()).dtype == torch.float32
    for folder_file in ("LICENSE", "LICENSE-Practical-RIFE", "NOTICE"):
        assert (path.parent / folder_file).is_file()


def test_a_state_dict_that_does_not_fit_is_refused(tmp_path: object) -> None:
    path = shipped_weights_path("retime", "rife_flownet.pkl")
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state["module.unet.conv.bias"]
    broken = tmp_path / "broken.pkl"  # type: ignore[operator]
    torch.save(state, broken)
    with pytest.raises(ModelSetupError, match=r"missing \['unet.conv.bias'\]"):
        load_rife(broken)
    assert isinstance(load_rife(path), IFNet)


# -- retime ----------------------------------------------------------------------------------


def test_the_model_declares_two_inputs_a_time_knob_and_its_licence(runner: Runner) -> None:
    spec = runner.registry.get("retime").spec
    assert [(i.name, i.channels) for i in spec.inputs] == [("a", 3), ("b", 3)]
    assert (spec.colourspace_in, spec.colourspace_out) == ("srgb", "srgb")
    t = spec.knob("t")
    assert t is not None and (t.default, t.min, t.max) == (0.5, 0.0, 1.0)  # type: ignore[attr-defined]
    assert {k.name for k in spec.knobs} == {"t", "scale", "ensemble", "refine"}
    assert spec.weights is not None and len(spec.weights) == 1
    (weights,) = spec.weights
    assert (weights.licence, weights.commercial) == ("MIT", True)


def test_sintel_in_between_beats_the_blend_and_dis_warping(
    runner: Runner, sintel_plates: dict[int, torch.Tensor]
) -> None:
    before, truth, after = sintel_plates[9], sintel_plates[10], sintel_plates[11]
    made = retime(runner, before, after, t=0.5)
    assert made.shape == truth.shape
    rife, blend = psnr(made, truth), psnr(0.5 * (before + after), truth)
    # Warping with DIS vectors (the motion_vectors model): F01 = frame 9 -> 11, F10 = 11 -> 9.
    forward = vectors(runner, "motion_vectors", before, before, after, vectors="forward")
    backward = vectors(runner, "motion_vectors", after, before, after, vectors="backward")
    f01 = torch.stack((forward[0], -forward[1]))[None]  # Nuke's v up -> image dy down
    f10 = torch.stack((backward[2], -backward[3]))[None]
    # (a) each neighbour moved half way by its own vectors, read at the pixel being made;
    plain = 0.5 * backward_warp(before[None], -0.5 * f01) + 0.5 * backward_warp(
        after[None], -0.5 * f10
    )
    # (b) both vectors combined into the flows from t = 0.5 (Super SloMo's approximation).
    to_before = 0.25 * (f10 - f01)
    combined = 0.5 * backward_warp(before[None], to_before) + 0.5 * backward_warp(
        after[None], -to_before
    )
    dis_plain, dis_combined = psnr(plain[0], truth), psnr(combined[0], truth)
    ensemble = psnr(retime(runner, before, after, t=0.5, ensemble=True), truth)
    print(
        f"\nSintel 9+11 -> 10 PSNR: RIFE {rife:.2f} dB, RIFE ensemble {ensemble:.2f} dB, "
        f"50/50 blend {blend:.2f} dB, DIS half-way warp {dis_plain:.2f} dB, DIS combined "
        f"flows {dis_combined:.2f} dB"
    )
    assert rife >= blend + 3.0
    assert rife > dis_plain
    assert ensemble > dis_combined


def test_a_photograph_moved_by_a_known_sub_pixel_motion(runner: Runner) -> None:
    dx, dy = 1.5, 2.5
    a, b = shifted_photo("coffee", 0.0, 0.0), shifted_photo("coffee", dx, dy)
    exact = shifted_photo("coffee", dx / 2, dy / 2)
    made = retime(runner, a, b, t=0.5)
    border = 12
    quality = psnr(
        made[:, border:-border, border:-border], exact[:, border:-border, border:-border]
    )
    blend = psnr(
        (0.5 * (a + b))[:, border:-border, border:-border], exact[:, border:-border, border:-border]
    )
    print(f"\ncoffee moved ({dx}, {dy}) px, in-between PSNR {quality:.2f} dB (blend {blend:.2f})")
    assert quality >= 35.0


def test_t_0_and_1_return_the_inputs(
    runner: Runner, sintel_plates: dict[int, torch.Tensor]
) -> None:
    colour = default_manager()
    a = colour.convert(sintel_plates[9][:, :96, :160].contiguous(), "srgb", SCENE_LINEAR)
    b = colour.convert(sintel_plates[11][:, :96, :160].contiguous(), "srgb", SCENE_LINEAR)
    for t, expected in ((0.0, a), (1.0, b)):
        made = retime(runner, a, b, colourspace=SCENE_LINEAR, t=t)
        assert (made - expected).abs().max().item() < 1e-3


def test_hdr_highlights_are_carried_by_the_motion_not_clipped(runner: Runner) -> None:
    a = shifted_photo("chelsea", 0.0, 0.0, size=128)
    a[:, 40:56, 40:56] = 6.0  # a highlight far above 1 (sRGB-encoded values)
    b = torch.roll(a, shifts=(0, 8), dims=(1, 2))  # everything moved 8 pixels right
    a[0, 0, 0] = float("nan")
    made = retime(runner, a, b, t=0.5)
    assert torch.isfinite(made).all()
    highlight = made[:, 42:54, 46:58]  # half way: 4 pixels right
    assert highlight.min().item() > 5.0, highlight.min().item()
    assert made.max().item() <= 6.0 + 1e-3
    assert made[:, 42:54, 40:43].max().item() < 1.0  # where it was, it has moved away


def test_frames_of_different_sizes_are_a_frame_error(runner: Runner) -> None:
    with pytest.raises(FrameError, match=r"'b' 80x64"):
        retime(runner, torch.rand(3, 64, 96), torch.rand(3, 64, 80))


def test_a_4k_frame_runs_through_the_scale_knob(runner: Runner) -> None:
    assert choose_scale("auto", 2160, 3840) == 0.5  # what a 4K frame gets by default
    assert choose_scale("auto", 1080, 1920) == 1.0 and choose_scale("1", 2160, 3840) == 1.0
    big = F.interpolate(photo("coffee")[None], size=(2160, 3840 + 16), mode="bilinear")[0]
    a, b = big[:, :, 16:].contiguous(), big[:, :, :-16].contiguous()  # moved 16 px right
    made = retime(runner, a, b, t=0.5, scale="0.25")  # the cheapest 4K run, for the CPU
    exact = big[:, :, 8:-8]
    assert made.shape == (3, 2160, 3840)
    quality = psnr(made[:, 16:-16, 32:-32], exact[:, 16:-16, 32:-32])
    print(f"\n4K (scale 0.25), 16 px motion: in-between PSNR {quality:.2f} dB")
    assert quality > 35.0


# -- through the MLClient node -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FrameServer]:
    running = start_server()
    yield running
    running.close()


def test_the_mlclient_node_gets_two_inputs_and_a_t_knob(
    server: FrameServer, runner: Runner, sintel_plates: dict[int, torch.Tensor]
) -> None:
    host, port = server.mlclient_address
    node = NodeClient(host, port, timeout=120.0)
    model = node.model("retime")
    assert [(i.name, i.channels) for i in model.inputs] == [("a", 3), ("b", 3)]
    assert ("t", [0.5]) in [(o.name, list(o.values)) for o in model.float_options]
    colour = default_manager()
    a = colour.convert(sintel_plates[9][:, :64, :128].contiguous(), "srgb", SCENE_LINEAR)
    b = colour.convert(sintel_plates[11][:, :64, :128].contiguous(), "srgb", SCENE_LINEAR)
    reply = node.infer(model, [a.numpy(), b.numpy()], knobs={"t": 0.25})
    assert not reply.HasField("error"), reply.error.msg
    made = torch.from_numpy(decode_image(reply.r2.images[0]).copy())
    expected = retime(runner, a, b, colourspace=SCENE_LINEAR, t=0.25)
    assert made.shape == expected.shape
    assert (made - expected).abs().max().item() < 1e-3


# -- motion_vectors_learned ----------------------------------------------------------------------


def test_learned_vectors_on_known_motion_next_to_dis(runner: Runner) -> None:
    spec = runner.registry.get("motion_vectors_learned").spec
    assert spec.temporal_window == (1, 1) and (spec.colourspace_in, spec.colourspace_out) == (
        "srgb",
        "data",
    )
    assert spec.weights is not None and spec.weights[0].commercial
    following = photo("astronaut")
    dx, dy = smooth_field(*following.shape[1:])
    this = sample(following, dx, dy)  # this(p) = next(p + (dx, dy)): forward motion
    expected = torch.stack((dx, -dy))  # Nuke: v up
    errors = {}
    for model_id, knobs in (("motion_vectors", {}), ("motion_vectors_learned", {})):
        motion = vectors(runner, model_id, this, following, following, **knobs)
        for name, layer in (("forward", motion[0:2]), ("backward", motion[2:4])):
            error = interior((layer - expected).norm(dim=0)).mean().item()
            errors[f"{model_id} {knobs} {name}"] = error
    print("\nmean endpoint error (px), astronaut warped by a smooth field of up to 4.7 px:")
    for name, error in errors.items():
        print(f"  {name}: {error:.3f}")
    assert errors["motion_vectors_learned {} forward"] < 1.0
    assert errors["motion_vectors_learned {} backward"] < 1.0


def test_learned_vectors_follow_nukes_convention_and_warp_sintel(
    runner: Runner, sintel_plates: dict[int, torch.Tensor]
) -> None:
    plates = sintel_plates
    motion = vectors(runner, "motion_vectors_learned", plates[10], plates[9], plates[11])
    assert motion.shape == (4, 436, 1024) and torch.isfinite(motion).all()
    for neighbour, (u, v) in ((11, motion[0:2]), (9, motion[2:4])):
        warped = sample(plates[neighbour], u, -v)
        before = interior((plates[neighbour] - plates[10]).abs()).mean().item()
        after = interior((warped - plates[10]).abs()).mean().item()
        print(f"\nframe {neighbour} warped onto 10 by learned vectors: {after:.4f} vs {before:.4f}")
        assert after < 0.5 * before
    # Moving down the image is a negative v: the photo moved 3 px down and 5 px right.
    image = photo("coffee")
    this, following = image[:, 40:200, 40:296], image[:, 37:197, 35:291]
    motion = vectors(
        runner,
        "motion_vectors_learned",
        this.contiguous(),
        this.contiguous(),
        following.contiguous(),
    )
    assert torch.equal(motion[2:4], torch.zeros(2, 160, 256))  # previous = this frame
    u, v = interior(motion[0]).mean().item(), interior(motion[1]).mean().item()
    assert u > 3.0 and v < -1.5, (u, v)
