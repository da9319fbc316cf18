"""The kinds of training job: what a network learns to give for an image.

An ``image`` job learns frames (image to image), a ``label`` job one class of a fixed list,
a ``number`` job one value. A kind is a :class:`str` (``JobKind.IMAGE == "image"``), so job
records, checkpoints and the HTTP API hold plain text.
"""

from __future__ import annotations

import enum

__all__ = ["LABEL_KINDS", "JobKind"]


class JobKind(enum.StrEnum):
    """What a training job's network gives for an image."""

    IMAGE = "image"
    LABEL = "label"
    NUMBER = "number"


#: The kinds learned from labelled images (:class:`~frameserve.training.LabelledImages`).
LABEL_KINDS = (JobKind.LABEL, JobKind.NUMBER)
