"""What a training job learns from, and what its record keeps to read it again.

::

    files, data = read_job_data(pairs, validation, folder=job_folder, uploads=store)
    data = reread_job_data(files)          # after a restart, before the first checkpoint

A job learns from one of:

- ``(input, target)`` pairs of image files (:data:`PathPairs`), each a path the server reads
  or an upload (:class:`~frameserve.training.uploads.UploadedFrame`); an upload is linked into the
  job folder (``frames/ID/NAME``), so the job keeps it after the upload ages out;
- a :class:`LabelSource`: a folder of class folders (a label job) or a table of file → value
  (a number job), read by :mod:`frameserve.training.labels`;
- arrays (:class:`~frameserve.training.ImagePairs`,
  :class:`~frameserve.training.LabelledImages`), which are not kept across a restart.

The record (``files``) is plain JSON: ``{"kind": "image", "train": [[in, target], ...],
"validation": [...]}`` with the paths the job reads, ``{"kind": "label" | "number", "path",
"validation"}``, or ``None`` for arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from frameserve.errors import ConfigError
from frameserve.training import ImagePairs, LabelledImages
from frameserve.training.kinds import JobKind
from frameserve.training.uploads import UploadedFrame, UploadStore

__all__ = [
    "FRAMES_FOLDER",
    "FrameSource",
    "JobData",
    "LabelSource",
    "PathPairs",
    "read_job_data",
    "reread_job_data",
]

#: Where a job keeps the uploaded frames it names, in its job folder.
FRAMES_FOLDER = "frames"

#: An image file a job reads: a path the server can read, or an upload.
FrameSource: TypeAlias = str | os.PathLike[str] | UploadedFrame
#: ``(input, target)`` image files.
PathPairs: TypeAlias = Sequence[tuple[FrameSource, FrameSource]]


@dataclass(frozen=True)
class LabelSource:
    """The files of a label or number job, as the server reads them.

    ``LabelSource("label", "shots/")``: a folder of class folders (``shots/day/*.exr``...);
    ``LabelSource("number", "focus/values.csv")``: a CSV or JSON table of file → value.
    ``validation`` is another folder or table of the same kind.
    """

    kind: str
    path: str
    validation: str | None = None

    def read(self) -> LabelledImages:
        """Read the images and their labels or values.

        Raises:
            ConfigError: an unknown kind, or files that do not make a job.
            ImageIOError: an unreadable image.
        """
        if self.kind == JobKind.LABEL:
            return LabelledImages.from_class_folders(self.path, validation_folder=self.validation)
        if self.kind == JobKind.NUMBER:
            return LabelledImages.from_value_table(self.path, validation_table=self.validation)
        raise ConfigError(f"job kind {self.kind!r} is not allowed; choose 'label' or 'number'")


#: Everything a job may be given to learn from.
JobData: TypeAlias = PathPairs | ImagePairs | LabelledImages | LabelSource


def read_job_data(
    data: JobData, validation: PathPairs, *, folder: Path, uploads: UploadStore
) -> tuple[dict[str, Any] | None, ImagePairs | LabelledImages]:
    """Read what a new job learns from; return what its record keeps and the data.

    Uploads are linked into ``folder`` first and read from there.

    Raises:
        ConfigError: no pairs, or files that do not make a job.
        ImageIOError: an unreadable frame.
        UploadNotFoundError: an upload that is not stored.
    """
    if isinstance(data, ImagePairs | LabelledImages):
        return None, data
    if isinstance(data, LabelSource):
        source = {"kind": str(data.kind), "path": data.path, "validation": data.validation}
        return source, data.read()
    if not data:
        raise ConfigError("a training job needs at least one (input, target) pair")

    def path(frame: FrameSource) -> str:
        if isinstance(frame, UploadedFrame):
            return str(uploads.claim(frame.id, folder / FRAMES_FOLDER))
        return os.fspath(frame)

    files = {
        "kind": JobKind.IMAGE.value,
        "train": [[path(a), path(b)] for a, b in data],
        "validation": [[path(a), path(b)] for a, b in validation],
    }
    return files, reread_job_data(files)


def reread_job_data(files: dict[str, Any]) -> ImagePairs | LabelledImages:
    """Read a job's data again from what its record keeps (``files``, not ``None``).

    Raises:
        ConfigError: files that no longer make a job.
        ImageIOError: a frame that is gone or unreadable.
    """
    kind = files.get("kind", JobKind.IMAGE)
    if kind == JobKind.IMAGE:
        return ImagePairs.from_files(
            [(a, b) for a, b in files["train"]], [(a, b) for a, b in files["validation"]]
        )
    return LabelSource(kind, files["path"], files.get("validation")).read()
