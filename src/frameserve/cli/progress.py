"""The progress display of the command line: one line, for ``frameserve run`` and ``train``.

:class:`ProgressLine` draws: on a terminal the line is redrawn in place (at most ten times a
second); otherwise (a log file, a pipe) a new line is written every few seconds. Two displays
use it:

- :class:`FrameProgress`, the frames of a ``frameserve run`` (frames done, rate, time left,
  skipped and failed counts), replaced by the run's summary at the end; it is the
  :class:`~frameserve.shots.run.RunProgress` the command line gives
  :func:`~frameserve.shots.run.run_sequence`;
- :class:`StepProgress`, the steps of a training job (``train --follow``, ``train --local``,
  ``resume --follow``): steps, loss, validation loss, speed, time left.

::

    [#####...............] 25/100 frames  4.10 frames/s  ETA 0:00:18  skipped 0  failed 0
    [######..............] 600/2000  loss 0.0123  val 0.015  14.2 steps/s  ETA 0:01:39
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import IO

from frameserve.media.sequences import format_frames
from frameserve.shots.run import RunEnd, RunReport

__all__ = [
    "FrameProgress",
    "ProgressLine",
    "StepProgress",
    "bar",
    "clock_text",
    "number_text",
    "steps_text",
]

_REDRAW_SECONDS = 0.1  # a progress line on a terminal changes at most this often
_BAR_WIDTH = 20


class ProgressLine:
    """One line of progress on ``stream``: redrawn in place on a terminal, else written as a
    new line every ``interval`` seconds.

    On a log, the first line comes ``interval`` seconds after the start, or at once with
    ``first_at_once``; ``log_prefix`` starts every line written there.

    ::

        line = ProgressLine(sys.stderr)
        line.show("[###.......] 3/10")
        line.close()                   # keep the last progress; or close("summary")
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        tty: bool | None = None,
        interval: float = 5.0,
        log_prefix: str = "",
        first_at_once: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self.interval = interval
        self.log_prefix = log_prefix
        self._clock = clock
        self._last = -math.inf if first_at_once else clock()
        self._drawn = False  # a line drawn in place is on the terminal
        self._text = ""
        self._written = ""  # the text last written

    def show(self, text: str, *, force: bool = False) -> None:
        """Show ``text`` as the current progress (now, with ``force``)."""
        self._text = text
        now = self._clock()
        if self.tty:
            if not force and self._drawn and now - self._last < _REDRAW_SECONDS:
                return
            self.stream.write("\r\x1b[K" + text)
            self._drawn = True
        elif force or now - self._last >= self.interval:
            self.stream.write(self.log_prefix + text + "\n")
        else:
            return
        self._last = now
        self._written = text
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the line drawn in place, so that a log message starts on a clean line."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def close(self, summary: str | None = None) -> None:
        """End the display: replace the progress by ``summary``, or keep the last progress
        (a log gets it if it was not written yet)."""
        if summary is not None:
            self.clear()
            self.stream.write(summary + "\n")
        elif self.tty and self._drawn:
            self.stream.write("\n")
            self._drawn = False
        elif not self.tty and self._text != self._written:
            self.stream.write(self.log_prefix + self._text + "\n")
            self._written = self._text
        self.stream.flush()


