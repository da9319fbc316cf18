"""Shared pieces of the training tests: tiny data and fast settings (importable by children)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from frameserve.media.imageio import write_image
from frameserve.training import FramePair, ImagePairs, TrainingSettings


def fast_settings(**overrides: object) -> TrainingSettings:
    """Settings for a tiny, quick job: small network, 16-pixel crops, 2 crops a step."""
    options: dict[str, object] = {
        "network": "small",
        "crop_size": 16,
        "batch_size": 2,
        "steps": 6,
        "checkpoint_interval": 0,
        "validation_interval": 0,
        "contact_sheet_interval": 0,
    }
    options.update(overrides)
    return TrainingSettings(**options)  # type: ignore[arg-type]


def the_look(frame: np.ndarray) -> np.ndarray:
    """A simple transform to learn: a gain and an offset, per channel."""
    gains = np.array([0.8, 1.1, 0.6], np.float32)[: frame.shape[0], None, None]
    return (frame * gains + 0.05).astype(np.float32)


def random_pair(seed: int, height: int, width: int, channels: int = 3) -> FramePair:
    """A pair of random frames related by :func:`the_look`."""
    frame = np.random.default_rng(seed).random((channels, height, width), dtype=np.float32)
    return FramePair(input=frame, target=the_look(frame), name=f"random {seed}")


def small_pairs() -> ImagePairs:
    """Two training pairs of odd sizes and one validation pair."""
    return ImagePairs(
        [random_pair(1, 37, 45), random_pair(2, 40, 33)], validation=[random_pair(3, 35, 41)]
    )


#: Job settings (JSON) for a quick job on tiny frames, as a client sends them.
SETTINGS = {
    "network": "small",
    "crop_size": 32,
    "batch_size": 2,
    "checkpoint_interval": 4,
    "validation_interval": 4,
    "contact_sheet_interval": 4,
}


def write_pairs(folder: Path, count: int = 2) -> list[list[str]]:
    """Write ``count`` tiny EXR input/target pairs; return their paths."""
    pairs = []
    for index in range(count):
        frame = np.random.default_rng(index).random((3, 40, 48), dtype=np.float32)
        source, target = folder / f"in.{1001 + index}.exr", folder / f"gt.{1001 + index}.exr"
        write_image(source, frame)
        write_image(target, the_look(frame))
        pairs.append([str(source), str(target)])
    return pairs


def dead_pid() -> int:
    """Return the id of a process that has ended (as a killed writer's is)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)
