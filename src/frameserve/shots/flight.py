"""Frames in flight: the loop ``frameserve run`` and ``frameserve retime`` share, its report
and whom it tells how it goes.

:func:`fly` keeps ``jobs`` frames in flight on worker threads, each made by one call of the
command's own ``make`` (read, compute, write). A failed frame is logged with its number and
error and the loop goes on; it stops early when ``stop_after`` frames in a row failed, or at
once on an error no frame can get past (an unknown model or knob, a model that cannot set up,
a missing file the checks let through). Ctrl-C (or any exception) stops at once: ``stop`` is
set, so frames in flight write nothing more, and frames not started are left for the next run.
Progress goes to a :class:`RunProgress` (the command line draws a progress line); this layer
draws nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from frameserve.engine.failures import describe_error
from frameserve.errors import (
    ColourError,
    ConfigError,
    KnobError,
    ModelLoadError,
    ModelNotFoundError,
    ModelSetupError,
)

__all__ = ["PROGRESS_INTERVAL", "RunEnd", "RunProgress", "RunReport", "fly"]

log = logging.getLogger(__name__)

#: Seconds between two :meth:`RunProgress.update` calls while frames are in flight (at most).
PROGRESS_INTERVAL = 0.25

# Errors that every frame would hit alike: the run stops at the first one.
_FATAL_ERRORS = (
    ConfigError,
    ModelNotFoundError,
    KnobError,
    ColourError,
    ModelLoadError,
    ModelSetupError,
)

Task = TypeVar("Task")


@dataclass(kw_only=True)
class RunReport:
    """What a run did; ``exit_code`` is the command's exit status."""

    total: int
    written: list[int] = field(default_factory=list)
    existing: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def exit_code(self) -> int:
        """0 when every frame was written or skipped, 1 when any failed or the run stopped."""
        return 1 if self.failed or self.stopped_early else 0


RunEnd = Literal["done", "stopped early", "stopped", "interrupted"]
"""How a run ended: every frame tried; ``stop_after`` failures in a row; an error no frame can
get past; an interrupt (Ctrl-C, or a signal the command line turns into one)."""


class RunProgress(Protocol):
    """Whoever shows a run's progress. Every call comes from the thread running the loop.

    ::

        class Dots:
            def start(self, total, skipped): ...
            def written(self, frame): print(".", end="", flush=True)
            def failed(self, frame): print("x", end="", flush=True)
            def update(self): ...
            def finish(self, report, how): print(f" {how}")
    """

    def start(self, total: int, skipped: int) -> None:
        """The run begins: ``total`` frames, of which ``skipped`` need no work."""
        ...

    def written(self, frame: int) -> None:
        """``frame`` was written."""
        ...

    def failed(self, frame: int) -> None:
        """``frame`` failed; the run logs why right after this call (a display drawn in place
        wipes its line here, so that the message starts on a clean line)."""
        ...

    def update(self) -> None:
        """Nothing new, time passed: called at least every :data:`PROGRESS_INTERVAL` seconds."""
        ...

    def finish(self, report: RunReport, how: RunEnd) -> None:
        """The run ended; ``report`` says what it did (``report.seconds`` is set)."""
        ...


def fly(
    make: Callable[[Task], None],
    tasks: Iterable[Task],
    frame_of: Callable[[Task], int],
    report: RunReport,
    *,
    jobs: int,
    stop_after: int,
    stop: threading.Event,
    progress: RunProgress | None = None,
    name: str = "frameserve-run",
    started: float | None = None,
) -> RunReport:
    """Make every task's frame, ``jobs`` at a time on threads called ``name``; fill in
    ``report`` (written, failed, stopped early, seconds) and return it.

    ``report`` already holds the frames skipped before the loop (``existing``, ``missing``);
    ``make`` returns early once ``stop`` is set. ``started`` (a ``time.monotonic`` value, by
    default now) is when the run began, for ``report.seconds``.

    Raises:
        FrameServeError: an error no frame can get past, from the first frame that met it.
        KeyboardInterrupt: after setting ``stop``; frames in flight write nothing more.
    """
    started = time.monotonic() if started is None else started
    shown = progress if progress is not None else _NoProgress()
    shown.start(report.total, len(report.existing) + len(report.missing))
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix=name)
    pending: dict[Future[None], Task] = {}
    queue = iter(tasks)
    failures_in_a_row = 0
    try:
        while True:
            while len(pending) < jobs and not report.stopped_early:
                next_task = next(queue, None)
                if next_task is None:
                    break
                pending[pool.submit(make, next_task)] = next_task
            if not pending:
                break
            finished, _ = wait(pending, timeout=PROGRESS_INTERVAL, return_when=FIRST_COMPLETED)
            for future in finished:
                frame = frame_of(pending.pop(future))
                error = future.exception()
                if error is None:
                    report.written.append(frame)
                    shown.written(frame)
                    failures_in_a_row = 0
                    continue
                if isinstance(error, _FATAL_ERRORS) or not isinstance(error, Exception):
                    raise error  # Ctrl-C in a worker, or an error every frame would hit
                report.failed.append(frame)
                failures_in_a_row += 1
                shown.failed(frame)
                log.error("frame %d failed: %s", frame, describe_error(error))
                if stop_after and failures_in_a_row >= stop_after:
                    report.stopped_early = True
                    log.error(
                        "stopping: %d frames in a row failed (--stop-after %d); frames not "
                        "started are left for the next run",
                        failures_in_a_row,
                        stop_after,
                    )
            shown.update()
    except BaseException as exc:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        report.seconds = time.monotonic() - started
        shown.finish(report, "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped")
        raise
    pool.shutdown()
    report.written.sort()
    report.failed.sort()
    report.seconds = time.monotonic() - started
    shown.finish(report, "stopped early" if report.stopped_early else "done")
    return report


class _NoProgress:
    """A :class:`RunProgress` that shows nothing."""

    def start(self, total: int, skipped: int) -> None:
        """Show nothing."""

    def written(self, frame: int) -> None:
        """Show nothing."""

    def failed(self, frame: int) -> None:
        """Show nothing."""

    def update(self) -> None:
        """Show nothing."""

    def finish(self, report: RunReport, how: RunEnd) -> None:
        """Show nothing."""
