"""Frame files uploaded for training jobs: checked, stored atomically, claimed, aged out.

An artist whose frames are not on a disk the server reads uploads them, one image file per
request, then names them in a training job by id::

    store = UploadStore("~/.frameserve/jobs/.uploads")
    upload = store.put(data, "plate.1001.exr")     # the file's bytes and its name
    upload.id                                      # '5f0c...': 32 hex digits of its SHA-256
    path = store.claim(upload.id, job_folder / "frames")   # the job's own copy
    store.prune()                                  # drop what no job claimed in max_age

**Checks.** The name must be a plain file name (no folder) ending in an image extension
frameserve reads (``.exr``, ``.png``, ``.tif``/``.tiff``, ``.dpx``, ``.jpg``/``.jpeg``); the
bytes must start with that format's signature and decode completely
(:func:`frameserve.media.imageio.read_image`). Each failure is an :class:`UploadError` naming the
problem; the size cap is a :class:`~frameserve.errors.RequestTooLargeError`, and the cap on
what all unclaimed uploads hold together an :class:`StorageFullError`.

**Ids.** An upload's id is the first 32 hex digits of the SHA-256 of its bytes, so the same
file uploaded twice is stored once, and a client that hashes a file can ask whether the server
has it already (:meth:`UploadStore.get`) before sending it.

**On disk.** ``folder/ID/NAME`` holds the bytes and ``folder/ID/upload.json`` what was read
from them. An upload is staged in a hidden folder named as :mod:`frameserve.media.atomic`
names temporary files (``folder/.upload.tmp-PID-RANDOM``), its files written atomically and
flushed, checked, then renamed to ``folder/ID`` in one step: a reader (or a process killed at
any moment) sees the whole upload or none of it. :meth:`UploadStore.prune` removes the staging
folders of killed writes once they are an hour old, and the temporary files that killed writes
left in the store (:func:`~frameserve.media.atomic.remove_leftovers`).

**Lifetime.** A job that names an upload gets its own hard link to the file (a copy where the
file system has no links) in its job folder, so the job can be resumed after the upload is
gone. Uploads age out ``max_age`` seconds after their last upload (24 hours by default), and
:meth:`UploadStore.delete` removes one at once; uploads of a submission that failed or was
cancelled are thus cleaned up without anyone having to remember them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frameserve.engine.limits import DEFAULT_MAX_FRAME_BYTES, request_bytes_limit
from frameserve.errors import (
    ImageIOError,
    RequestTooLargeError,
    StorageFullError,
    UploadError,
    UploadNotFoundError,
)
from frameserve.media.atomic import (
    is_temporary,
    remove_leftovers,
    sync_folder,
    temporary_path,
    write_bytes_atomically,
)
from frameserve.media.imageio import read_image

__all__ = [
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "UPLOAD_EXTENSIONS",
    "Upload",
    "UploadStore",
    "UploadedFrame",
    "upload_id",
]

logger = logging.getLogger(__name__)

#: How long an upload no job claimed is kept after its last upload.
DEFAULT_MAX_AGE_SECONDS = 24 * 3600.0
#: The largest upload: one 8K four-channel float frame, plus room for the file's own headers.
DEFAULT_MAX_FILE_BYTES = request_bytes_limit(DEFAULT_MAX_FRAME_BYTES, 1)
#: What all uploads together may hold (about 28 uncompressed 8K RGBA float EXRs).
DEFAULT_MAX_TOTAL_BYTES = 16 << 30

#: The image signature each accepted extension must start with.
_SIGNATURES: dict[str, tuple[str, tuple[bytes, ...]]] = {
    ".exr": ("OpenEXR", (b"\x76\x2f\x31\x01",)),
    ".png": ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ".tif": ("TIFF", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ".tiff": ("TIFF", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ".dpx": ("DPX", (b"SDPX", b"XPDS")),
    ".jpg": ("JPEG", (b"\xff\xd8\xff",)),
    ".jpeg": ("JPEG", (b"\xff\xd8\xff",)),
}
#: Lower-case extensions (with the dot) an upload's name may end in.
UPLOAD_EXTENSIONS = tuple(sorted(_SIGNATURES))

_ID = re.compile(r"[0-9a-f]{32}\Z")
_FILENAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-+ ]{0,199}\Z")
_RECORD = "upload.json"
_STAGING = "upload"  # staging folders are named like temporary files: .upload.tmp-PID-RANDOM
_OLD_STAGING = ".tmp-"  # how earlier versions named staging folders
_LEFTOVER_AGE = 3600.0  # a staging folder this old is a killed write, not one in progress


@dataclass(frozen=True)
class UploadedFrame:
    """A reference to an upload, where a training job takes an image file: ``UploadedFrame(id)``."""

    id: str


@dataclass(frozen=True, kw_only=True)
class Upload:
    """One stored upload and what its image holds.

    Attributes:
        id: 32 hex digits, the start of the SHA-256 of the bytes.
        filename: the name it was uploaded under (its extension says the format).
        size: bytes.
        width / height: the image's size in pixels.
        channels: its channel names, in file order (``("R", "G", "B")``).
        uploaded: when it was last uploaded (seconds since the epoch); it ages out from then.
        path: the stored file.
    """

    id: str
    filename: str
    size: int
    width: int
    height: int
    channels: tuple[str, ...]
    uploaded: float
    path: Path

    def to_dict(self, max_age: float | None = None) -> dict[str, Any]:
        """Return JSON-ready data (``expires`` too when ``max_age`` is given; no path)."""
        data: dict[str, Any] = {
            "id": self.id,
            "filename": self.filename,
            "bytes": self.size,
            "width": self.width,
            "height": self.height,
            "channels": list(self.channels),
            "uploaded": self.uploaded,
        }
        if max_age is not None:
            data["expires"] = self.uploaded + max_age
        return data


def upload_id(data: bytes | bytearray | memoryview) -> str:
    """Return the id an upload of ``data`` gets (the first 32 hex digits of its SHA-256)."""
    return hashlib.sha256(data).hexdigest()[:32]


class UploadStore:
    """Uploaded image files in ``folder``; see the module docstring.

    Args:
        folder: where uploads live (made at the first upload).
        max_file_bytes: the largest upload.
        max_total_bytes: what all stored uploads may hold together.
        max_age: seconds an upload is kept after its last upload.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        max_age: float = DEFAULT_MAX_AGE_SECONDS,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.max_age = max_age
        self._lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview, filename: str) -> tuple[Upload, bool]:
        """Check and store one image file; return it and whether it is new.

        The same bytes uploaded again keep their id and start their age afresh.

        Raises:
            UploadError: a bad file name, no bytes, or bytes that are not a readable image of
                the format the name says.
            RequestTooLargeError: more than ``max_file_bytes``.
            StorageFullError: storing it would pass ``max_total_bytes``.
        """
        view = memoryview(data).cast("B")
        check_filename(filename)
        size = view.nbytes
        if size == 0:
            raise UploadError(f"upload {filename!r} is empty: send the image file's bytes")
        if size > self.max_file_bytes:
            raise RequestTooLargeError(
                f"upload {filename!r} is {size} bytes, above the limit of "
                f"{self.max_file_bytes} bytes"
            )
        _check_signature(view, filename)
        identity = upload_id(view)
        self.prune()
        with self._lock:
            existing = self._refresh(identity)
        if existing is not None:
            return existing, False
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = temporary_path(self.folder / _STAGING)
        staging.mkdir()
        try:
            path = staging / filename
            write_bytes_atomically(path, view)
            width, height, channels = _decode(path, filename)
            record = {"filename": filename, "size": size, "width": width, "height": height}
            record.update(channels=list(channels), uploaded=time.time())
            write_bytes_atomically(staging / _RECORD, json.dumps(record).encode())
            with self._lock:
                existing = self._refresh(identity)
                if existing is not None:  # the same bytes arrived meanwhile
                    return existing, False
                shutil.rmtree(self.folder / identity, ignore_errors=True)  # a broken record
                used = sum(upload.size for upload in self.uploads())
                if used + size > self.max_total_bytes:
                    raise StorageFullError(
                        f"uploads waiting for training jobs hold {used} bytes; {filename!r} "
                        f"({size} bytes) would pass the limit of {self.max_total_bytes} bytes: "
                        "submit or delete the uploads first (they also age out after "
                        f"{self.max_age / 3600:g} h)"
                    )
                os.rename(staging, self.folder / identity)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        sync_folder(self.folder)
        logger.info("upload %s: %s (%d bytes, %dx%d)", identity, filename, size, width, height)
        return self.get(identity), True

    def delete(self, identity: str) -> None:
        """Remove upload ``identity`` (jobs that claimed it keep their own copy).

        Raises:
            UploadNotFoundError: no such upload.
        """
        upload = self.get(identity)
        hidden = temporary_path(self.folder / _STAGING)
        with self._lock:
            try:
                os.rename(upload.path.parent, hidden)  # gone at once, however long the delete
            except FileNotFoundError:
                raise _not_found(identity) from None
        shutil.rmtree(hidden, ignore_errors=True)

    def claim(self, identity: str, folder: str | os.PathLike[str]) -> Path:
        """Give a job its own link to upload ``identity``: ``folder/ID/NAME``; return the path.

        A hard link shares the bytes and survives the upload's removal; where the file system
        has none, the file is copied.

        Raises:
            UploadNotFoundError: no such upload.
        """
        upload = self.get(identity)
        target = Path(folder) / upload.id / upload.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(upload.path, target)
            except FileNotFoundError:
                raise _not_found(identity) from None
            except OSError:
                shutil.copyfile(upload.path, target)
        return target

    def prune(self, now: float | None = None) -> int:
        """Remove uploads older than ``max_age``, and leftovers of killed writes (and uploads
        whose record cannot be read) an hour old; return how many uploads went."""
        now = time.time() if now is None else now
        removed = 0
        for upload in self.uploads():
            if now - upload.uploaded > self.max_age:
                with contextlib.suppress(UploadNotFoundError):
                    self.delete(upload.id)
                    removed += 1
                    logger.info("upload %s (%s) aged out", upload.id, upload.filename)
        stored = {upload.id for upload in self.uploads()}
        remove_leftovers(self.folder, recursive=True)
        for leftover in _children(self.folder, "*"):
            killed_write = is_temporary(leftover) or leftover.name.startswith(_OLD_STAGING)
            unreadable = bool(_ID.match(leftover.name)) and leftover.name not in stored
            if not (killed_write or unreadable):
                continue
            with contextlib.suppress(OSError):
                if now - leftover.stat().st_mtime > _LEFTOVER_AGE:
                    shutil.rmtree(leftover, ignore_errors=True)
        return removed

    # -- reading -------------------------------------------------------------------------------

    def get(self, identity: str) -> Upload:
        """Return upload ``identity``.

        Raises:
            UploadNotFoundError: no such upload (or an id that cannot be one).
        """
        if not isinstance(identity, str) or not _ID.match(identity):
            raise UploadNotFoundError(
                f"{identity!r} is not an upload id; ids are 32 lower-case hex digits"
            )
        upload = _read(self.folder / identity)
        if upload is None:
            raise _not_found(identity)
        return upload

    def uploads(self) -> list[Upload]:
        """Return every stored upload, oldest first."""
        found = [_read(folder) for folder in _children(self.folder, "*") if _ID.match(folder.name)]
        return sorted((u for u in found if u is not None), key=lambda u: u.uploaded)

    def _refresh(self, identity: str) -> Upload | None:
        """Restart the age of upload ``identity`` if it is stored; return it.

        The caller holds the lock, so the upload is not deleted between the read and the
        write (which would make its folder again, holding only the record).
        """
        folder = self.folder / identity
        record = folder / _RECORD
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            data["uploaded"] = time.time()
            write_bytes_atomically(record, json.dumps(data).encode())
        except (OSError, ValueError):
            return None
        return _read(folder)


