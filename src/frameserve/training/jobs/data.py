"""What a training job learns from, read within its limits, and what its record keeps.

::

    files, data = read_job_data(pairs, validation, folder=job_folder, uploads=store,
                                limits=limits)
    data = reread_job_data(files, folder=job_folder, limits=limits)   # resuming, restarted

A job learns from one of:

- ``(input, target)`` pairs of image files (:data:`PathPairs`), each a path inside the data
  roots or an upload (:class:`~frameserve.training.uploads.UploadedFrame`); an upload is linked
  into the job folder (``frames/ID/NAME``), so the job keeps it after the upload ages out;
- a :class:`LabelSource`: a folder of class folders (a label job) or a table of file → value
  (a number job), in the data roots;
- arrays (:class:`~frameserve.training.ImagePairs`,
  :class:`~frameserve.training.LabelledImages`), which are not kept across a restart.

**Limits before the work** (:class:`~frameserve.training.jobs.limits.JobLimits`). Paths are
confined to the data roots (:mod:`frameserve.training.jobs.files`). The frames a job names
are counted first (each name counts, ``max_job_frames``); a value table is read up to
``max_table_bytes`` and ``max_table_rows``; then every file's header is read, each frame
checked against ``max_frame_pixels`` and the frames' decoded size summed against
``max_job_bytes``, all before a pixel is decoded. A file named several times (the same file,
whatever the path) is decoded once and its pixels shared. ``should_stop`` is asked between
files: reading stops soon after it says so.

The record (``files``) is plain JSON: ``{"kind": "image", "train": [[in, target], ...],
"validation": [...]}`` with the paths the job reads, ``{"kind": "label" | "number", "path",
"validation"}``, or ``None`` for arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from frameserve.errors import ConfigError, RequestTooLargeError
from frameserve.training import FramePair, ImagePairs, LabelledImage, LabelledImages
from frameserve.training.jobs.files import DataFile, JobFiles
from frameserve.training.jobs.limits import JobLimits
from frameserve.training.kinds import JobKind
from frameserve.training.labels import parse_value_table
from frameserve.training.uploads import UploadedFrame, UploadStore

__all__ = [
    "FRAMES_FOLDER",
    "FrameSource",
    "JobData",
    "LabelSource",
    "PathPairs",
    "ReadingStopped",
    "check_frame_count",
    "count_named_frames",
    "read_job_data",
    "reread_job_data",
]

#: Where a job keeps the uploaded frames it names, in its job folder.
FRAMES_FOLDER = "frames"

#: An image file a job reads: a path inside the data roots, or an upload.
FrameSource: TypeAlias = str | os.PathLike[str] | UploadedFrame
#: ``(input, target)`` image files.
PathPairs: TypeAlias = Sequence[tuple[FrameSource, FrameSource]]
#: Asked between files; ``True`` stops the reading.
StopCheck: TypeAlias = Callable[[], bool]

_Frame: TypeAlias = npt.NDArray[np.float32]


class ReadingStopped(ConfigError):
    """Reading a job's files stopped because ``should_stop`` said so."""


