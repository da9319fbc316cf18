"""Training data for image-to-image jobs: frame pairs, random crops and fixed validation crops.

A pair is an input frame and the target the network should make of it, both float32 numpy
arrays ``(C, H, W)`` (channels first, top row first, values as they are: scene-linear values
above 1 are kept, never clipped), of the same height and width; the target may have other
channels than the input. Pairs come from arrays or from image files (through
:func:`frameserve.media.imageio.read_image`)::

    pairs = ImagePairs(
        [FramePair.from_files("plate.1001.exr", "clean.1001.exr"),
         FramePair(input=noisy, target=clean, name="shot 10, frame 1040")],
        validation=[FramePair.from_files("plate.1100.exr", "clean.1100.exr")],
        colourspace="scene_linear",
    )

``colourspace`` is the colourspace the frames are in; the served model asks for its inputs in
it (``Model.colourspace_in``) and gives outputs in it.

Training batches are random crops (:func:`sample_crops`): a pair chosen uniformly, a crop
position chosen uniformly, then the augmentation of :mod:`frameserve.training.augment`,
the same on input and target. Validation and contact sheets use fixed crops
(:func:`fixed_crops`), drawn once from their own seed, so numbers stay comparable over a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from frameserve.errors import ConfigError, FrameError
from frameserve.media.imageio import read_image
from frameserve.plugin.model import SCENE_LINEAR
from frameserve.training.augment import Augmentation

__all__ = ["FramePair", "ImagePairs", "check_finite", "fixed_crops", "sample_crops"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class FramePair:
    """One training example: an input frame and the target frame, ``(C, H, W)`` float32.

    Attributes:
        input: the frame the network gets, ``(C_in, H, W)``.
        target: what it should give, ``(C_out, H, W)``.
        name: shown in checkpoints and logs (default: the file names, or ``"pair N"``).
        input_path / target_path: the files the frames were read from, if any; a job whose
            frames all come from files resumes without being given them again.
        input_channels / target_channels: the channel names read from those files.
    """

    input: FloatArray
    target: FloatArray
    name: str = ""
    input_path: str | None = None
    target_path: str | None = None
    input_channels: tuple[str, ...] | None = None
    target_channels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        what = f"training pair {self.name or '(unnamed)'}"
        object.__setattr__(self, "input", _as_frame(self.input, f"{what}: input"))
        object.__setattr__(self, "target", _as_frame(self.target, f"{what}: target"))
        if self.input.shape[1:] != self.target.shape[1:]:
            raise FrameError(
                f"{what}: input is {self.input.shape[2]}x{self.input.shape[1]} but target is "
                f"{self.target.shape[2]}x{self.target.shape[1]}; they must be the same size"
            )

    @classmethod
    def from_files(
        cls,
        input_path: str | os.PathLike[str],
        target_path: str | os.PathLike[str],
        *,
        channels: Sequence[str] | None = None,
        target_channels: Sequence[str] | None = None,
    ) -> FramePair:
        """Read a pair from two image files (any format :func:`read_image` reads).

        Args:
            channels: channels of the input to read (``None``: all of them).
            target_channels: channels of the target (``None``: the same as ``channels``).

        Raises:
            ImageIOError: a file is missing or unreadable, or lacks a channel.
            FrameError: the two images differ in size.
        """
        source = read_image(input_path, channels=channels)
        target = read_image(target_path, channels=target_channels or channels)
        return cls(
            input=source.pixels,
            target=target.pixels,
            name=f"{Path(input_path).name} -> {Path(target_path).name}",
            input_path=str(Path(input_path).resolve()),
            target_path=str(Path(target_path).resolve()),
            input_channels=source.channel_names,
            target_channels=target.channel_names,
        )

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the pair."""
        return int(self.input.shape[1]), int(self.input.shape[2])

    def digest(self) -> str:
        """Return a short hash of both frames' shapes and values (to spot changed data)."""
        hasher = hashlib.blake2b(digest_size=12)
        for array in (self.input, self.target):
            hasher.update(repr(array.shape).encode())
            hasher.update(array.tobytes())
        return hasher.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Return the pair as plain data (without pixels) for checkpoints."""
        return {
            "name": self.name,
            "input_path": self.input_path,
            "target_path": self.target_path,
            "input_channels": list(self.input_channels or ()),
            "target_channels": list(self.target_channels or ()),
            "input_shape": list(self.input.shape),
            "target_shape": list(self.target.shape),
            "digest": self.digest(),
        }


class ImagePairs:
    """The data of an image-to-image job: training pairs, validation pairs and their colourspace.

    Raises:
        ConfigError: no training pairs, or pairs with different channel counts.
    """

    def __init__(
        self,
        train: Sequence[FramePair],
        validation: Sequence[FramePair] = (),
        *,
        colourspace: str = SCENE_LINEAR,
    ) -> None:
        self.train = tuple(_named(train, "pair"))
        self.validation = tuple(_named(validation, "validation pair"))
        self.colourspace = colourspace
        self._description: list[dict[str, Any]] | None = None
        if not self.train:
            raise ConfigError("an image job needs at least one training pair")
        first = self.train[0]
        self.in_channels = int(first.input.shape[0])
        self.out_channels = int(first.target.shape[0])
        for pair in (*self.train, *self.validation):
            if (pair.input.shape[0], pair.target.shape[0]) != (
                self.in_channels,
                self.out_channels,
            ):
                raise ConfigError(
                    f"{pair.name!r} has {pair.input.shape[0]} input and {pair.target.shape[0]} "
                    f"target channels; {first.name!r} has {self.in_channels} and "
                    f"{self.out_channels}: every pair must have the same"
                )

    @classmethod
    def from_files(
        cls,
        train: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
        validation: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]] = (),
        *,
        channels: Sequence[str] | None = None,
        target_channels: Sequence[str] | None = None,
        colourspace: str = SCENE_LINEAR,
    ) -> ImagePairs:
        """Read every ``(input_path, target_path)`` pair; see :meth:`FramePair.from_files`."""

        def read(paths: Sequence[tuple[Any, Any]]) -> list[FramePair]:
            return [
                FramePair.from_files(a, b, channels=channels, target_channels=target_channels)
                for a, b in paths
            ]

        return cls(read(train), read(validation), colourspace=colourspace)

    def check_crop_size(self, crop_size: int) -> None:
        """Raise :class:`ConfigError` unless every pair is at least ``crop_size`` high and wide."""
        small = [p for p in (*self.train, *self.validation) if min(p.size) < crop_size]
        if small:
            pair = small[0]
            raise ConfigError(
                f"training setting 'crop_size': {crop_size} is larger than {pair.name!r} "
                f"({pair.size[1]}x{pair.size[0]}); use a crop size of at most "
                f"{min(min(p.size) for p in small)} or larger frames"
            )

    def describe(self) -> list[dict[str, Any]]:
        """Return every pair as plain data, training pairs first, each with its ``split``
        (computed once: hashing big frames takes a while)."""
        if self._description is None:
            self._description = [
                {**pair.describe(), "split": split}
                for split, pairs in (("train", self.train), ("validation", self.validation))
                for pair in pairs
            ]
        return self._description


def sample_crops(
    pairs: Sequence[FramePair],
    rng: np.random.Generator,
    *,
    count: int,
    crop_size: int,
    augmentation: Augmentation,
) -> tuple[FloatArray, FloatArray]:
    """Return ``count`` random augmented crops: inputs ``(N, C_in, S, S)``, targets ``(N, C_out,
    S, S)``, with ``S = crop_size``.

    For each crop, in this order: a pair (uniformly), the top and left corner (uniformly), then
    the augmentation's transform, all drawn from ``rng``.
    """
    channels_in, channels_out = pairs[0].input.shape[0], pairs[0].target.shape[0]
    inputs = np.empty((count, channels_in, crop_size, crop_size), np.float32)
    targets = np.empty((count, channels_out, crop_size, crop_size), np.float32)
    for index in range(count):
        pair = pairs[int(rng.integers(len(pairs)))]
        height, width = pair.size
        top = int(rng.integers(height - crop_size + 1))
        left = int(rng.integers(width - crop_size + 1))
        window = (slice(None), slice(top, top + crop_size), slice(left, left + crop_size))
        transform = augmentation.draw(rng)
        inputs[index] = transform.apply(pair.input[window])
        targets[index] = transform.apply(pair.target[window])
    return inputs, targets


def fixed_crops(
    pairs: Sequence[FramePair], *, count: int, crop_size: int, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Return ``count`` crops without augmentation, spread over the pairs in turn.

    The same pairs, count, size and seed give the same crops; the caller's training generator
    is not touched.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    inputs, targets = [], []
    for index in range(count):
        pair = pairs[index % len(pairs)]
        height, width = pair.size
        top = int(rng.integers(height - crop_size + 1))
        left = int(rng.integers(width - crop_size + 1))
        window = (slice(None), slice(top, top + crop_size), slice(left, left + crop_size))
        inputs.append(pair.input[window])
        targets.append(pair.target[window])
    return np.stack(inputs), np.stack(targets)


def _as_frame(array: object, what: str) -> FloatArray:
    if not isinstance(array, np.ndarray):
        raise FrameError(f"{what}: expected a numpy array (C, H, W), got {type(array).__name__}")
    if array.ndim != 3 or 0 in array.shape:
        raise FrameError(f"{what}: expected shape (C, H, W), got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise FrameError(f"{what}: expected float values, got {array.dtype}")
    frame = np.ascontiguousarray(array, dtype=np.float32)
    check_finite(frame, what)
    return frame


def check_finite(frame: FloatArray, what: str) -> None:
    """Raise :class:`FrameError` if ``frame`` holds NaN or infinite values (they cannot be
    learnt from: the loss would become NaN)."""
    bad = frame.size - int(np.count_nonzero(np.isfinite(frame)))
    if bad:
        raise FrameError(
            f"{what}: {bad} of {frame.size} values are NaN or infinite; training needs finite "
            "values (fix or crop the plate first)"
        )


def _named(pairs: Sequence[FramePair], prefix: str) -> list[FramePair]:
    named = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, FramePair):
            raise ConfigError(f"{prefix} {index}: expected a FramePair, got {type(pair).__name__}")
        if not pair.name:
            pair = dataclasses.replace(pair, name=f"{prefix} {index}")
        named.append(pair)
    return named
