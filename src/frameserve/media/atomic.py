"""Atomic writes: a file appears complete under its name, or not at all.

Every file frameserve writes for keeps (frames of a shot, checkpoints, job records, uploads,
packages) is written under a hidden temporary name beside its target, flushed, and renamed
onto the target (``os.replace``, atomic on POSIX and Windows). A failure or an interrupt
removes the temporary file and leaves the target as it was.

::

    write_bytes_atomically(Path("job/queue.json"), text.encode())

    with atomic_path(Path("out/soft.1001.exr")) as temporary:
        some_library.save(temporary)          # anything that writes a file by its name

**Temporary names** are ``.NAME.tmp-HOST-PID-RANDOM.EXT``: hidden, with the writer's machine
(8 hex digits of a hash of its host name) and process id, keeping the extension (so libraries
that pick a format by extension still do). A process that is killed mid-write cannot remove
its own temporary file; :func:`remove_leftovers` removes those whose writer is no longer
running, so the next run (or server start) in that folder cleans up after a killed one, while
writes of other live processes are left alone. A process id means something on its own machine
only: in a folder that several machines write to (a render farm's shot folder on a file
server), a temporary file of another machine is removed only once it is older than
:data:`STALE_AFTER` (a write in progress keeps its file fresh). Names without a machine
(``.NAME.tmp-PID-RANDOM.EXT``, as earlier versions wrote them) count as this machine's.

**Signals.** An interrupt (``KeyboardInterrupt``, or a ``SIGTERM`` turned into one by the
command line) removes the temporary file of a write in progress on the main thread.
Temporary files of writes in progress on other threads are removed by
:func:`remove_pending`, which the command line calls when it stops on a signal.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "STALE_AFTER",
    "atomic_path",
    "is_temporary",
    "remove_leftovers",
    "remove_pending",
    "sync_folder",
    "temporary_path",
    "write_atomically",
    "write_bytes_atomically",
]

log = logging.getLogger(__name__)

#: Seconds after which a temporary file written on another machine counts as left over.
STALE_AFTER = 24 * 3600.0

_TEMPORARY = re.compile(
    r"\A\..+\.tmp-(?:(?P<host>[0-9a-f]{8})-)?(?P<pid>[0-9]+)-[0-9a-f]{12}(\.[^.]*)?\Z"
)
#: This machine in temporary names: 8 hex digits of a hash of its host name.
_HOST = hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()
_pending: set[Path] = set()
_pending_lock = threading.Lock()


def temporary_path(path: Path) -> Path:
    """Return a fresh hidden temporary name beside ``path`` (same extension)."""
    token = secrets.token_hex(6)
    return path.parent / f".{path.stem}.tmp-{_HOST}-{os.getpid()}-{token}{path.suffix}"


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
        sync_folder(path.parent)


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


def remove_leftovers(
    folder: Path, *, recursive: bool = False, stale_after: float = STALE_AFTER
) -> int:
    """Remove temporary files in ``folder`` whose writing process is gone; return how many.

    Files of processes still running on this machine (another ``frameserve run`` writing
    into the same folder) are kept; files another machine writes are kept until they are
    ``stale_after`` seconds old. Never raises: a folder that cannot be read has nothing to
    remove.
    """
    removed = 0
    try:
        candidates = folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*")
        for candidate in candidates:
            match = _TEMPORARY.match(candidate.name)
            if match is None or not _left_over(candidate, match, stale_after):
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


def _left_over(candidate: Path, match: re.Match[str], stale_after: float) -> bool:
    """Whether the temporary file ``candidate`` (its name parsed) was left by a dead writer."""
    if match["host"] in (None, _HOST):
        return not _alive(int(match["pid"]))
    try:  # another machine's: its process ids mean nothing here
        return time.time() - candidate.stat().st_mtime > stale_after
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, killed but not yet reaped, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: keep it)
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped (Linux ``/proc``; elsewhere False)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # "PID (COMMAND) STATE ...": the command may hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    return bool(fields) and fields[0] in ("Z", "X")


def _sync_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError), open(path, "rb+") as stream:
        os.fsync(stream.fileno())
    if not path.exists():
        raise FileNotFoundError(f"nothing was written to {str(path)!r}")


def sync_folder(folder: Path) -> None:
    """Flush the folder entry of a rename in ``folder`` to disk (where the system allows it).

    For a folder staged whole under a temporary name and renamed into place.
    """
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
