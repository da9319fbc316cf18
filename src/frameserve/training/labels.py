"""Training data for image-to-label and image-to-number jobs.

**Labels** come from a folder of class folders; the class is the subfolder's name::

    shots/
        day/    a.png b.exr ...
        night/  c.png ...

    data = LabelledImages.from_class_folders("shots", validation_folder="shots_check")

**Numbers** come from a table of file → value, a CSV file (two columns, ``file,value``; a
first row that is not a number is taken as a header) or a JSON object
(``{"a.png": 0.25, ...}``); files are found relative to the table's folder::

    data = LabelledImages.from_value_table("focus/values.csv")

Images may have any size (the network resizes them to a square of ``crop_size``) but must
all have the same channels; pass ``channels=("R", "G", "B")`` to pick them from files that
differ. Images are float32 ``(C, H, W)``, top row first, values as the files hold them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from frameserve.errors import ConfigError, FrameError, RequestTooLargeError
from frameserve.media.imageio import SUPPORTED_EXTENSIONS, read_image
from frameserve.plugin.model import SCENE_LINEAR
from frameserve.training.data import check_finite
from frameserve.training.kinds import LABEL_KINDS, JobKind

__all__ = ["LABEL_KINDS", "LabelledImage", "LabelledImages", "parse_value_table"]

logger = logging.getLogger(__name__)


FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class LabelledImage:
    """One image and what the network should say about it.

    Attributes:
        image: float32 ``(C, H, W)``.
        target: the class index (labels) or the value (numbers).
        name: shown in checkpoints (the file name, by default).
        path: the file the image was read from, if any.
        channels: the channel names read from that file.
    """

    image: FloatArray
    target: float
    name: str = ""
    path: str | None = None
    channels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or 0 in image.shape:
            shape = getattr(image, "shape", type(image).__name__)
            raise FrameError(f"image {self.name!r}: expected a (C, H, W) array, got {shape}")
        object.__setattr__(self, "image", np.ascontiguousarray(image, dtype=np.float32))
        check_finite(self.image, f"image {self.name!r}")

    def describe(self) -> dict[str, Any]:
        """Return the item as plain data (without pixels) for checkpoints."""
        digest = hashlib.blake2b(self.image.tobytes(), digest_size=12).hexdigest()
        return {
            "name": self.name,
            "path": self.path,
            "channels": list(self.channels or ()),
            "shape": list(self.image.shape),
            "target": self.target,
            "digest": digest,
        }


class LabelledImages:
    """The data of a label or number job: images with targets, and optional validation ones.

    Args:
        kind: ``"label"`` or ``"number"`` (a :class:`JobKind`).
        train / validation: the images; for labels, ``target`` is an index into ``classes``.
        classes: the class names (labels only), in index order.
        colourspace: the colourspace the images are in (the served model asks for it).

    Raises:
        ConfigError: no images, mixed channel counts, a label index past the classes, fewer
            than two classes.
    """

    def __init__(
        self,
        kind: str,
        train: Sequence[LabelledImage],
        validation: Sequence[LabelledImage] = (),
        *,
        classes: Sequence[str] = (),
        colourspace: str = SCENE_LINEAR,
    ) -> None:
        if kind not in LABEL_KINDS:
            allowed = tuple(str(known) for known in LABEL_KINDS)
            raise ConfigError(f"job kind {kind!r} is not allowed; choose one of {allowed}")
        self.kind = JobKind(kind)
        self.train = tuple(train)
        self.validation = tuple(validation)
        self.classes = tuple(classes)
        self.colourspace = colourspace
        self._description: list[dict[str, Any]] | None = None
        if not self.train:
            raise ConfigError(f"a {kind} job needs at least one training image")
        self.in_channels = int(self.train[0].image.shape[0])
        for item in (*self.train, *self.validation):
            if item.image.shape[0] != self.in_channels:
                raise ConfigError(
                    f"image {item.name!r} has {item.image.shape[0]} channels, "
                    f"{self.train[0].name!r} has {self.in_channels}: pass channels=(...) to read "
                    "the same channels from every file"
                )
        if self.kind is JobKind.LABEL:
            if len(self.classes) < 2:
                raise ConfigError(f"a label job needs at least two classes, got {self.classes}")
            for item in (*self.train, *self.validation):
                if item.target not in range(len(self.classes)):
                    raise ConfigError(
                        f"image {item.name!r}: label {item.target!r} is not a class index "
                        f"0..{len(self.classes) - 1}"
                    )
        self.out_channels = len(self.classes) if self.kind is JobKind.LABEL else 1

    @classmethod
    def from_class_folders(
        cls,
        folder: str | os.PathLike[str],
        *,
        validation_folder: str | os.PathLike[str] | None = None,
        channels: Sequence[str] | None = None,
        colourspace: str = SCENE_LINEAR,
    ) -> LabelledImages:
        """Read a label job from ``folder/CLASS/*`` (image files; classes in name order).

        The validation folder, if given, has the same layout and only known classes.
        """
        root = Path(folder)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not classes:
            raise ConfigError(
                f"{str(root)!r} holds no class folders; put each class's images in a subfolder "
                "named after the class"
            )

        def read(base: Path) -> list[LabelledImage]:
            items = []
            for class_folder in sorted(p for p in base.iterdir() if p.is_dir()):
                if class_folder.name not in classes:
                    raise ConfigError(
                        f"{str(class_folder)!r}: class {class_folder.name!r} is not one of the "
                        f"training classes {', '.join(classes)}"
                    )
                index = classes.index(class_folder.name)
                items += [_read(path, index, channels) for path in _image_files(class_folder)]
            return items

        validation = read(Path(validation_folder)) if validation_folder is not None else []
        return cls(JobKind.LABEL, read(root), validation, classes=classes, colourspace=colourspace)

    @classmethod
    def from_value_table(
        cls,
        table: str | os.PathLike[str],
        *,
        validation_table: str | os.PathLike[str] | None = None,
        channels: Sequence[str] | None = None,
        colourspace: str = SCENE_LINEAR,
    ) -> LabelledImages:
        """Read a number job from a CSV or JSON table of file → value (see the module doc)."""

        def read(path: Path) -> list[LabelledImage]:
            return [_read(path.parent / name, value, channels) for name, value in _read_table(path)]

        validation = read(Path(validation_table)) if validation_table is not None else []
        return cls(JobKind.NUMBER, read(Path(table)), validation, colourspace=colourspace)

    def describe(self) -> list[dict[str, Any]]:
        """Return every image as plain data, training images first, each with its ``split``
        (computed once)."""
        if self._description is None:
            self._description = [
                {**item.describe(), "split": split}
                for split, items in (("train", self.train), ("validation", self.validation))
                for item in items
            ]
        return self._description


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS and not p.name.startswith(".")
    )


def _read(path: Path, target: float, channels: Sequence[str] | None) -> LabelledImage:
    image = read_image(path, channels=channels)
    return LabelledImage(
        image.pixels,
        target,
        name=path.name,
        path=str(path.resolve()),
        channels=image.channel_names,
    )


def _read_table(path: Path) -> list[tuple[str, float]]:
    """Return the ``(file, value)`` rows of a CSV or JSON table."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the value table {str(path)!r}: {exc.strerror}") from exc
    return parse_value_table(data, repr(str(path)), json_table=path.suffix.lower() == ".json")


def parse_value_table(
    data: bytes, where: str, *, json_table: bool, max_rows: int | None = None
) -> list[tuple[str, float]]:
    """Return the ``(file, value)`` rows of a table's bytes (see the module doc).

    Errors name the table (``where``, as shown) and the row, never what the table holds.

    Args:
        json_table: a JSON object of file: value (else CSV, a header row allowed).
        max_rows: the most rows taken (``None``: any number).

    Raises:
        ConfigError: not UTF-8 text, not a table of file and number, or no rows.
        RequestTooLargeError: more than ``max_rows`` rows.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"value table {where} is not UTF-8 text (byte {exc.start} is not); save it as UTF-8"
        ) from None
    rows: list[tuple[object, object]]
    if json_table:
        try:
            table = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"value table {where} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                f"column {exc.colno}"
            ) from None
        except RecursionError:
            raise ConfigError(f"value table {where} is nested too deeply to be a table") from None
        if not isinstance(table, dict):
            raise ConfigError(f"value table {where} must be a JSON object of file: value")
        rows = list(table.items())
    else:
        try:
            rows = [(r[0].strip(), r[1]) for r in csv.reader(text.splitlines()) if len(r) >= 2]
        except csv.Error as exc:
            raise ConfigError(f"value table {where} is not a CSV table: {exc}") from None
        if rows and not _is_number(rows[0][1]):
            rows = rows[1:]  # a header
    if max_rows is not None and len(rows) > max_rows:
        raise RequestTooLargeError(
            f"value table {where} has {len(rows)} rows, above the limit of {max_rows}"
        )
    values: list[tuple[str, float]] = []
    for number, (name, value) in enumerate(rows, start=1):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"value table {where}, row {number}: the file name is missing")
        if not _is_number(value):
            raise ConfigError(
                f"value table {where}, row {number}: the file has no number (each row is a "
                "file and a finite number)"
            )
        values.append((name, float(value)))  # type: ignore[arg-type]
    if not values:
        raise ConfigError(f"value table {where} lists no files")
    return values


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return bool(np.isfinite(float(value)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
