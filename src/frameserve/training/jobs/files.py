"""The files a training job names by path: only inside the data roots, only regular files.

A client names frames, class folders and value tables by path; the server reads them only
inside the folders the TD configured (``frameserve serve --data-root DIR``; none by default,
so clients upload their frames)::

    files = JobFiles([Path("/shows/abc/plates")], max_frame_pixels=8192 * 8192)
    plate = files.file("/shows/abc/plates/in.1001.exr")   # resolved, checked, not opened yet
    files.header(plate)                                   # size and channels; pixel cap
    files.image(plate).pixels                             # decoded, (C, H, W) float32
    files.read_bytes(files.file("/shows/abc/focus.csv"), limit=1 << 20)

**The rules.** A path must be absolute: a relative one is refused, never resolved against the
server's working folder (names inside a value table are relative to the table's folder, and
given as ``base``). It is resolved with every symbolic link followed and must then lie inside
a root. A file is opened with ``O_NONBLOCK | O_NOFOLLOW`` and must be a regular file
(``fstat``): a FIFO, a device or a folder is never read, and opening a FIFO never blocks. The
decoder then reads the very file that was checked, through its open descriptor
(``/proc/self/fd/N`` where the system has it), and each open checks that the path still names
the same file (device and inode) as when it was resolved.

**One answer for every refusal.** A path that does not exist, lies outside the roots, links
out of them or is not a regular file gets the same error, ``cannot read 'NAME': no such file
in the data roots (...)``, so errors tell nothing about what exists outside them; and no error
quotes a file's contents.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from frameserve.errors import ConfigError, ImageIOError, RequestTooLargeError
from frameserve.media.image_read import ImageFile, ImageHeader, read_image, read_image_header
from frameserve.media.imageio import SUPPORTED_EXTENSIONS

__all__ = ["DataFile", "JobFiles"]

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
#: Where an open descriptor can be opened again by name (Linux); elsewhere the resolved path
#: is read, just after it was checked.
_DESCRIPTORS = Path("/proc/self/fd")
_SHOWN = 200  # characters of a client's path shown in an error
_T = TypeVar("_T")


@dataclass(frozen=True)
class DataFile:
    """A regular file a job may read.

    Attributes:
        name: the path as the client gave it (what errors show).
        path: the resolved path, inside a root.
        identity: ``(device, inode)`` when it was resolved: the same file is read once, and
            a file swapped since is refused.
        kind: what errors call it (``"image"``, ``"value table"``).
    """

    name: str
    path: Path
    identity: tuple[int, int]
    kind: str = "file"


class JobFiles:
    """Resolves, checks and reads the files one job names; see the module doc.

    Args:
        roots: the data roots: folders the job may read inside (resolved here); none: no path
            is read.
        max_frame_pixels: the largest image, in pixels, :meth:`header` lets through.
        own: folders of the job's own it may read too (its uploaded frames); errors do not
            name them.
    """

    def __init__(
        self, roots: Sequence[Path], *, max_frame_pixels: int, own: Sequence[Path] = ()
    ) -> None:
        self.roots = tuple(Path(os.path.realpath(root)) for root in roots)
        self.own = tuple(Path(os.path.realpath(folder)) for folder in own)
        self.max_frame_pixels = max_frame_pixels

    # -- resolving -----------------------------------------------------------------------------

    def file(self, name: object, *, base: Path | None = None, kind: str = "file") -> DataFile:
        """Return the regular file ``name`` names, if the job may read it.

        Args:
            base: the folder a relative ``name`` is relative to (``None``: refused).
            kind: what errors call it: ``cannot read image '...': ...``.

        Raises:
            ConfigError: not a path, relative without ``base``, or no regular file inside the
                roots (one message for all of these).
        """
        shown = f"{kind} {_shown(name)}"
        given, path = self._resolve(name, base, shown, "file")
        try:
            descriptor = os.open(path, _OPEN_FLAGS)
        except (OSError, ValueError):
            raise self._refused(shown, "file") from None
        try:
            info = os.fstat(descriptor)
        finally:
            os.close(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise self._refused(shown, "file")
        return DataFile(given, path, (info.st_dev, info.st_ino), kind)

    def folder(self, name: object, *, base: Path | None = None) -> Path:
        """Return the resolved folder ``name`` names, if the job may list it.

        Raises:
            ConfigError: not a path, relative, or no folder inside the roots.
        """
        shown = f"folder {_shown(name)}"
        _, path = self._resolve(name, base, shown, "folder")
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            raise self._refused(shown, "folder") from None
        if not stat.S_ISDIR(info.st_mode):
            raise self._refused(shown, "folder")
        return path

    def subfolders(self, folder: Path) -> list[Path]:
        """Return the folders in ``folder`` (resolved, each inside the roots), by name.

        Raises:
            ConfigError: a folder in it links out of the roots.
        """
        found = []
        for entry in _entries(folder):
            if not entry.name.startswith(".") and _is_dir(entry):
                found.append(self.folder(entry.path))
        return sorted(found, key=lambda path: path.name)

    def images_in(self, folder: Path) -> Iterator[DataFile]:
        """Yield the image files in ``folder`` (by extension, not hidden), by name.

        Raises:
            ConfigError: one links out of the roots or is not a regular file.
        """
        names = sorted(
            entry.path
            for entry in _entries(folder)
            if not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in SUPPORTED_EXTENSIONS
            and not _is_dir(entry)
        )
        for name in names:
            yield self.file(name, kind="image")

    # -- reading -------------------------------------------------------------------------------

    def read_bytes(self, file: DataFile, *, limit: int) -> bytes:
        """Return the bytes of ``file``: at most ``limit`` of them are read.

        Raises:
            ConfigError: the file is gone or changed since it was resolved.
            RequestTooLargeError: it holds more than ``limit`` bytes.
        """
        chunks: list[bytes] = []
        size = 0
        with self._opened(file) as descriptor:
            while size <= limit:
                chunk = os.read(descriptor, min(1 << 20, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(
                f"{file.kind} {_shown(file.name)} is larger than the limit of {limit} bytes"
            )
        return b"".join(chunks)

    def header(self, file: DataFile) -> ImageHeader:
        """Return ``file``'s image header (no pixel decoded), if it is within the pixel cap.

        Raises:
            ImageIOError: not an image that can be read.
            RequestTooLargeError: more than ``max_frame_pixels`` pixels.
        """
        with self._opened(file) as descriptor:
            header = self._decoding(file, descriptor, read_image_header)
        if header.pixels > self.max_frame_pixels:
            raise RequestTooLargeError(
                f"image {_shown(file.name)} is {header.width}x{header.height} ({header.pixels} "
                f"pixels), above the limit of {self.max_frame_pixels} pixels a frame "
                "(--max-frame-pixels)"
            )
        return header

    def image(self, file: DataFile) -> ImageFile:
        """Decode ``file`` (check its :meth:`header` first).

        Raises:
            ImageIOError: the pixels cannot be read.
        """
        with self._opened(file) as descriptor:
            return self._decoding(file, descriptor, read_image)

    # -- helpers -------------------------------------------------------------------------------

    def _resolve(self, name: object, base: Path | None, shown: str, what: str) -> tuple[str, Path]:
        """Return ``name`` as text and resolved, if it lies inside a root."""
        text = os.fspath(name) if isinstance(name, os.PathLike) else name
        if not isinstance(text, str):
            raise ConfigError(f"cannot read {shown}: it is not a path; give a path (a string)")
        given = text
        if not given or "\x00" in given:
            raise self._refused(shown, what)
        if not os.path.isabs(given):
            if not self.roots:
                raise self._refused(shown, what)
            if base is None:
                raise ConfigError(
                    f"cannot read {shown}: give an absolute path inside the data roots "
                    f"({self._roots_text()}); relative paths are not read"
                )
            given = os.path.join(base, given)
        try:
            path = Path(os.path.realpath(given, strict=True))
        except (OSError, RuntimeError, ValueError):
            raise self._refused(shown, what) from None
        if not any(path == root or path.is_relative_to(root) for root in self.roots + self.own):
            raise self._refused(shown, what)
        return text, path

    @contextlib.contextmanager
    def _opened(self, file: DataFile) -> Iterator[int]:
        """Open ``file`` again (never blocking), checking it is the file that was resolved."""
        try:
            descriptor = os.open(file.path, _OPEN_FLAGS)
        except (OSError, ValueError):
            raise self._refused(f"{file.kind} {_shown(file.name)}", "file") from None
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != file.identity:
                raise self._refused(f"{file.kind} {_shown(file.name)}", "file")
            yield descriptor
        finally:
            os.close(descriptor)

    @staticmethod
    def _decoding(file: DataFile, descriptor: int, read: Callable[[Path], _T]) -> _T:
        """Call ``read`` on the open file; its errors name the file as the client did."""
        by_descriptor = _DESCRIPTORS / str(descriptor)
        path = by_descriptor if _DESCRIPTORS.is_dir() else file.path
        try:
            return read(path)
        except ImageIOError as exc:
            message = str(exc).replace(repr(str(path)), _shown(file.name))
            raise ImageIOError(message) from None

    def _refused(self, shown: str, what: str) -> ConfigError:
        if not self.roots:
            return ConfigError(
                f"cannot read {shown}: this server reads no files by path (it has no data "
                "roots); upload the frames instead (POST /v2/training/uploads)"
            )
        return ConfigError(
            f"cannot read {shown}: no such {what} in the data roots ({self._roots_text()})"
        )

    def _roots_text(self) -> str:
        return ", ".join(str(root) for root in self.roots) or "none"


def _shown(name: object) -> str:
    """``name`` as errors show it: quoted, at most a few hundred characters (anything but a
    path is shown by its type only)."""
    text = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(text, str):
        return f"(a {type(text).__name__})"
    shown = repr(text)
    return shown if len(shown) <= _SHOWN else shown[:_SHOWN] + "...'"


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