def check_filename(filename: object) -> str:
    """Return ``filename`` if an upload may be called so.

    Raises:
        UploadError: not a plain file name with an image extension.
    """
    if not isinstance(filename, str) or not filename:
        raise UploadError(
            "an upload needs its file name (?filename=plate.1001.exr): the extension says the "
            "format"
        )
    if "/" in filename or "\\" in filename or not _FILENAME.match(filename):
        raise UploadError(
            f"upload file name {filename!r} is not allowed; use a plain file name (no folder) "
            "of up to 200 letters, digits, spaces and '_ . - +', starting with a letter, digit "
            "or '_'"
        )
    extension = os.path.splitext(filename)[1].lower()
    if extension not in _SIGNATURES:
        raise UploadError(
            f"upload file name {filename!r} does not end in an image extension frameserve reads; "
            f"use one of {', '.join(UPLOAD_EXTENSIONS)}"
        )
    return filename


def _check_signature(view: memoryview, filename: str) -> None:
    extension = os.path.splitext(filename)[1].lower()
    format_name, signatures = _SIGNATURES[extension]
    head = bytes(view[:8])
    if not any(head.startswith(signature) for signature in signatures):
        expected = " or ".join(signature.hex(" ") for signature in signatures)
        article = "an" if format_name == "OpenEXR" else "a"
        raise UploadError(
            f"upload {filename!r} is not {article} {format_name} file: {format_name} files "
            f"start with the bytes {expected}, these start with "
            f"{head[: len(signatures[0])].hex(' ') or '-'}"
        )


def _decode(path: Path, filename: str) -> tuple[int, int, tuple[str, ...]]:
    """Read the whole image (every pixel) to be sure it is usable; return its size."""
    try:
        image = read_image(path)
    except ImageIOError as exc:
        reason = str(exc).replace(f"cannot read image {str(path)!r}: ", "")
        raise UploadError(f"upload {filename!r} cannot be read as an image: {reason}") from None
    _, height, width = image.pixels.shape
    return int(width), int(height), image.channel_names


def _read(folder: Path) -> Upload | None:
    try:
        data = json.loads((folder / _RECORD).read_text(encoding="utf-8"))
        return Upload(
            id=folder.name,
            filename=str(data["filename"]),
            size=int(data["size"]),
            width=int(data["width"]),
            height=int(data["height"]),
            channels=tuple(str(name) for name in data["channels"]),
            uploaded=float(data["uploaded"]),
            path=folder / str(data["filename"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _not_found(identity: str) -> UploadNotFoundError:
    return UploadNotFoundError(
        f"no upload has id {identity!r} (never uploaded, deleted, or aged out): upload the "
        "file again"
    )


def _children(folder: Path, pattern: str) -> Iterator[Path]:
    return folder.glob(pattern) if folder.is_dir() else iter(())
