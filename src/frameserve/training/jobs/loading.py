"""Reading a new job's frames off the request thread, within a time limit.

A job's frames are read and decoded by a small pool of threads (OpenImageIO releases the
interpreter lock while it decodes), never by the thread of the request that submitted it, so
the front doors keep answering while a job's frames are read. The request waits at most
``timeout`` seconds; after that it is answered with an error and the reading is told to stop
(between files) and cleaned up when it does::

    loader = JobLoader(workers=2)
    files, data = loader.run(read, timeout=120.0, cleanup=remove_job_folder)
    loader.close()

``read`` gets a ``should_stop()`` to ask between files; ``cleanup`` undoes a reading that was
given up on (it must be safe to call more than once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import TypeVar

from frameserve.errors import ConfigError, ServerBusyError

__all__ = ["JobLoader"]

_T = TypeVar("_T")


class JobLoader:
    """Runs readings of new jobs' data on ``workers`` threads; see the module doc."""

    def __init__(self, workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frameserve-read")
        self._closed = False

    def run(
        self,
        read: Callable[[Callable[[], bool]], _T],
        *,
        timeout: float,
        cleanup: Callable[[], None],
    ) -> _T:
        """Return ``read(should_stop)``, run on a reader thread; wait at most ``timeout`` s.

        A reading that raises passes its error on (it cleans up after itself). One still
        running after ``timeout`` is given up on: ``should_stop()`` says so from then (as it
        does once the loader is closed), and ``cleanup()`` runs once it ends (or at once, if
        it never started).

        Raises:
            ConfigError: the reading took longer than ``timeout`` seconds.
            ServerBusyError: the loader is closed.
        """
        lock = threading.Lock()
        state = {"given_up": False, "ended": False}

        def should_stop() -> bool:
            return state["given_up"] or self._closed

        def call() -> _T:
            try:
                return read(should_stop)
            finally:
                with lock:
                    state["ended"] = True
                    given_up = state["given_up"]
                if given_up:
                    cleanup()

        try:
            future: Future[_T] = self._pool.submit(call)
        except RuntimeError:  # closed
            cleanup()
            raise ServerBusyError("the server is shutting down; submit the job again") from None
        try:
            return future.result(timeout)
        except CancelledError:  # closed while it waited
            cleanup()
            raise ServerBusyError("the server is shutting down; submit the job again") from None
        except TimeoutError:
            with lock:
                if not state["ended"]:
                    state["given_up"] = True
            if not state["given_up"]:  # it ended just now: its answer stands
                return future.result()
            if future.cancel():  # it never started: nothing else will clean up
                cleanup()
            raise ConfigError(
                f"reading the job's frames took longer than {timeout:g} s, the limit "
                "(--decode-timeout); name fewer or smaller frames, or try again when the "
                "server is less busy"
            ) from None

    def close(self) -> None:
        """Stop taking readings: those waiting are dropped and those under way told to stop
        (their requests are answered)."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
