"""Tests for the command line's one progress display: ``frameserve run`` frames, training steps."""

from __future__ import annotations

import io

from frameserve.cli.progress import (
    FrameProgress,
    ProgressLine,
    StepProgress,
    bar,
    clock_text,
    steps_text,
)
from frameserve.shots.run import RunProgress, RunReport


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- frameserve run ----------------------------------------------------------------------------


def test_progress_on_a_log_prints_a_line_every_interval() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = FrameProgress(stream, tty=False, interval=5.0, clock=clock)
    progress.start(10, 2)
    clock.now += 2.0
    progress.written(1001)
    progress.update()
    assert stream.getvalue() == ""  # less than 5 s since the start
    clock.now += 3.0
    progress.written(1002)
    progress.failed(1003)
    progress.update()
    line = stream.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    assert line.startswith("frameserve run: [##########..........] 5/10 frames")
    assert "5/10 frames  0.60 frames/s  ETA 0:00:08  skipped 2  failed 1" in line
    report = RunReport(total=10, written=[1, 2], existing=[3, 4], failed=[5, 7], seconds=5.0)
    progress.finish(report, "done")
    assert stream.getvalue().splitlines()[-1] == (
        "frameserve run: done: 10 frames: 2 written, 2 skipped (outputs exist), "
        "2 failed (5,7) in 0:00:05 (0.40 frames/s)"
    )


def test_a_retime_says_it_is_a_retime() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = FrameProgress(stream, tty=False, interval=1.0, clock=clock, command="retime")
    progress.start(2, 0)
    clock.now += 2.0
    progress.written(1)
    progress.update()
    progress.finish(RunReport(total=2, written=[1, 2], seconds=2.0), "done")
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("frameserve retime: ") for line in lines), lines


def test_progress_on_a_terminal_redraws_in_place() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = FrameProgress(stream, tty=True, clock=clock)
    progress.start(4, 0)
    clock.now += 1.0
    progress.written(1)
    progress.update()
    progress.update()  # at most ten redraws a second
    clock.now += 0.5
    progress.update()
    assert stream.getvalue().count("\r") == 2 and "\n" not in stream.getvalue()
    assert "[#####...............] 1/4 frames" in stream.getvalue()
    progress.failed(2)  # the run logs the failure next: the line is wiped first
    assert stream.getvalue().endswith("\r\x1b[K")
    progress.finish(RunReport(total=4, written=[1], missing=[3, 4], seconds=2.0), "interrupted")
    assert stream.getvalue().endswith(
        "frameserve run: interrupted: 4 frames: 1 written, 2 skipped (inputs missing) in "
        "0:00:02 (0.50 frames/s)\n"
    )


def test_the_run_display_is_what_the_run_loop_talks_to() -> None:
    display: RunProgress = FrameProgress(io.StringIO())  # mypy checks the protocol here
    display.start(1, 0)
    assert isinstance(display, FrameProgress) and display.line().startswith("[....")


# -- training ----------------------------------------------------------------------------------


def test_training_steps_on_a_log_first_line_at_once_and_the_last_at_the_end() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = StepProgress(stream, tty=False, interval=5.0, clock=clock)
    progress.show(1, 10, loss=0.5, speed=2.0, eta=4.5)
    progress.show(2, 10, loss=0.25)  # within the interval: not written
    assert stream.getvalue() == "[##..................] 1/10  loss 0.5  2.0 steps/s  ETA 0:00:04\n"
    clock.now += 1.0
    progress.show(10, 10, loss=0.125, validation_loss=0.2, state="running")
    progress.end()  # the last progress was not written yet: it is now
    progress.end()  # and only once
    assert stream.getvalue().splitlines()[1:] == [
        "[####################] 10/10  loss 0.125  val 0.2  ETA -  running"
    ]


def test_training_steps_on_a_terminal() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = StepProgress(stream, tty=True, clock=clock)
    progress.show(3, 6, loss=None, state="queued")
    progress.show(4, 6, loss=0.1)  # too soon: not drawn
    progress.show(6, 6, loss=0.01, state="done", force=True)  # the end is always drawn
    progress.end()
    assert stream.getvalue() == (
        "\r\x1b[K[##########..........] 3/6  loss -  ETA -  queued"
        "\r\x1b[K[####################] 6/6  loss 0.01  ETA -  done\n"
    )


def test_texts() -> None:
    assert bar(0, 0) == "[" + "#" * 20 + "]"
    assert bar(25, 100) == "[#####" + "." * 15 + "]"
    assert bar(120, 100) == "[" + "#" * 20 + "]"
    assert clock_text(3725.4) == "1:02:05"
    assert clock_text(None) == clock_text(float("inf")) == "-"
    assert steps_text(120, 2000, loss=0.01234, validation_loss=0.015, speed=14.2, eta=132) == (
        "[#...................] 120/2000  loss 0.01234  val 0.015  14.2 steps/s  ETA 0:02:12"
    )


def test_a_line_with_a_summary_replaces_the_progress() -> None:
    clock, stream = FakeClock(), io.StringIO()
    line = ProgressLine(stream, tty=True, clock=clock)
    line.show("working")
    line.close("all done")
    assert stream.getvalue() == "\r\x1b[Kworking\r\x1b[Kall done\n"
    on_log = io.StringIO()
    quiet = ProgressLine(on_log, tty=False, log_prefix="x: ", clock=clock)
    quiet.show("working")  # the first line on a log waits for the interval
    quiet.close("all done")
    assert on_log.getvalue() == "all done\n"
