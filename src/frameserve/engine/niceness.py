"""Lower CPU priority for batch work: one niceness, one way to apply it to a thread.

Batch requests (a farm's whole shots), the result cache's copies and a worker's or a Ray
replica's batch threads run :data:`BATCH_NICENESS` steps lower than interactive work, so an
artist's click is not slowed by them. On Linux ``nice`` is a thread's own: the calling thread
is lowered, and threads it starts afterwards (torch's OpenMP team) inherit it.

That inheritance has a trap: a library with one thread pool for the whole process (OpenCV's)
starts its threads from whichever thread calls it first. Were that a batch thread, every later
interactive call would run part of its work on those lowered threads. A process that runs
batch work therefore starts such pools first, at normal priority
(:func:`start_native_pools`).
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["BATCH_NICENESS", "lower_thread_priority", "start_native_pools"]

log = logging.getLogger(__name__)

#: How much lower (in ``nice`` steps) batch work runs than interactive work.
BATCH_NICENESS = 10


def lower_thread_priority() -> None:
    """Give the calling thread (and threads it starts later) a lower CPU priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BATCH_NICENESS)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: normal priority
        log.debug("this thread keeps normal priority: %s", exc)


def start_native_pools() -> None:
    """Start OpenCV's process-wide thread pool from the calling thread (call it at normal
    priority, before any batch thread runs), so its threads keep normal priority."""
    import cv2  # here, so that importing this module stays light
    import numpy as np

    cv2.resize(np.zeros((512, 512), np.float32), (256, 256))  # parallel: the pool starts
