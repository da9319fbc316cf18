"""Tests for the motion-vector models: accuracy on known motion, Sintel plates, conventions.

Nuke's convention is checked throughout: ``u`` positive to the right, ``v`` positive *up*, so
a pixel that moves down the image (rows grow) has a negative ``v``. Frames are built from real
photographs (scikit-image's astronaut and coffee) and the Sintel plates in ``tests/data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import skimage.io
import torch
import torch.nn.functional as F

from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.main import main
from frameserve.engine.colour import SCENE_LINEAR, default_manager
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import FrameError, ModelSetupError
from frameserve.media.imageio import read_image
from frameserve.networks.optical_flow import display_range
from frameserve.networks.spynet import SPyNet, estimate_flow, load_spynet
from tests.support.paths import TEST_DATA

SINTEL = TEST_DATA / "sintel"
MOTION_CHANNELS = ("forward.u", "forward.v", "backward.u", "backward.v")
BORDER = 8  # pixels left out of accuracy measures (motion from outside the frame)
SPYNET_VARIABLE = "FRAMESERVE_SPYNET_WEIGHTS"


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(ModelRegistry([], builtins=True), device="cpu")


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as a float32 ``(3, H, W)`` tensor, sRGB-encoded, 0-1."""
    image = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def sintel(frame: int) -> torch.Tensor:
    """A Sintel plate (``(3, 436, 1024)``, sRGB-encoded, 0-1)."""
    image = skimage.io.imread(SINTEL / f"frame_{frame:04d}.png")[..., :3]
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def sample(image: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """``image`` (``(C, H, W)``) sampled at ``(x + dx, y + dy)``, bilinear, edges extended."""
    _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack(
        ((xs + dx) * 2.0 / (width - 1) - 1.0, (ys + dy) * 2.0 / (height - 1) - 1.0), dim=-1
    )
    return F.grid_sample(
        image[None], grid[None].float(), mode="bilinear", padding_mode="border", align_corners=True
    )[0]


def vectors(
    runner: Runner,
    model_id: str,
    this: torch.Tensor,
    previous: torch.Tensor,
    following: torch.Tensor,
    *,
    colourspace: str = "srgb",
    **knobs: object,
) -> torch.Tensor:
    """Run a motion-vector model through the runner; return its ``(4, H, W)`` motion layer."""
    spec = runner.registry.get(model_id).spec
    assert [i.name for i in spec.inputs] == ["image", "image@-1", "image@+1"]
    request = build_request(spec, [this, previous, following], knobs, colourspace=colourspace)
    result = runner.run(request)
    assert set(result.frames) == {"motion"}
    return result.frames["motion"]


def smooth_field(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth flow field (pixels, image convention: dy down) of up to about 4.7 pixels."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    dx = (
        2.0 * torch.sin(2 * torch.pi * 1.3 * xs / width + 0.5)
        + 1.5 * torch.cos(2 * torch.pi * 0.8 * ys / height)
        + 0.5
    )
    dy = (
        1.8 * torch.sin(2 * torch.pi * 1.7 * (xs + ys) / (width + height))
        - 1.2 * torch.cos(2 * torch.pi * 1.1 * ys / height + 1.0)
        + 1.0  # mostly downwards: v must come out mostly negative
    )
    return dx, dy


def interior(image: torch.Tensor) -> torch.Tensor:
    return image[..., BORDER:-BORDER, BORDER:-BORDER]


# -- the shipped method (DIS) ------------------------------------------------------------------


def test_the_model_declares_nukes_motion_layer(runner: Runner) -> None:
    spec = runner.registry.get("motion_vectors").spec
    assert spec.temporal_window == (1, 1)
    (output,) = spec.outputs
    assert (output.name, output.channels, output.channel_names) == ("motion", 4, MOTION_CHANNELS)
    assert (spec.colourspace_in, spec.colourspace_out) == ("srgb", "data")
    assert spec.knob("quality") is not None


def test_known_smooth_motion_is_found_within_half_a_pixel(runner: Runner) -> None:
    following = photo("astronaut")
    dx, dy = smooth_field(*following.shape[1:])
    # This frame's pixel p shows the next frame at p + (dx, dy): that is the forward motion.
    this = sample(following, dx, dy)
    motion = vectors(runner, "motion_vectors", this, following, following)
    expected = torch.stack((dx, -dy))  # Nuke: v up
    for name, layer in (("forward", motion[0:2]), ("backward", motion[2:4])):
        endpoint_error = interior((layer - expected).norm(dim=0)).mean().item()
        assert endpoint_error < 0.5, f"{name} vectors: mean endpoint error {endpoint_error:.3f}"
    assert interior(motion[1]).mean() < -0.5  # the image moved down: v is negative
    assert interior(motion[0]).mean() > 0.2  # and right: u is positive


def test_sintel_vectors_warp_the_neighbours_onto_this_frame(runner: Runner) -> None:
    plates = {frame: sintel(frame) for frame in (9, 10, 11)}
    colour = default_manager()
    linear = {n: colour.convert(p, "srgb", SCENE_LINEAR) for n, p in plates.items()}
    # Scene-linear in, as Nuke sends it: the model's colourspace_in converts it to sRGB.
    motion = vectors(
        runner, "motion_vectors", linear[10], linear[9], linear[11], colourspace=SCENE_LINEAR
    )
    assert motion.shape == (4, 436, 1024)
    assert torch.isfinite(motion).all()
    for neighbour, (u, v) in ((11, motion[0:2]), (9, motion[2:4])):
        warped = sample(plates[neighbour], u, -v)  # back to image convention: dy = -v
        before = interior((plates[neighbour] - plates[10]).abs()).mean().item()
        after = interior((warped - plates[10]).abs()).mean().item()
        assert after < 0.5 * before, f"frame {neighbour}: {after:.4f} vs unwarped {before:.4f}"


def test_a_constant_shift_on_a_4k_frame(runner: Runner) -> None:
    big = F.interpolate(photo("coffee")[None], size=(2160 + 64, 3840 + 64), mode="bicubic")[0]
    big = big.clamp(0.0, 1.0)

    def crop(x: int, y: int) -> torch.Tensor:
        return big[:, 32 + y : 32 + y + 2160, 32 + x : 32 + x + 3840].contiguous()

    # In the next frame the picture has moved 12 pixels right and 7 up; in the previous one it
    # was 5 pixels further left and 3 lower.
    this, following, previous = crop(0, 0), crop(-12, 7), crop(5, -3)
    motion = vectors(runner, "motion_vectors", this, previous, following, quality="fast")
    assert motion.shape == (4, 2160, 3840)
    expected = torch.tensor([12.0, 7.0, -5.0, -3.0]).view(4, 1, 1)
    error = interior(motion - expected).abs()
    assert error.median() < 0.1
    assert error.mean() < 0.3


def test_a_shot_end_gives_zero_vectors_and_vectors_knob_skips_a_pair(runner: Runner) -> None:
    this, following = sintel(10)[:, :128, :256], sintel(11)[:, :128, :256]
    motion = vectors(runner, "motion_vectors", this, this, following)
    assert torch.equal(motion[2:4], torch.zeros(2, 128, 256))  # previous = this frame
    assert motion[0:2].abs().mean() > 0.5
    only_backward = vectors(
        runner, "motion_vectors", this, following, following, vectors="backward"
    )
    assert torch.equal(only_backward[0:2], torch.zeros(2, 128, 256))
    # The same pair, matched with a grey mapping made from slightly different frames.
    assert (only_backward[2:4] - motion[0:2]).norm(dim=0).median() < 0.1


def test_smoothing_smooths(runner: Runner) -> None:
    this, following = sintel(10)[:, :128, :256], sintel(11)[:, :128, :256]
    sharp = vectors(runner, "motion_vectors", this, following, following)
    smooth = vectors(runner, "motion_vectors", this, following, following, smoothing=4.0)

    def roughness(image: torch.Tensor) -> float:  # mean absolute second difference along x
        return (image[..., 2:] - 2.0 * image[..., 1:-1] + image[..., :-2]).abs().mean().item()

    assert roughness(smooth) < 0.5 * roughness(sharp)
    torch.testing.assert_close(smooth.mean(), sharp.mean(), atol=0.05, rtol=0.0)


def test_frames_of_different_sizes_are_a_frame_error(runner: Runner) -> None:
    this = sintel(10)[:, :64, :96]
    with pytest.raises(FrameError, match=r"'image@\+1' 80x64"):
        vectors(runner, "motion_vectors", this, this, sintel(11)[:, :64, :80])


def test_hdr_values_and_nan_are_handled(runner: Runner) -> None:
    this, following = sintel(10)[:, :128, :256], sintel(11)[:, :128, :256]
    low = vectors(runner, "motion_vectors", this, this, following)
    # Ten stops brighter with a NaN hole: highlights are rolled off, not clipped, and the
    # shared stretch makes the matcher see the same picture.
    bright_this, bright_following = this * 8.0, following * 8.0
    bright_this[:, 60:64, 100:104] = float("nan")
    high = vectors(runner, "motion_vectors", bright_this, bright_this, bright_following)
    assert torch.isfinite(high).all()
    assert (interior(high[0:2]) - interior(low[0:2])).norm(dim=0).median() < 0.25


def test_frameserve_run_writes_the_motion_layer(tmp_path: Path) -> None:
    for frame in (9, 10, 11):
        (tmp_path / f"plate.{frame:04d}.png").write_bytes(
            (SINTEL / f"frame_{frame:04d}.png").read_bytes()
        )
    status = main(
        [
            "run", "motion_vectors", "--colourspace", "srgb",
            "--input", str(tmp_path / "plate.####.png"),
            "--output", str(tmp_path / "motion.####.exr"),
            "--frames", "9-11", "--knob", "quality=fast",
        ]
    )  # fmt: skip
    assert status == 0
    written = {}
    for frame in (9, 10, 11):
        path = tmp_path / f"motion.{frame:04d}.exr"
        # EXR files list their channels sorted by name; Nuke (and read_image) find them by name.
        assert sorted(read_image(path).channel_names) == sorted(MOTION_CHANNELS)
        written[frame] = image = read_image(path, channels=MOTION_CHANNELS)
        assert image.pixels.shape == (4, 436, 1024)
    # At the shot's ends the missing neighbour is the frame itself: no motion that way.
    assert not written[9].pixels[2:4].any()
    assert not written[11].pixels[0:2].any()
    middle = written[10].pixels
    assert np.abs(middle).mean() > 0.5
    # Frame 10's backward vectors point the opposite way to its forward ones on this plate.
    assert (middle[0:2] * middle[2:4]).sum(axis=0).mean() < 0


# -- SPyNet with the authors' key layout -------------------------------------------------------

#: The tensors of a published network-*.pytorch file: (out, in) channels of each layer.
PUBLISHED_LAYERS = {0: (32, 8), 2: (64, 32), 4: (32, 64), 6: (16, 32), 8: (2, 16)}


def published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with exactly the published keys and shapes, small random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for level in range(6):
        for layer, (outputs, inputs) in PUBLISHED_LAYERS.items():
            prefix = f"moduleBasic.{level}.moduleBasic.{layer}"
            weight = torch.randn(outputs, inputs, 7, 7, generator=generator)
            state[f"{prefix}.weight"] = weight * (0.5 / (inputs * 49) ** 0.5)
            state[f"{prefix}.bias"] = torch.randn(outputs, generator=generator) * 0.01
    return state


@pytest.fixture
def spynet_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "network-sintel-final.pytorch"
    torch.save(published_state(), path)
    monkeypatch.setenv(SPYNET_VARIABLE, str(path))
    return path


@pytest.fixture
def spynet_runner() -> Runner:
    """A fresh runner per test: the weights variable is read when the model is set up."""
    return Runner(ModelRegistry([], builtins=True), device="cpu")


def test_spynet_loads_the_published_keys_strictly(spynet_weights: Path) -> None:
    state = published_state()
    assert len(state) == 60
    net = load_spynet(spynet_weights)
    loaded = net.state_dict()
    assert len(loaded) == 60
    torch.testing.assert_close(
        loaded["levels.3.4.weight"], state["moduleBasic.3.moduleBasic.4.weight"]
    )
    torch.testing.assert_close(loaded["levels.5.8.bias"], state["moduleBasic.5.moduleBasic.8.bias"])
    # The port's newer attribute names (a state dict saved from its current code) load too.
    newer = spynet_weights.with_name("newer.pytorch")
    torch.save({k.replace("module", "net"): v for k, v in state.items()}, newer)
    torch.testing.assert_close(load_spynet(newer).state_dict(), loaded)


def test_spynet_model_runs_with_the_published_layout(
    spynet_weights: Path, spynet_runner: Runner
) -> None:
    this, following = sintel(10)[:, :70, :100], sintel(11)[:, :70, :100]
    motion = vectors(spynet_runner, "motion_vectors_spynet", this, this, following)
    assert motion.shape == (4, 70, 100)
    assert torch.isfinite(motion).all()
    assert motion[0:2].abs().max() > 0  # random weights still give some flow
    assert torch.equal(motion[2:4], torch.zeros(2, 70, 100))  # previous = this frame
    # The model's forward vectors are the network's flow with v = -dy, at any frame size.
    net = load_spynet(spynet_weights)
    flow = estimate_flow(net, display_range(this)[None], display_range(following)[None])[0]
    torch.testing.assert_close(motion[0], flow[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(motion[1], -flow[1], atol=1e-4, rtol=1e-4)


def test_spynet_without_weights_says_which_variable_to_set(
    monkeypatch: pytest.MonkeyPatch, spynet_runner: Runner
) -> None:
    monkeypatch.delenv(SPYNET_VARIABLE, raising=False)
    assert spynet_runner.registry.get("motion_vectors_spynet").ok  # still listed
    this = sintel(10)[:, :64, :64]
    with pytest.raises(ModelSetupError, match=SPYNET_VARIABLE):
        vectors(spynet_runner, "motion_vectors_spynet", this, this, this)


def test_spynet_wrong_weights_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong_key = published_state()
    wrong_key["moduleBasic.6.moduleBasic.0.weight"] = torch.zeros(32, 8, 7, 7)
    wrong_shape = published_state()
    wrong_shape["moduleBasic.2.moduleBasic.2.weight"] = torch.zeros(64, 16, 7, 7)
    renamed = {k.replace("moduleBasic", "basic"): v for k, v in published_state().items()}
    for name, state, message in (
        ("extra", wrong_key, "do not fit"),
        ("shape", wrong_shape, r"levels\.2\.2\.weight"),
        ("renamed", renamed, "'basic.0.basic.0.weight', which is not SPyNet's"),
    ):
        path = tmp_path / f"{name}.pytorch"
        torch.save(state, path)
        with pytest.raises(ModelSetupError, match=message):
            load_spynet(path)
    garbage = tmp_path / "garbage.pytorch"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ModelSetupError, match="cannot read SPyNet weights"):
        load_spynet(garbage)
    missing = tmp_path / "missing.pytorch"
    monkeypatch.setenv(SPYNET_VARIABLE, str(missing))
    runner = Runner(ModelRegistry([], builtins=True), device="cpu")
    this = sintel(10)[:, :64, :64]
    with pytest.raises(ModelSetupError, match="which is not a file"):
        vectors(runner, "motion_vectors_spynet", this, this, this)


def test_spynet_pyramid_upsampling_and_rescaling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spynet_runner: Runner
) -> None:
    # Zero weights: each level's network adds its last bias, whatever the frames, so the flow
    # is the biases summed up the pyramid, doubled at each finer level.
    state = {key: torch.zeros_like(value) for key, value in published_state().items()}
    for level, bias in ((0, (1.0, 2.0)), (1, (0.5, -1.0)), (2, (0.25, 0.5)), (3, (100.0, 100.0))):
        state[f"moduleBasic.{level}.moduleBasic.8.bias"] = torch.tensor(bias)
    path = tmp_path / "constant.pytorch"
    torch.save(state, path)
    monkeypatch.setenv(SPYNET_VARIABLE, str(path))
    this, previous, following = (sintel(frame)[:, :70, :100] for frame in (10, 9, 11))
    motion = vectors(spynet_runner, "motion_vectors_spynet", this, previous, following)
    # 100x70 runs at 128x96: levels 128x96, 64x48, 32x24 use networks 0 (coarsest), 1, 2.
    dx, dy = 4 * 1.0 + 2 * 0.5 + 0.25, 4 * 2.0 + 2 * -1.0 + 0.5
    expected = torch.tensor([dx * 100 / 128, -dy * 70 / 96]).view(2, 1, 1).expand(2, 70, 100)
    torch.testing.assert_close(motion[0:2], expected)
    torch.testing.assert_close(motion[2:4], expected)
    half = vectors(spynet_runner, "motion_vectors_spynet", this, previous, following,
                   resolution="half")  # fmt: skip
    # At half size: 50x35 runs at 64x64: levels 64x64 and 32x32 use networks 0 and 1.
    dx, dy = 2 * 1.0 + 0.5, 2 * 2.0 - 1.0
    expected = torch.tensor([dx * 100 / 64, -dy * 70 / 64]).view(2, 1, 1).expand(2, 70, 100)
    torch.testing.assert_close(half[0:2], expected)


def test_spynet_network_takes_multiples_of_32() -> None:
    net = SPyNet().eval()
    assert tuple(net(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)).shape) == (1, 2, 64, 96)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.rand(1, 3, 60, 96), torch.rand(1, 3, 60, 96))
