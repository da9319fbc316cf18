"""Atomic writes: a file appears complete under its name, or not at all.

Every file frameserve writes for keeps (frames of a shot, checkpoints, job records, uploads,
packages) is written under a hidden temporary name beside its target, flushed, and renamed
onto the target (``os.replace``, atomic on POSIX and Windows). A failure or an interrupt
removes the temporary file and leaves the target as it was.

::

    write_bytes_atomically(Path("job/queue.json"), text.encode())

    with atomic_path(Path("out/soft.1001.exr")) as temporary:
        some_library.save(temporary)          # anything that writes a file by its name

**Temporary names** are ``.NAME.tmp-PID-RANDOM.EXT``: hidden, with the writer's process id,
keeping the extension (so libraries that pick a format by extension still do). A process that
is killed mid-write cannot remove its own temporary file; :func:`remove_leftovers` removes
those whose writer is no longer running, so the next run (or server start) in that folder
cleans up after a killed one, while writes of other live processes are left alone.

**Signals.** An interrupt (``KeyboardInterrupt``, or a ``SIGTERM`` turned into one by the
command line) removes the temporary file of a write in progress on the main thread.
Temporary files of writes in progress on other threads are removed by
:func:`remove_pending`, which the command line calls when it stops on a signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_path",
    "is_temporary",
    "remove_leftovers",
    "remove_pending",
    "temporary_path",
    "write_atomically",
    "write_bytes_atomically",
]

log = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"\A\..+\.tmp-(?P<pid>[0-9]+)-[0-9a-f]{12}(\.[^.]*)?\Z")
_pending: set[Path] = set()
_pending_lock = threading.Lock()


def temporary_path(path: Path) -> Path:
    """Return a fresh hidden temporary name beside ``path`` (same extension)."""
    token = secrets.token_hex(6)
    return path.parent / f".{path.stem}.tmp-{os.getpid()}-{token}{path.suffix}"


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named like a temporary file of an atomic write."""
    return _TEMPORARY.match(path.name) is not None


@contextlib.contextmanager
def atomic_path(path: Path, *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends, rename it onto ``path``.

    The block writes the temporary file by its name (any library will do). If the block
    raises, or the file is not there when it ends, the temporary file is removed and ``path``
    is left as it was. ``sync`` flushes the file and the folder entry to disk first (for
    files that must survive a power cut, such as checkpoints; frames of a shot can skip it).

    Raises:
        OSError: the folder cannot be made or the rename failed (after cleaning up).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    with _pending_lock:
        _pending.add(temporary)
    try:
        yield temporary
        if sync:
            _sync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    finally:
        with _pending_lock:
            _pending.discard(temporary)
    if sync:
        _sync_folder(path.parent)


def write_atomically(
    path: Path, write: Callable[[IO[bytes]], object], *, sync: bool = True
) -> None:
    """Call ``write`` on a binary stream of a temporary file, then rename it onto ``path``.

    See :func:`atomic_path`; the stream is flushed (and synced, with ``sync``) before the
    rename.
    """
    with atomic_path(path, sync=sync) as temporary, open(temporary, "wb") as stream:
        write(stream)


def write_bytes_atomically(
    path: Path, data: bytes | bytearray | memoryview, *, sync: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    write_atomically(path, lambda stream: stream.write(data), sync=sync)


def remove_leftovers(folder: Path, *, recursive: bool = False) -> int:
    """Remove temporary files in ``folder`` whose writing process is gone; return how many.

    Files of processes still running (another ``frameserve run`` writing into the same
    folder) are kept. Never raises: a folder that cannot be read has nothing to remove.
    """
    removed = 0
    try:
        candidates = folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*")
        for candidate in candidates:
            match = _TEMPORARY.match(candidate.name)
            if match is None or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed += 1
    except OSError:
        return removed
    if removed:
        log.info("removed %d temporary file(s) of killed writes in %s", removed, folder)
    return removed


def remove_pending() -> int:
    """Remove the temporary files of writes in progress in this process; return how many.

    For a command stopping on a signal while worker threads write: their files would
    otherwise outlive the process.
    """
    with _pending_lock:
        pending = list(_pending)
    removed = 0
    for temporary in pending:
        with contextlib.suppress(OSError):
            temporary.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: keep it)
    return True


def _sync_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "rb+") as stream:
        os.fsync(stream.fileno())
    if not path.exists():
        raise FileNotFoundError(f"nothing was written to {str(path)!r}")


def _sync_folder(folder: Path) -> None:
    """Flush the folder entry of a rename to disk (where the system allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