@dataclass(frozen=True)
class LabelSource:
    """The files of a label or number job, as the server reads them.

    ``LabelSource("label", "/shows/abc/shots")``: a folder of class folders
    (``shots/day/*.exr``...); ``LabelSource("number", "/shows/abc/focus/values.csv")``: a CSV
    or JSON table of file → value. ``validation`` is another folder or table of the same kind.
    """

    kind: str
    path: str
    validation: str | None = None

    def read(self) -> LabelledImages:
        """Read the images and their labels or values here, with no data roots or limits (for
        ``frameserve train --local``: the user's own files). A server reads them with
        :func:`read_job_data` instead.

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


def count_named_frames(data: JobData, validation: PathPairs = ()) -> int:
    """Return how many image files ``data`` names (0 for a label source: counted as read)."""
    if isinstance(data, ImagePairs | LabelledImages | LabelSource):
        return 0
    return 2 * (len(data) + len(validation))


def read_job_data(
    data: JobData,
    validation: PathPairs,
    *,
    folder: Path,
    uploads: UploadStore,
    limits: JobLimits,
    owner: str | None = None,
    should_stop: StopCheck | None = None,
) -> tuple[dict[str, Any] | None, ImagePairs | LabelledImages]:
    """Read what a new job learns from, within ``limits``; return its record and the data.

    Uploads are linked into ``folder`` first and read from there.

    Args:
        owner: whose uploads the job may name (``None``: anyone's).
        should_stop: asked between files; reading stops when it says so.

    Raises:
        ConfigError: no pairs, paths outside the data roots, files that do not make a job.
        RequestTooLargeError: the job names more than a limit allows.
        ImageIOError: an unreadable frame.
        UploadNotFoundError: an upload that is not stored (or not the owner's).
    """
    if isinstance(data, ImagePairs | LabelledImages):
        return None, data
    if isinstance(data, LabelSource):
        source = {"kind": str(data.kind), "path": data.path, "validation": data.validation}
        return source, reread_job_data(
            source, folder=folder, limits=limits, should_stop=should_stop
        )
    if not data:
        raise ConfigError("a training job needs at least one (input, target) pair")
    check_frame_count(count_named_frames(data, validation), limits)

    def path(frame: FrameSource) -> str:
        if isinstance(frame, UploadedFrame):
            return str(uploads.claim(frame.id, folder / FRAMES_FOLDER, owner=owner))
        return frame if isinstance(frame, str) else os.fspath(frame)

    files = {
        "kind": JobKind.IMAGE.value,
        "train": [[path(a), path(b)] for a, b in data],
        "validation": [[path(a), path(b)] for a, b in validation],
    }
    return files, reread_job_data(files, folder=folder, limits=limits, should_stop=should_stop)


def reread_job_data(
    files: dict[str, Any],
    *,
    folder: Path,
    limits: JobLimits,
    should_stop: StopCheck | None = None,
) -> ImagePairs | LabelledImages:
    """Read a job's data again from what its record keeps (``files``, not ``None``).

    Paths must lie in the data roots, or in the job's own ``frames`` folder (its uploads).

    Raises:
        ConfigError: files that no longer make a job, or paths outside the roots.
        RequestTooLargeError: more than a limit allows.
        ImageIOError: a frame that is unreadable.
    """
    files_of_job = JobFiles(
        limits.data_roots, max_frame_pixels=limits.max_frame_pixels, own=[folder / FRAMES_FOLDER]
    )
    reader = _Reader(files_of_job, limits, should_stop)
    kind = files.get("kind", JobKind.IMAGE)
    if kind == JobKind.IMAGE:
        return reader.pairs(files["train"], files["validation"])
    if kind == JobKind.LABEL:
        return reader.class_folders(files["path"], files.get("validation"))
    if kind == JobKind.NUMBER:
        return reader.value_tables(files["path"], files.get("validation"))
    raise ConfigError(f"job kind {kind!r} is not allowed; choose 'label' or 'number'")


class _Reader:
    """Reads one job's files: resolves them all, checks the limits, then decodes each once."""

    def __init__(self, files: JobFiles, limits: JobLimits, should_stop: StopCheck | None) -> None:
        self.files = files
        self.limits = limits
        self.should_stop = should_stop or (lambda: False)

    def pairs(self, train: list[list[str]], validation: list[list[str]]) -> ImagePairs:
        check_frame_count(2 * (len(train) + len(validation)), self.limits)
        resolved = [
            [(self.files.file(a, kind="image"), self.files.file(b, kind="image")) for a, b in split]
            for split in (train, validation)
        ]
        frames = self._decode([file for split in resolved for pair in split for file in pair])

        def pair(a: DataFile, b: DataFile) -> FramePair:
            (source, source_channels), (target, target_channels) = (
                frames[a.identity],
                frames[b.identity],
            )
            return FramePair(
                input=source,
                target=target,
                name=f"{Path(a.name).name} -> {Path(b.name).name}",
                input_path=str(a.path),
                target_path=str(b.path),
                input_channels=source_channels,
                target_channels=target_channels,
            )

        return ImagePairs(
            [pair(a, b) for a, b in resolved[0]], [pair(a, b) for a, b in resolved[1]]
        )

    def class_folders(self, path: str, validation: str | None) -> LabelledImages:
        root = self.files.folder(path)
        classes = [folder.name for folder in self.files.subfolders(root)]
        if not classes:
            raise ConfigError(
                f"{path!r} holds no class folders; put each class's images in a subfolder "
                "named after the class"
            )
        counted = [0]

        def listed(base: Path) -> list[tuple[DataFile, float]]:
            items = []
            for class_folder in self.files.subfolders(base):
                if class_folder.name not in classes:
                    raise ConfigError(
                        f"class {class_folder.name!r} of the validation folder is not one of "
                        f"the training classes {', '.join(classes)}"
                    )
                index = classes.index(class_folder.name)
                for file in self.files.images_in(class_folder):
                    counted[0] += 1
                    check_frame_count(counted[0], self.limits)
                    items.append((file, float(index)))
                    self._stop_if_asked()
            return items

        train = listed(root)
        checks = listed(self.files.folder(validation)) if validation is not None else []
        return self._labelled(JobKind.LABEL, train, checks, classes)

    def value_tables(self, path: str, validation: str | None) -> LabelledImages:
        counted = [0]

        def listed(table_name: str) -> list[tuple[DataFile, float]]:
            table = self.files.file(table_name, kind="value table")
            data = self.files.read_bytes(table, limit=self.limits.max_table_bytes)
            rows = parse_value_table(
                data,
                repr(table_name),
                json_table=Path(table_name).suffix.lower() == ".json",
                max_rows=self.limits.max_table_rows,
            )
            counted[0] += len(rows)
            check_frame_count(counted[0], self.limits)
            base = Path(table_name).parent
            items = []
            for number, (name, value) in enumerate(rows, start=1):
                try:
                    items.append((self.files.file(name, base=base, kind="image"), value))
                except ConfigError:  # the message would quote the table's contents
                    raise ConfigError(
                        f"value table {table_name!r}, row {number}: the file it names cannot "
                        "be read (no such file in the data roots)"
                    ) from None
                self._stop_if_asked()
            return items

        train = listed(path)
        checks = listed(validation) if validation is not None else []
        return self._labelled(JobKind.NUMBER, train, checks, [])

    def _labelled(
        self,
        kind: JobKind,
        train: list[tuple[DataFile, float]],
        validation: list[tuple[DataFile, float]],
        classes: list[str],
    ) -> LabelledImages:
        frames = self._decode([file for file, _ in (*train, *validation)])

        def item(file: DataFile, target: float) -> LabelledImage:
            image, channels = frames[file.identity]
            name = Path(file.name).name
            return LabelledImage(image, target, name=name, path=str(file.path), channels=channels)

        return LabelledImages(
            kind,
            [item(file, target) for file, target in train],
            [item(file, target) for file, target in validation],
            classes=classes,
        )

    def _decode(
        self, files: list[DataFile]
    ) -> dict[tuple[int, int], tuple[_Frame, tuple[str, ...]]]:
        """Check every distinct file's header against the limits, then decode each once."""
        unique = {file.identity: file for file in files}
        total = 0
        for file in unique.values():
            self._stop_if_asked()
            total += self.files.header(file).decoded_bytes
            if total > self.limits.max_job_bytes:
                raise RequestTooLargeError(
                    f"the job's {len(unique)} distinct image files take more than the limit of "
                    f"{self.limits.max_job_bytes} bytes a job may hold when decoded (float32); "
                    "name fewer or smaller frames"
                )
        frames: dict[tuple[int, int], tuple[_Frame, tuple[str, ...]]] = {}
        for identity, file in unique.items():
            self._stop_if_asked()
            image = self.files.image(file)
            frames[identity] = (image.pixels, image.channel_names)
            del image  # the (H, W, C) copy goes now, not after the next file
        return frames

    def _stop_if_asked(self) -> None:
        if self.should_stop():
            raise ReadingStopped("reading the job's frames was stopped")


def check_frame_count(count: int, limits: JobLimits) -> None:
    """Raise :class:`RequestTooLargeError` if ``count`` image files pass ``max_job_frames``."""
    if count > limits.max_job_frames:
        raise RequestTooLargeError(
            f"the job names more than {limits.max_job_frames} image files, the limit of one job "
            "(each name counts, a file named twice too)"
        )
