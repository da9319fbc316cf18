"""Tests for synthetic degradations and training restoration networks with them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.errors import ConfigError
from frameserve.networks.motion_blur import (
    PATH_CODE_CHANNELS,
    blur,
    linear_to_srgb,
    motion_kernel,
    path_code,
    srgb_to_linear,
)
from frameserve.training import (
    FramePair,
    ImagePairs,
    LabelledImage,
    LabelledImages,
    NetworkSpec,
    Trainer,
    build_network,
)
from frameserve.training.degradations import DegradedTask, MotionBlur, SensorNoise
from frameserve.training.networks import network_size_multiple
from frameserve.training.tasks import task_for
from tests.training.helpers import fast_settings

RESTORATION = NetworkSpec(kind="restoration", size="small", in_channels=3, out_channels=3)


def clean_photos(count: int = 2, size: int = 48) -> ImagePairs:
    """Clean smooth-ish frames as (input = target) pairs."""
    rng = np.random.default_rng(7)
    pairs = []
    for index in range(count):
        frame = rng.random((3, size // 4, size // 4), dtype=np.float32)
        frame = np.kron(frame, np.ones((1, 4, 4), np.float32))  # blocks: edges to blur
        pairs.append(FramePair(input=frame, target=frame, name=f"photo {index}"))
    return ImagePairs(pairs, validation=pairs[:1], colourspace="srgb")


# -- kernels and curves --------------------------------------------------------------------------


def test_srgb_curves_are_inverse_and_match_the_standard() -> None:
    values = torch.linspace(0, 1, 101)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-6, rtol=0)
    assert float(srgb_to_linear(torch.tensor(0.5))) == pytest.approx(0.21404, abs=1e-5)


@pytest.mark.parametrize(("turn", "warp"), [(0.0, 1.0), (1.5, 1.0), (0.0, 2.0), (-2.0, 0.5)])
def test_motion_kernels_are_normalised_and_centred(turn: float, warp: float) -> None:
    kernel = motion_kernel(12.0, angle=1.0, turn=turn, speed_warp=warp)
    size = kernel.shape[0]
    assert kernel.shape == (size, size) and size % 2 == 1
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
    assert kernel.min() >= 0
    rows, cols = np.mgrid[:size, :size] - size // 2
    assert float((kernel * rows).sum()) == pytest.approx(0.0, abs=1e-4)  # no shift
    assert float((kernel * cols).sum()) == pytest.approx(0.0, abs=1e-4)


def test_a_straight_kernel_spans_its_length_in_its_direction() -> None:
    kernel = motion_kernel(10.0, angle=0.0)
    assert np.count_nonzero(kernel.sum(axis=1) > 1e-6) <= 2  # one row (bilinear: two at most)
    spread = np.nonzero(kernel.sum(axis=0) > 1e-6)[0]
    assert 10 <= spread[-1] - spread[0] + 1 <= 12
    vertical = motion_kernel(10.0, angle=math.pi / 2)
    np.testing.assert_allclose(vertical, kernel.T, atol=1e-6)


def test_the_margin_holds_every_kernel_motion_blur_draws() -> None:
    motion = MotionBlur(lengths=(14.0, 15.0))
    kernels, codes = motion.kernels(np.random.default_rng(3), 64)
    assert kernels.shape == (64, 2 * motion.margin + 1, 2 * motion.margin + 1)
    assert codes.shape == (64, PATH_CODE_CHANNELS)
    torch.testing.assert_close(kernels.sum(dim=(1, 2)), torch.ones(64))


def test_blurring_keeps_flat_frames_and_cuts_the_margin() -> None:
    frames = torch.full((2, 3, 20, 24), 0.3)
    kernels = torch.from_numpy(np.stack([motion_kernel(6.0, angle=i, size=9) for i in range(2)]))
    blurred = blur(frames, kernels)
    assert blurred.shape == (2, 3, 12, 16)
    torch.testing.assert_close(blurred, torch.full_like(blurred, 0.3))


def test_a_kernel_too_small_for_its_path_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold a path"):
        motion_kernel(20.0, angle=0.0, size=9)


def test_sensor_noise_has_the_level_it_says() -> None:
    frames = torch.full((8, 3, 64, 64), 0.5)
    noise = SensorNoise(sigmas=(0.1, 0.1), poisson=0.0, chroma=0.0)
    noisy = noise(frames, np.random.default_rng(0))
    assert float((noisy - frames).std()) == pytest.approx(0.1, rel=0.02)
    grey = SensorNoise(sigmas=(0.1, 0.1), poisson=0.0, chroma=1.0)(frames, np.random.default_rng(0))
    torch.testing.assert_close(grey[:, 0], grey[:, 1])
    shot = SensorNoise(poisson=1.0, gains=(0.002, 0.002), reads=(0.0, 0.0), chroma=0.0)
    rng = np.random.default_rng(1)
    deviations = []
    for value in (0.4, 0.7):  # sRGB; in linear light the deviation is sqrt(gain * x)
        frames = torch.full((4, 3, 64, 64), value)
        linear = float(srgb_to_linear(torch.tensor(value)))
        slope = 1.055 / 2.4 * linear ** (1 / 2.4 - 1)  # of the sRGB curve there
        deviations.append(float((shot(frames, rng) - frames).std()))
        assert deviations[-1] == pytest.approx(math.sqrt(0.002 * linear) * slope, rel=0.05)
    assert deviations[0] > deviations[1]  # the curve lifts the shadows' noise


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MotionBlur(lengths=(10.0, 5.0)), "lengths"),
        (lambda: MotionBlur(curved=2.0), "'curved' must be a share"),
        (lambda: SensorNoise(sigmas=(0.2, 0.1)), "'sigmas'"),
        (lambda: SensorNoise(poisson=-1.0), "'poisson' must be a share"),
    ],
)
def test_wrong_degradation_settings_are_refused(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


# -- the task ------------------------------------------------------------------------------------


def test_degraded_crops_line_up_with_their_targets() -> None:
    """With no blur and no noise the input is the target: the margins are cut alike."""
    task = DegradedTask(task_for(clean_photos()), MotionBlur(sharp=1.0, noise=0.0))
    inputs, targets = task.sample(np.random.default_rng(0), fast_settings(crop_size=16))
    assert inputs.shape == targets.shape == (2, 3, 16, 16)
    torch.testing.assert_close(inputs, targets, atol=1e-5, rtol=0)
    blurred, sharp = DegradedTask(task_for(clean_photos()), MotionBlur()).sample(
        np.random.default_rng(0), fast_settings(crop_size=16)
    )
    assert float((blurred - sharp).abs().mean()) > 0.01


def test_a_blur_may_tell_the_network_its_path() -> None:
    task = DegradedTask(task_for(clean_photos()), MotionBlur(tell_path=True, sharp=0.0))
    assert (task.in_channels, task.out_channels) == (3 + PATH_CODE_CHANNELS, 3)
    assert task.network_spec(fast_settings()).in_channels == 3 + PATH_CODE_CHANNELS
    inputs, targets = task.sample(np.random.default_rng(0), fast_settings(crop_size=16))
    assert inputs.shape == (2, 3 + PATH_CODE_CHANNELS, 16, 16) and targets.shape == (2, 3, 16, 16)
    codes = inputs[:, 3:]
    torch.testing.assert_close(codes, codes[:, :, :1, :1].expand_as(codes))  # constant maps
    assert 5 / 16 <= float(codes[0, 2, 0, 0]) <= 15 / 16  # the length channel
    # a path and the same path walked backwards blur alike, and have one code
    torch.testing.assert_close(path_code(9.0, 0.4, 1.2), path_code(9.0, 0.4 + math.pi, -1.2))
    torch.testing.assert_close(
        torch.from_numpy(motion_kernel(9.0, angle=0.4, turn=1.2, size=13)),
        torch.from_numpy(motion_kernel(9.0, angle=0.4 + math.pi, turn=-1.2, size=13)),
        atol=1e-3,  # the path is sampled at 72 points: walked backwards, they fall a little apart
        rtol=0,
    )


def test_validation_crops_are_degraded_the_same_every_time() -> None:
    task = DegradedTask(task_for(clean_photos()), SensorNoise())
    settings = fast_settings(crop_size=16, validation_crops=3)
    first, second = task.validation_set(settings), task.validation_set(settings)
    assert len(first) == 2 and first[0][0].shape == (2, 3, 16, 16)
    for (a, _), (b, _) in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    assert task.describe()["degradation"]["kind"] == "sensor_noise"


def test_degradations_are_for_image_jobs_only() -> None:
    image = np.zeros((3, 8, 8), np.float32)
    images = LabelledImages(
        "label",
        [LabelledImage(image=image, target=0), LabelledImage(image=image, target=1)],
        classes=("a", "b"),
    )
    with pytest.raises(ConfigError, match="applies to image jobs, not label jobs"):
        DegradedTask(task_for(images), SensorNoise())


# -- networks and the trainer --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["restoration", "dncnn"])
@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_restoration_networks_keep_the_frame_and_start_as_the_identity(
    kind: str, size: str
) -> None:
    spec = NetworkSpec(kind=kind, size=size, in_channels=3, out_channels=3)
    network = build_network(spec)
    multiple = network_size_multiple(spec)
    assert int(getattr(network, "multiple", 1)) == multiple
    x = torch.rand(1, 3, 2 * multiple, 3 * multiple)
    with torch.inference_mode():
        torch.testing.assert_close(network(x), x)


def test_restoration_networks_need_matching_channels() -> None:
    with pytest.raises(ConfigError, match="'restoration' network needs at least as many input"):
        NetworkSpec(kind="restoration", size="small", in_channels=1, out_channels=3)
    with pytest.raises(ConfigError, match="'dncnn' network needs as many output channels"):
        NetworkSpec(kind="dncnn", size="small", in_channels=4, out_channels=3)


def test_a_restoration_network_may_be_told_more_than_the_image() -> None:
    spec = NetworkSpec(kind="restoration", size="small", in_channels=8, out_channels=3)
    network = build_network(spec)
    x = torch.rand(2, 8, 16, 24)
    with torch.inference_mode():
        torch.testing.assert_close(network(x), x[:, :3])  # the identity on the image at first


def test_a_trainer_trains_another_network_on_degraded_photos(tmp_path: Path) -> None:
    settings = fast_settings(crop_size=16, steps=4, checkpoint_interval=2)
    blur = MotionBlur(lengths=(3.0, 5.0))
    trainer = Trainer(
        clean_photos(), settings, job_dir=tmp_path / "a", network=RESTORATION, degradation=blur
    )
    trainer.run(2)
    assert trainer.network_spec == RESTORATION
    assert type(trainer.network).__name__ == "RestorationUNet"
    again = Trainer(
        clean_photos(), settings, job_dir=tmp_path / "b", network=RESTORATION, degradation=blur
    )
    again.run()
    resumed = Trainer.resume(tmp_path / "a", clean_photos(), degradation=blur)
    assert resumed.step_count == 2 and resumed.network_spec == RESTORATION
    resumed.run()
    for name, value in again.network.state_dict().items():  # seeded: the same bits
        assert torch.equal(value, resumed.network.state_dict()[name]), name
    with pytest.raises(ConfigError, match=r"trained with degradation .*same one"):
        Trainer.resume(tmp_path / "a", clean_photos())
    with pytest.raises(ConfigError, match="trained with degradation"):
        Trainer.resume(tmp_path / "a", clean_photos(), degradation=MotionBlur())


@pytest.mark.parametrize(
    ("network", "crop", "message"),
    [
        (
            NetworkSpec(kind="unet", size="small", in_channels=3, out_channels=3),
            16,
            "kind .unet. cannot",
        ),
        (NetworkSpec(kind="dncnn", size="small", in_channels=1, out_channels=1), 16, "takes 1"),
        (NetworkSpec(kind="restoration", size="large", in_channels=3, out_channels=3), 24, "16"),
    ],
)
def test_another_network_must_fit_the_data(
    tmp_path: Path, network: NetworkSpec, crop: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Trainer(clean_photos(), fast_settings(crop_size=crop), job_dir=tmp_path, network=network)


def test_gradient_clipping_is_a_setting_that_limits_each_step(tmp_path: Path) -> None:
    assert fast_settings(gradient_clip=1).gradient_clip == 1.0
    assert fast_settings().gradient_clip is None
    for wrong in (0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ConfigError, match="'gradient_clip'"):
            fast_settings(gradient_clip=wrong)
    moved = {}
    for clip in (None, 1e-9):
        settings = fast_settings(crop_size=16, steps=1, learning_rate=0.01, gradient_clip=clip)
        trainer = Trainer(
            clean_photos(),
            settings,
            job_dir=tmp_path / str(clip),
            network=RESTORATION,
            degradation=SensorNoise(),
        )
        before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
        trainer.run()
        after = trainer.network.state_dict()
        moved[clip] = max(float((after[k] - before[k]).abs().max()) for k in before)
    # Adam's first step moves each weight by about the learning rate whatever the gradient's
    # size, except where clipping made the gradient vanish against Adam's epsilon
    assert moved[1e-9] < moved[None] / 10
