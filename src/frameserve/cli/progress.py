"""The progress line of a sequence run: frames done, rate, time left, skipped and failed.

On a terminal the line is redrawn in place; otherwise (a log file, a pipe) one line is
written every few seconds. :meth:`Progress.finish` replaces it with the run's summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from frameserve.media.sequences import format_frames

if TYPE_CHECKING:
    from frameserve.shots.run import RunReport

__all__ = ["Progress"]

_REDRAW_SECONDS = 0.1  # a progress line on a terminal changes at most this often


class Progress:
    """A progress line for a run on ``stream``: redrawn on a terminal, else every few seconds.

    ::

        progress = Progress(100, stream=sys.stderr)
        progress.done(); progress.draw()
    """

    def __init__(
        self,
        total: int,
        *,
        stream: IO[str],
        tty: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self.interval = interval
        self.tick = 0.25 if self.tty else interval
        self._clock = clock
        self._start = clock()
        self._last_draw = self._start
        self._drawn = False
        self.processed = 0
        self.skipped = 0
        self.failures = 0

    def skip(self, count: int = 1) -> None:
        """Count frames skipped without work."""
        self.skipped += count

    def done(self) -> None:
        """Count one frame written."""
        self.processed += 1

    def failed(self) -> None:
        """Count one frame failed."""
        self.failures += 1

    def elapsed(self) -> float:
        """Seconds since the progress started."""
        return self._clock() - self._start

    def line(self) -> str:
        """Return the progress text: frames, rate, time left, skipped and failed counts."""
        finished = self.processed + self.failures
        count = finished + self.skipped
        elapsed = self.elapsed()
        rate = finished / elapsed if finished and elapsed > 0 else 0.0
        left = self.total - count
        eta = _clock_text(left / rate) if rate else "--:--"
        width = 20
        filled = width * count // self.total if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return (
            f"[{bar}] {count}/{self.total} frames  {rate:.2f} frames/s  ETA {eta}  "
            f"skipped {self.skipped}  failed {self.failures}"
        )

    def draw(self, *, force: bool = False) -> None:
        """Show the progress: in place on a terminal, as a new line every ``interval`` else."""
        now = self._clock()
        if self.tty:
            if not force and self._drawn and now - self._last_draw < _REDRAW_SECONDS:
                return
            self.stream.write("\r\x1b[K" + self.line())
            self._drawn = True
        elif force or now - self._last_draw >= self.interval:
            self.stream.write("frameserve run: " + self.line() + "\n")
        else:
            return
        self._last_draw = now
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the line drawn in place, so that a log message starts on a clean line."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def finish(self, report: RunReport, *, how: str | None = None) -> None:
        """Replace the progress with the run's summary line; ``how`` says how the run ended."""
        self.clear()
        parts = [f"{len(report.written)} written"]
        if report.existing:
            parts.append(f"{len(report.existing)} skipped (outputs exist)")
        if report.missing:
            parts.append(f"{len(report.missing)} skipped (inputs missing)")
        if report.failed:
            parts.append(f"{len(report.failed)} failed ({format_frames(report.failed)})")
        rate = len(report.written) / report.seconds if report.seconds > 0 else 0.0
        if how is None:
            how = "stopped early" if report.stopped_early else "done"
        self.stream.write(
            f"frameserve run: {how}: {report.total} frames: {', '.join(parts)} in "
            f"{_clock_text(report.seconds)} ({rate:.2f} frames/s)\n"
        )
        self.stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _clock_text(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