class FrameProgress:
    """The progress of a ``frameserve run`` (or ``retime``: ``command``) on ``stream`` (a
    :class:`~frameserve.shots.run.RunProgress`).

    ::

        report = run_sequence(backend, spec, options, progress=FrameProgress(sys.stderr))
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        tty: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        command: str = "run",
    ) -> None:
        self._prefix = f"frameserve {command}: "
        self._stream = stream
        self._tty = tty
        self._interval = interval
        self._clock = clock
        self._line = self._new_line()
        self._start = clock()
        self.total = 0
        self.processed = 0
        self.skipped = 0
        self.failures = 0

    def start(self, total: int, skipped: int) -> None:
        """The run begins: ``total`` frames, ``skipped`` of them need no work."""
        self._line = self._new_line()
        self._start = self._clock()
        self.total = total
        self.skipped = skipped

    def written(self, frame: int) -> None:
        """Count one frame written."""
        self.processed += 1

    def failed(self, frame: int) -> None:
        """Count one frame failed and wipe the line (the run logs the error next)."""
        self.failures += 1
        self._line.clear()

    def update(self) -> None:
        """Show the progress (as often as the line allows)."""
        self._line.show(self.line())

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self._clock() - self._start

    def line(self) -> str:
        """Return the progress text: frames, rate, time left, skipped and failed counts."""
        finished = self.processed + self.failures
        count = finished + self.skipped
        elapsed = self.elapsed()
        rate = finished / elapsed if finished and elapsed > 0 else 0.0
        left = self.total - count
        eta = clock_text(left / rate) if rate else "--:--"
        return (
            f"{bar(count, self.total)} {count}/{self.total} frames  {rate:.2f} frames/s  "
            f"ETA {eta}  skipped {self.skipped}  failed {self.failures}"
        )

    def finish(self, report: RunReport, how: RunEnd) -> None:
        """Replace the progress with the run's summary line; ``how`` says how the run ended."""
        parts = [f"{len(report.written)} written"]
        if report.existing:
            parts.append(f"{len(report.existing)} skipped (outputs exist)")
        if report.missing:
            parts.append(f"{len(report.missing)} skipped (inputs missing)")
        if report.failed:
            parts.append(f"{len(report.failed)} failed ({format_frames(report.failed)})")
        rate = len(report.written) / report.seconds if report.seconds > 0 else 0.0
        self._line.close(
            f"{self._prefix}{how}: {report.total} frames: {', '.join(parts)} in "
            f"{clock_text(report.seconds)} ({rate:.2f} frames/s)"
        )

    def _new_line(self) -> ProgressLine:
        return ProgressLine(
            self._stream,
            tty=self._tty,
            interval=self._interval,
            log_prefix=self._prefix,
            clock=self._clock,
        )


class StepProgress:
    """The progress of a training job on ``stream``: steps, losses, speed and time left.

    ::

        progress = StepProgress(sys.stderr)
        progress.show(600, 2000, loss=0.0123, validation_loss=0.015, speed=14.2, eta=99.0)
        progress.end()
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        tty: bool | None = None,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._line = ProgressLine(
            stream, tty=tty, interval=interval, first_at_once=True, clock=clock
        )

    def show(
        self,
        step: int,
        total: int,
        *,
        loss: float | None,
        validation_loss: float | None = None,
        speed: float = 0.0,
        eta: float | None = None,
        state: str = "",
        force: bool = False,
    ) -> None:
        """Show where the job stands (``state``, e.g. ``"running"``, after the numbers)."""
        text = steps_text(
            step, total, loss=loss, validation_loss=validation_loss, speed=speed, eta=eta
        )
        self._line.show(f"{text}  {state}" if state else text, force=force)

    def end(self) -> None:
        """Finish the line, keeping the last progress on screen (and in a log)."""
        self._line.close()


def steps_text(
    step: int,
    total: int,
    *,
    loss: float | None,
    validation_loss: float | None = None,
    speed: float = 0.0,
    eta: float | None = None,
) -> str:
    """Return a training progress text: ``[#####...] 120/2000  loss 0.0123  val 0.015
    14.2 steps/s  ETA 0:02:12``."""
    parts = [f"{bar(step, total)} {step}/{total}", f"loss {number_text(loss)}"]
    if validation_loss is not None:
        parts.append(f"val {number_text(validation_loss)}")
    if speed:
        parts.append(f"{speed:.1f} steps/s")
    parts.append(f"ETA {clock_text(eta)}")
    return "  ".join(parts)


def bar(done: int, total: int) -> str:
    """Return a progress bar such as ``[#####...............]`` (full when ``total`` is 0)."""
    filled = _BAR_WIDTH * min(max(done, 0), total) // total if total else _BAR_WIDTH
    return "[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]"


def clock_text(seconds: float | None) -> str:
    """Return ``H:MM:SS``; ``-`` for an unknown (None or infinite) time."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def number_text(value: float | None) -> str:
    """Return a loss as four significant digits, ``-`` when there is none."""
    return "-" if value is None else f"{value:.4g}"


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
