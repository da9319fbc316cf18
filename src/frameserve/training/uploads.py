"""Frame files uploaded for training jobs: checked, stored atomically, claimed, aged out.

An artist whose frames are not on a disk the server reads uploads them, one image file per
request, then names them in a training job by id::

    store = UploadStore("~/.frameserve/jobs/.uploads")
    upload, new = store.put(data, "plate.1001.exr", owner="maya")   # bytes and file name
    upload, new = store.put_stream(pieces, "plate.1001.exr")        # as they arrive
    upload.id                                      # '5f0c...': 32 hex digits of its SHA-256
    path = store.claim(upload.id, job_folder / "frames")   # the job's own copy
    store.prune()                                  # drop what no job claimed in max_age

**Checks** (:mod:`frameserve.training.upload_checks`). The name must be a plain file name (no
folder) ending in an image extension frameserve reads (``.exr``, ``.png``, ``.tif``/``.tiff``,
``.dpx``, ``.jpg``/``.jpeg``), checked before a byte is read; the bytes are written to disk as
they arrive (never held in memory), counted against the size cap as they come, and must start
with that format's signature. The stored file's header must then be within
``max_frame_pixels`` (read from the header alone, before a pixel is decoded), and every pixel
must decode (:func:`frameserve.media.image_read.verify_image`, a band of rows at a time).
Each failure is an :class:`UploadError` naming the problem; the size and pixel caps are a
:class:`~frameserve.errors.RequestTooLargeError`, and the cap on what all unclaimed uploads
hold together an :class:`StorageFullError`. Nothing of a refused upload stays on disk.

**Owners.** Each upload records who uploaded it (``owners``; ``"-"`` without authentication).
Given an ``owner``, :meth:`UploadStore.get`, :meth:`~UploadStore.uploads`,
:meth:`~UploadStore.claim` and :meth:`~UploadStore.delete` see only that owner's uploads; the
same bytes uploaded by another user add them as an owner, and a delete by one of several
owners only removes them from it.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frameserve.engine.limits import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_FRAME_PIXELS,
    request_bytes_limit,
)
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
from frameserve.media.image_read import ImageHeader, read_image_header, verify_image
from frameserve.training.upload_checks import (
    SIGNATURE_BYTES,
    UPLOAD_EXTENSIONS,
    check_filename,
    check_signature,
)

__all__ = [
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "NO_OWNER",
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

#: Who uploaded a file when the server has no authentication (the anonymous user's name).
NO_OWNER = "-"

_ID = re.compile(r"[0-9a-f]{32}\Z")
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
        owners: the users who uploaded it (not shown in :meth:`to_dict`).
    """

    id: str
    filename: str
    size: int
    width: int
    height: int
    channels: tuple[str, ...]
    uploaded: float
    path: Path
    owners: tuple[str, ...] = (NO_OWNER,)

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
        max_frame_pixels: the largest image, in pixels (checked from its header).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
        max_age: float = DEFAULT_MAX_AGE_SECONDS,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.max_age = max_age
        self.max_frame_pixels = max_frame_pixels
        self._lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------

    def put(
        self, data: bytes | bytearray | memoryview, filename: str, *, owner: str = NO_OWNER
    ) -> tuple[Upload, bool]:
        """Check and store one image file; return it and whether it is new.

        See :meth:`put_stream` (``data`` is its one piece).
        """
        return self.put_stream([data], filename, owner=owner)

    def put_stream(
        self,
        pieces: Iterable[bytes | bytearray | memoryview],
        filename: str,
        *,
        owner: str = NO_OWNER,
    ) -> tuple[Upload, bool]:
        """Check and store one image file arriving in ``pieces``; return it and whether it is new.

        The name is checked before a piece is taken; each piece is written to disk as it comes
        (the caps are checked as it arrives), and the file is checked once complete. The
        same bytes uploaded again keep their id and start their age afresh (``owner`` is
        added to its owners).

        Raises:
            UploadError: a bad file name, no bytes, or bytes that are not a readable image of
                the format the name says.
            RequestTooLargeError: more than ``max_file_bytes``, or an image of more than
                ``max_frame_pixels``.
            StorageFullError: storing it would pass ``max_total_bytes``.
            ProtocolError: the pieces themselves fail (a body cut short), as they raise it.
        """
        check_filename(filename)
        self.prune()
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = temporary_path(self.folder / _STAGING)
        staging.mkdir()
        try:
            path = staging / filename
            size, identity = self._receive(pieces, path, filename)
            with self._lock:
                existing = self._refresh(identity, owner)
            if existing is not None:
                return existing, False
            header = self._check_image(path, filename)
            record = {"filename": filename, "size": size, "width": header.width}
            record.update(height=header.height, channels=list(header.channel_names))
            record.update(uploaded=time.time(), owners=[owner])
            write_bytes_atomically(staging / _RECORD, json.dumps(record).encode())
            with self._lock:
                existing = self._refresh(identity, owner)
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
        logger.info(
            "upload %s: %s (%d bytes, %dx%d) by %s",
            identity,
            filename,
            size,
            header.width,
            header.height,
            owner,
        )
        return self.get(identity), True

    def _receive(
        self, pieces: Iterable[bytes | bytearray | memoryview], path: Path, filename: str
    ) -> tuple[int, str]:
        """Write ``pieces`` to ``path`` as they come, checking size and signature; return the
        size and the upload's id."""
        hasher = hashlib.sha256()
        head = bytearray()
        size = 0
        with open(path, "xb") as stream:
            for piece in pieces:
                view = memoryview(piece).cast("B")
                size += view.nbytes
                if size > self.max_file_bytes:
                    raise RequestTooLargeError(
                        f"upload {filename!r} is larger than allowed: above the limit of "
                        f"{self.max_file_bytes} bytes"
                    )
                if len(head) < SIGNATURE_BYTES:
                    head += view[: SIGNATURE_BYTES - len(head)]
                    if len(head) == SIGNATURE_BYTES:
                        check_signature(head, filename)
                hasher.update(view)
                stream.write(view)
            stream.flush()
            os.fsync(stream.fileno())
        if size == 0:
            raise UploadError(f"upload {filename!r} is empty: send the image file's bytes")
        check_signature(head, filename)
        return size, hasher.hexdigest()[:32]

    def _check_image(self, path: Path, filename: str) -> ImageHeader:
        """Check the stored file: its header within the pixel cap, then every pixel."""
        try:
            header = read_image_header(path)
        except ImageIOError as exc:
            raise _unreadable(exc, path, filename) from None
        if header.pixels > self.max_frame_pixels:
            raise RequestTooLargeError(
                f"upload {filename!r} is {header.width}x{header.height} ({header.pixels} "
                f"pixels), above the limit of {self.max_frame_pixels} pixels a frame"
            )
        try:
            return verify_image(path)
        except ImageIOError as exc:
            raise _unreadable(exc, path, filename) from None

    def delete(self, identity: str, *, owner: str | None = None) -> None:
        """Remove upload ``identity`` (jobs that claimed it keep their own copy).

        Given an ``owner``, only their upload: if others uploaded it too, it stays theirs.

        Raises:
            UploadNotFoundError: no such upload (of ``owner``).
        """
        upload = self.get(identity, owner=owner)
        hidden = temporary_path(self.folder / _STAGING)
        with self._lock:
            if owner is not None and upload.owners != (owner,):
                others = [name for name in upload.owners if name != owner]
                if not self._rewrite(identity, owners=others):
                    raise _not_found(identity)
                return
            try:
                os.rename(upload.path.parent, hidden)  # gone at once, however long the delete
            except FileNotFoundError:
                raise _not_found(identity) from None
        shutil.rmtree(hidden, ignore_errors=True)

    def claim(
        self, identity: str, folder: str | os.PathLike[str], *, owner: str | None = None
    ) -> Path:
        """Give a job its own link to upload ``identity``: ``folder/ID/NAME``; return the path.

        A hard link shares the bytes and survives the upload's removal; where the file system
        has none, the file is copied.

        Raises:
            UploadNotFoundError: no such upload (of ``owner``, if given).
        """
        upload = self.get(identity, owner=owner)
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

    def get(self, identity: str, *, owner: str | None = None) -> Upload:
        """Return upload ``identity`` (given an ``owner``: only if they uploaded it).

        Raises:
            UploadNotFoundError: no such upload (or an id that cannot be one); another
                owner's upload is not found either, so ids tell nothing of others' files.
        """
        if not isinstance(identity, str) or not _ID.match(identity):
            raise UploadNotFoundError(
                f"{_shown(identity)} is not an upload id; ids are 32 lower-case hex digits"
            )
        upload = _read(self.folder / identity)
        if upload is None or (owner is not None and owner not in upload.owners):
            raise _not_found(identity)
        return upload

    def uploads(self, *, owner: str | None = None) -> list[Upload]:
        """Return every stored upload (given an ``owner``: theirs), oldest first."""
        found = [_read(folder) for folder in _children(self.folder, "*") if _ID.match(folder.name)]
        return sorted(
            (u for u in found if u is not None and (owner is None or owner in u.owners)),
            key=lambda u: u.uploaded,
        )

    def _refresh(self, identity: str, owner: str) -> Upload | None:
        """Restart the age of upload ``identity`` if it is stored, with ``owner`` among its
        owners; return it (the caller holds the lock)."""
        upload = _read(self.folder / identity)
        if upload is None:
            return None
        owners = [*upload.owners, owner] if owner not in upload.owners else list(upload.owners)
        if not self._rewrite(identity, uploaded=time.time(), owners=owners):
            return None
        return _read(self.folder / identity)

    def _rewrite(self, identity: str, **changes: object) -> bool:
        """Change fields of upload ``identity``'s record; return whether it was there.

        The caller holds the lock, so the upload is not deleted between the read and the
        write (which would make its folder again, holding only the record).
        """
        record = self.folder / identity / _RECORD
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            data.update(changes)
            write_bytes_atomically(record, json.dumps(data).encode())
        except (OSError, ValueError):
            return False
        return True


def _unreadable(exc: ImageIOError, path: Path, filename: str) -> UploadError:
    reason = str(exc).replace(f"cannot read image {str(path)!r}: ", "")
    return UploadError(f"upload {filename!r} cannot be read as an image: {reason}")


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
            owners=tuple(str(name) for name in data.get("owners", [NO_OWNER])),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _not_found(identity: str) -> UploadNotFoundError:
    return UploadNotFoundError(
        f"no upload has id {identity!r} (never uploaded, deleted, or aged out): upload the "
        "file again"
    )


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:80] + "..."


def _children(folder: Path, pattern: str) -> Iterator[Path]:
    return folder.glob(pattern) if folder.is_dir() else iter(())
