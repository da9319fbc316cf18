"""Deciding when requests run: the one place between the front doors and the runner.

Front doors ``submit`` a checked :class:`InferenceRequest` and wait on the returned future; they
never call the runner themselves. This first scheduler runs requests first come, first served
on a small pool of worker threads (inference releases the GIL, so the front doors keep
answering while models compute). Priorities, fairness, batching and cancellation belong here.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

from frameserve.request import InferenceRequest, InferenceResult
from frameserve.runner import Runner

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    """Runs submitted requests on ``workers`` threads, in arrival order."""

    def __init__(self, runner: Runner, *, workers: int = 2) -> None:
        self.runner = runner
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frameserve-run")

    def submit(self, request: InferenceRequest) -> Future[InferenceResult]:
        """Queue ``request``; the future holds its result or the error it raised."""
        return self._pool.submit(self.runner.run, request)

    def close(self) -> None:
        """Stop accepting work; drop what is queued and let running requests finish."""
        self._pool.shutdown(wait=False, cancel_futures=True)
