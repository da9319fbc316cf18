"""Batch work's lower CPU priority stays with batch work: a process-wide native thread pool
(OpenCV's) started at normal priority is not lowered by a batch thread that uses it first.

Each case runs in a fresh interpreter (a pool, once started, lives as long as its process).
Linux only, as the server's priorities are (``nice`` is per thread there).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import os, sys, threading
    import cv2, numpy as np
    from frameserve.engine.niceness import lower_thread_priority, start_native_pools

    if sys.argv[1] == "started":
        start_native_pools()

    def batch():
        lower_thread_priority()
        cv2.resize(np.zeros((512, 512), np.float32), (256, 256))  # uses OpenCV's pool

    thread = threading.Thread(target=batch)
    thread.start()
    thread.join()
    nices = []
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        stat = open(f"/proc/{os.getpid()}/task/{tid}/stat").read()
        nices.append(int(stat.rsplit(")", 1)[1].split()[16]))
    print(cv2.getNumThreads(), len(nices), max(nices))
    """
)


def probe(mode: str) -> tuple[int, int, int]:
    """OpenCV's thread count, this process's threads and their highest niceness after a
    lowered thread used OpenCV (``mode``: whether the pool was started first)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    numbers = done.stdout.split()
    return int(numbers[0]), int(numbers[1]), int(numbers[2])


def test_a_pool_started_first_keeps_normal_priority_after_batch_work() -> None:
    cv_threads, threads, highest = probe("started")
    assert cv_threads >= 2 and threads >= 2  # a pool to speak of
    assert highest == 0, "a thread of OpenCV's pool runs at the batch priority"


def test_without_it_a_batch_thread_would_lower_the_whole_pool() -> None:
    """The trap the function exists for (so the test above can fail)."""
    _, _, highest = probe("not started")
    assert highest > 0
