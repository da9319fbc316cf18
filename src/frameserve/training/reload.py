"""Reading a job's training data again from the files its checkpoint lists (for resuming)."""

from __future__ import annotations

import logging
from typing import Any

from frameserve.errors import ConfigError
from frameserve.media.imageio import read_image
from frameserve.training.data import FramePair, ImagePairs
from frameserve.training.kinds import JobKind
from frameserve.training.labels import LabelledImage, LabelledImages

__all__ = ["reload_data"]

logger = logging.getLogger(__name__)


def reload_data(task: dict[str, Any]) -> ImagePairs | LabelledImages:
    """Return the data described by a checkpoint's ``task`` entry, read from its files.

    Each file is read with the channels it was read with the first time; the trainer then
    checks that the pixels are the same.

    Raises:
        ConfigError: a frame was given as an array, not a file (pass the data to resume).
        ImageIOError: a listed file is gone or unreadable.
    """
    frames = task["frames"]
    from_arrays = [
        f["name"]
        for f in frames
        if not (f.get("path") or (f.get("input_path") and f.get("target_path")))
    ]
    if from_arrays:
        raise ConfigError(
            f"frames {', '.join(repr(n) for n in from_arrays[:5])} were given as arrays, not "
            "files: pass the data to Trainer.resume(job_dir, data)"
        )
    train = [f for f in frames if f["split"] == "train"]
    validation = [f for f in frames if f["split"] == "validation"]
    if task["kind"] == JobKind.IMAGE:
        return ImagePairs(
            [_pair(f) for f in train],
            [_pair(f) for f in validation],
            colourspace=task["colourspace"],
        )
    return LabelledImages(
        task["kind"],
        [_labelled(f) for f in train],
        [_labelled(f) for f in validation],
        classes=task["classes"],
        colourspace=task["colourspace"],
    )


def _pair(frame: dict[str, Any]) -> FramePair:
    pair = FramePair.from_files(
        frame["input_path"],
        frame["target_path"],
        channels=frame["input_channels"] or None,
        target_channels=frame["target_channels"] or None,
    )
    return FramePair(
        input=pair.input,
        target=pair.target,
        name=frame["name"],
        input_path=pair.input_path,
        target_path=pair.target_path,
        input_channels=pair.input_channels,
        target_channels=pair.target_channels,
    )


def _labelled(frame: dict[str, Any]) -> LabelledImage:
    image = read_image(frame["path"], channels=frame["channels"] or None)
    return LabelledImage(
        image.pixels,
        frame["target"],
        name=frame["name"],
        path=frame["path"],
        channels=image.channel_names,
    )
