"""Process-wide memory allocator tuning for serving big frames.

Every request allocates frame-sized buffers (25 MB for 1080p RGB float, 100 MB for 4K). With
glibc's defaults, such blocks are returned to the kernel when freed, and the next request pays
for page faults on fresh memory again — as much time as copying the frame. The server calls
:func:`tune_allocator` once at start-up to keep freed blocks for reuse, and its model worker
processes do the same when it did (:func:`allocator_tuned`). It is a no-op where the C library
is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["allocator_tuned", "tune_allocator"]

log = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Freed memory kept for reuse before any is handed back to the kernel.
KEEP_FREED_BYTES = 1 << 30
#: Blocks up to this size come from the reusable heap (glibc's ceiling on 64-bit systems).
HEAP_BLOCK_BYTES = 32 << 20
ARENAS = 2

_tuned = False


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has tuned this process's allocator."""
    return _tuned


def tune_allocator() -> bool:
    """Ask glibc to keep freed frame buffers for reuse; return whether it could."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_TRIM_THRESHOLD, KEEP_FREED_BYTES),
            (_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES),
            (_M_ARENA_MAX, ARENAS),
        )
    )
    log.debug("allocator tuned for frame buffers: %s", ok)
    global _tuned
    _tuned = _tuned or ok
    return ok
