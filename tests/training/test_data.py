"""Tests for frameserve.training.data and augment: pairs, crops, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frameserve.errors import ConfigError, FrameError
from frameserve.media.imageio import write_image
from frameserve.training import Augmentation, FramePair, ImagePairs
from frameserve.training.augment import Transform
from frameserve.training.data import fixed_crops, sample_crops
from tests.training.helpers import random_pair


def test_a_pair_must_have_one_size() -> None:
    with pytest.raises(FrameError, match="input is 5x4 but target is 5x3"):
        FramePair(input=np.zeros((3, 4, 5), np.float32), target=np.zeros((3, 3, 5), np.float32))


def test_a_pair_must_be_channels_first_float() -> None:
    with pytest.raises(FrameError, match=r"expected shape \(C, H, W\)"):
        FramePair(input=np.zeros((4, 5), np.float32), target=np.zeros((4, 5), np.float32))
    with pytest.raises(FrameError, match="expected float values, got uint8"):
        FramePair(input=np.zeros((3, 4, 5), np.uint8), target=np.zeros((3, 4, 5), np.float32))


def test_frames_with_nan_or_infinity_are_refused() -> None:
    frame = np.zeros((3, 4, 5), np.float32)
    frame[0, 1, 2] = np.nan
    frame[1, 0, 0] = np.inf
    with pytest.raises(FrameError, match="input: 2 of 60 values are NaN or infinite"):
        FramePair(input=frame, target=np.zeros_like(frame))


def test_every_pair_needs_the_same_channels() -> None:
    with pytest.raises(ConfigError, match="has 1 input and 1 target channels"):
        ImagePairs([random_pair(1, 20, 20), random_pair(2, 20, 20, channels=1)])
    with pytest.raises(ConfigError, match="at least one training pair"):
        ImagePairs([])


def test_target_channels_may_differ_from_the_input() -> None:
    frame = np.random.default_rng(0).random((4, 20, 24), dtype=np.float32)
    pairs = ImagePairs([FramePair(input=frame, target=frame[:1])])
    assert (pairs.in_channels, pairs.out_channels) == (4, 1)


def test_pairs_read_from_files_remember_where_they_came_from(tmp_path: Path) -> None:
    frame = np.random.default_rng(0).random((3, 18, 22), dtype=np.float32) * 2  # above 1 too
    write_image(tmp_path / "in.exr", frame)
    write_image(tmp_path / "out.exr", frame * 0.5)
    pairs = ImagePairs.from_files(
        [(tmp_path / "in.exr", tmp_path / "out.exr")], colourspace="acescg"
    )
    pair = pairs.train[0]
    np.testing.assert_array_equal(pair.input, frame)
    np.testing.assert_array_equal(pair.target, frame * 0.5)
    assert pair.input_path == str(tmp_path / "in.exr") and pair.input_channels == ("R", "G", "B")
    assert pairs.describe()[0]["split"] == "train" and pairs.colourspace == "acescg"


def test_crops_are_reproducible_and_keep_input_and_target_together() -> None:
    pairs = [random_pair(1, 37, 45), random_pair(2, 40, 33)]
    augmentation = Augmentation(flips=True, rotations=True, colour_jitter=False)

    def draw(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return sample_crops(pairs, rng, count=6, crop_size=16, augmentation=augmentation)

    inputs, targets = draw(5)
    again = draw(5)
    np.testing.assert_array_equal(inputs, again[0])
    np.testing.assert_array_equal(targets, again[1])
    assert inputs.shape == (6, 3, 16, 16) and inputs.dtype == np.float32
    gains = np.array([0.8, 1.1, 0.6], np.float32)[None, :, None, None]
    np.testing.assert_allclose(targets, inputs * gains + 0.05, rtol=1e-6)  # the look holds
    assert not np.array_equal(inputs, draw(6)[0])


def test_colour_jitter_scales_input_and_target_alike() -> None:
    frame = np.random.default_rng(0).random((3, 30, 30), dtype=np.float32)
    pairs = [FramePair(input=frame, target=frame * 3)]
    rng = np.random.default_rng(0)
    jitter = Augmentation(flips=False, rotations=False, colour_jitter=True)
    inputs, targets = sample_crops(pairs, rng, count=8, crop_size=8, augmentation=jitter)
    np.testing.assert_allclose(targets, inputs * 3, rtol=1e-5)
    assert not np.allclose(inputs.max(axis=(1, 2, 3)), inputs.max(axis=(1, 2, 3))[0])


def test_transforms_turn_and_flip_like_numpy() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(Transform(1).apply(array), np.rot90(array, 1, axes=(1, 2)))
    np.testing.assert_array_equal(Transform(0, True).apply(array), array[:, :, ::-1])
    np.testing.assert_array_equal(Transform(0, False, True).apply(array), array[:, ::-1, :])
    np.testing.assert_array_equal(Transform(gain=2.0).apply(array), array * 2)


def test_nothing_is_drawn_for_augmentations_that_are_off() -> None:
    rng = np.random.default_rng(0)
    off = Augmentation(flips=False, rotations=False, colour_jitter=False)
    assert off.draw(rng) == Transform()
    assert rng.integers(1000) == np.random.default_rng(0).integers(1000)


def test_fixed_crops_depend_only_on_their_seed() -> None:
    pairs = [random_pair(1, 37, 45)]
    first = fixed_crops(pairs, count=3, crop_size=16, seed=1)
    np.testing.assert_array_equal(first[0], fixed_crops(pairs, count=3, crop_size=16, seed=1)[0])
    assert first[0].shape == (3, 3, 16, 16)
