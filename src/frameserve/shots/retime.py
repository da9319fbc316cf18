"""Retime a shot: output frames at any source times, in-betweens made by the ``retime`` model.

:func:`retime_sequence` takes checked :class:`RetimeOptions` (a table of output frame →
source time, from :func:`speed_timing` or :func:`read_curve`) and a
:class:`~frameserve.shots.backends.Backend`, and returns a
:class:`~frameserve.shots.run.RunReport`, as ``frameserve run`` does:

1. Temporary files of killed writers are removed from the output folder; an output frame whose
   file exists is skipped (unless ``overwrite``), so a stopped retime resumes. Every other
   frame's source files are checked before any work starts: a missing one stops the run with
   the list, or, with ``skip_missing``, those frames are skipped.
2. An output frame whose source time is a whole frame (within :data:`WHOLE_FRAME`) is a copy of
   that source frame: its pixels exactly as read (no model, no colour conversion). Any other
   is made by the model from the two source frames around it (``a`` = the frame before,
   ``b`` = the frame after, knob ``t`` = the fraction between them).
3. Every output is written atomically with the source frame's data window, display window and
   metadata (for an in-between, those of the frame before). Copies and in-betweens carry the
   same channels: the model's (the first three of the file, or of ``channels``; a
   one-channel file is repeated to three).
4. ``jobs`` frames are in flight at once; a failed frame is logged and the run goes on, and
   stops after ``stop_after`` failures in a row; an error no frame can get past stops it at
   once (the loop of ``frameserve run``: :func:`frameserve.shots.flight.fly`).

::

    timing = speed_timing(source_frames=range(1001, 1101), speed=0.5)   # 1001 -> 1001.0,
    options = RetimeOptions(input=FramePattern.parse("plate.####.exr"),  # 1002 -> 1001.5 ...
                            output=FramePattern.parse("slow.####.exr"), timing=timing)
    report = retime_sequence(LocalBackend(ModelRegistry()), options)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frameserve.errors import (
    ConfigError,
    ModelRunError,
)
from frameserve.media.atomic import remove_leftovers
from frameserve.media.imageio import ImageFile, read_image, write_image
from frameserve.media.sequences import MAX_FRAMES, FramePattern, format_frames
from frameserve.plugin.model import ModelSpec
from frameserve.shots.backends import Backend
from frameserve.shots.flight import RunProgress, RunReport, fly
from frameserve.shots.run import DEFAULT_LOCAL_JOBS

__all__ = [
    "WHOLE_FRAME",
    "RetimeOptions",
    "read_curve",
    "retime_sequence",
    "source_frames_of",
    "speed_timing",
]

log = logging.getLogger(__name__)

#: A source time this close to a whole frame is that frame (a copy, not an in-between).
WHOLE_FRAME = 1e-4
#: The model that makes in-betweens: inputs ``a`` and ``b``, knob ``t``.
RETIME_MODEL = "retime"


@dataclass(frozen=True, kw_only=True)
class RetimeOptions:
    """One checked retime: source and output sequences, the timing, how to run and write.

    Attributes:
        input: the source sequence.
        output: the output sequence.
        timing: output frame → source time (frames, fractional between two source frames).
        knobs: the model's other knob values (``t`` is set per frame).
        channels: channel names read from the source files; None: all (the first three used).
        colourspace: the colourspace of the files (and outputs); None: scene-linear.
        overwrite: remake frames whose outputs exist.
        skip_missing: skip output frames whose source files are missing instead of stopping.
        jobs: frames in flight at once.
        half: write EXR outputs as half floats.
        stop_after: stop after this many frames in a row failed; 0: never.
    """

    input: FramePattern
    output: FramePattern
    timing: Mapping[int, float]
    knobs: Mapping[str, object] = field(default_factory=dict)
    channels: tuple[str, ...] | None = None
    colourspace: str | None = None
    overwrite: bool = False
    skip_missing: bool = False
    jobs: int = DEFAULT_LOCAL_JOBS
    half: bool = False
    stop_after: int = 10

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {self.jobs}")
        if self.stop_after < 0:
            raise ConfigError(f"--stop-after must be 0 or more, got {self.stop_after}")
        if not self.timing:
            raise ConfigError("a retime needs at least one output frame")
        if "t" in self.knobs:
            raise ConfigError("knob 't' is set for each frame by the timing; leave it out")
        bad = [frame for frame, time in self.timing.items() if not math.isfinite(time)]
        if bad:
            raise ConfigError(f"source time of output frame {bad[0]} is not a finite number")


def speed_timing(
    source_frames: Sequence[int], speed: float, *, start: int | None = None
) -> dict[int, float]:
    """Output frame → source time for a constant ``speed`` over ``source_frames``.

    Output frame ``start + k`` shows source time ``first + k * speed`` (``first``: the first
    source frame; ``start`` defaults to it), for every ``k`` that stays within the source
    frames: ``speed`` 0.5 makes twice as many frames (slow motion), 2 half as many.

    Raises:
        ConfigError: ``speed`` is not above 0, there are no source frames, or more than
            :data:`~frameserve.media.sequences.MAX_FRAMES` output frames would be made.
    """
    if not math.isfinite(speed) or speed <= 0:
        raise ConfigError(f"--speed must be a number above 0 (0.5: half speed), got {speed}")
    if not source_frames:
        raise ConfigError("no source frames to retime")
    first, last = min(source_frames), max(source_frames)
    count = math.floor((last - first) / speed + WHOLE_FRAME) + 1
    if count > MAX_FRAMES:
        raise ConfigError(f"--speed {speed} makes {count} frames, more than {MAX_FRAMES}")
    start = first if start is None else start
    return {start + k: first + k * speed for k in range(count)}


def read_curve(path: Path) -> dict[int, float]:
    """Read a timing table: one ``OUTPUT_FRAME SOURCE_TIME`` pair per line.

    The two numbers are separated by spaces, a tab or a comma (Nuke's ASCII curve export, a
    spreadsheet's CSV); blank lines and lines starting with ``#`` are skipped, and so is a
    first line that is not numbers (a header). Output frames must be whole numbers.

    Raises:
        ConfigError: the file cannot be read, a line is not two numbers, an output frame is
            fractional or given twice, or the table is empty.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the timing curve {str(path)!r}: {exc}") from exc
    timing: dict[int, float] = {}
    rows = [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")
    ]
    for index, (number, line) in enumerate(rows):
        pair = _numbers(line)
        if pair is None and index == 0:
            continue  # a header line
        if pair is None:
            raise ConfigError(
                f"timing curve {str(path)!r} line {number}: {line!r} is not two numbers "
                "(OUTPUT_FRAME SOURCE_TIME)"
            )
        frame_value, source = pair
        if not frame_value.is_integer() or not math.isfinite(source):
            raise ConfigError(
                f"timing curve {str(path)!r} line {number}: the output frame ({frame_value:g}) "
                "must be a whole number and the source time finite"
            )
        frame = int(frame_value)
        if frame in timing:
            raise ConfigError(f"timing curve {str(path)!r} line {number}: frame {frame} repeats")
        timing[frame] = source
    if not timing:
        raise ConfigError(f"timing curve {str(path)!r} has no OUTPUT_FRAME SOURCE_TIME lines")
    return dict(sorted(timing.items()))


def _numbers(line: str) -> tuple[float, float] | None:
    """The two numbers of a timing line, or None when it is not two numbers."""
    parts = line.replace(",", " ").split()
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def source_frames_of(time: float) -> tuple[int, int, float]:
    """``(a, b, t)``: the source frames around ``time`` and the fraction between them.

    A whole frame (within :data:`WHOLE_FRAME`) gives ``(frame, frame, 0.0)``.
    """
    nearest = round(time)
    if abs(time - nearest) <= WHOLE_FRAME:
        return nearest, nearest, 0.0
    before = math.floor(time)
    return before, before + 1, time - before


@dataclass(frozen=True)
class _Job:
    frame: int
    before: Path
    after: Path
    t: float
    output: Path


def retime_sequence(
    backend: Backend,
    spec: ModelSpec,
    options: RetimeOptions,
    *,
    progress: RunProgress | None = None,
) -> RunReport:
    """Make the output frames of ``options``; tell ``progress`` (if any) how it goes.

    ``spec`` is the ``retime`` model's declaration (``backend.describe("retime")``).

    Raises:
        ConfigError: a source file is missing (without ``skip_missing``).
        FrameServeError: an error no frame can get past (unknown model or knob, failed setup).
        KeyboardInterrupt: after stopping the workers; frames in flight write nothing more.
    """
    started = time.monotonic()
    report = RunReport(total=len(options.timing))
    jobs = [_job(options, frame, source) for frame, source in options.timing.items()]
    remove_leftovers(options.output.path(0).parent)
    todo = []
    for job in jobs:
        if not options.overwrite and job.output.exists():
            report.existing.append(job.frame)
        else:
            todo.append(job)
    todo = _drop_missing(todo, options, report)
    if report.existing:
        log.info(
            "%d frame(s) already written, skipped: %s",
            len(report.existing),
            format_frames(report.existing),
        )
    stop = threading.Event()

    def make(job: _Job) -> None:
        _make_frame(backend, spec, options, job, stop)

    return fly(
        make,
        todo,
        _frame_of,
        report,
        jobs=options.jobs,
        stop_after=options.stop_after,
        stop=stop,
        progress=progress,
        name="frameserve-retime",
        started=started,
    )


def _frame_of(job: _Job) -> int:
    return job.frame


def _job(options: RetimeOptions, frame: int, source: float) -> _Job:
    before, after, t = source_frames_of(source)
    return _Job(
        frame, options.input.path(before), options.input.path(after), t, options.output.path(frame)
    )


def _drop_missing(todo: list[_Job], options: RetimeOptions, report: RunReport) -> list[_Job]:
    """Check every source file up front; stop, or skip the frames that need a missing one."""
    missing: dict[int, list[Path]] = {}
    for job in todo:
        absent = sorted({p for p in (job.before, job.after) if not p.is_file()})
        if absent:
            missing[job.frame] = absent
    if not missing:
        return todo
    paths = sorted({str(p) for absent in missing.values() for p in absent})
    shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    frames = format_frames(missing)
    if not options.skip_missing:
        raise ConfigError(
            f"{len(paths)} source file(s) missing for {len(missing)} output frame(s) "
            f"({frames}): {shown}; nothing was written. Fix the timing or --frames, or pass "
            "--skip-missing to make the other frames"
        )
    log.warning("skipping %d frame(s) with missing sources (%s): %s", len(missing), frames, shown)
    report.missing.extend(missing)
    return [job for job in todo if job.frame not in missing]


def _make_frame(
    backend: Backend, spec: ModelSpec, options: RetimeOptions, job: _Job, stop: threading.Event
) -> None:
    """Read, copy or interpolate, and write one output frame (on a worker thread)."""
    if stop.is_set():
        return
    started = time.perf_counter()
    before = read_image(job.before, channels=options.channels)
    if job.t == 0.0:
        pixels = _rgb(before)  # a whole source frame: its pixels exactly
    else:
        after = read_image(job.after, channels=options.channels)
        knobs = {**options.knobs, "t": job.t}
        frames = {"a": _rgb(before), "b": _rgb(after)}
        outputs, _ = backend.infer(spec.id, frames, knobs, colourspace=options.colourspace)
        if "image" not in outputs:
            raise ModelRunError(f"model {spec.id!r} returned no 'image' output")
        pixels = outputs["image"]
    if stop.is_set():
        return
    job.output.parent.mkdir(parents=True, exist_ok=True)
    write_image(
        job.output,
        np.ascontiguousarray(pixels, dtype=np.float32),
        layout="HWC",
        metadata=before.metadata,
        data_window=before.data_window if pixels.shape[:2] == before.size else None,
        display_window=before.display_window if pixels.shape[:2] == before.size else None,
        pixel_type="half" if options.half and job.output.suffix.lower() == ".exr" else "float",
    )
    what = (
        f"copy of {job.before.name}"
        if job.t == 0.0
        else (f"{job.before.name} + {job.t:.4g} toward {job.after.name}")
    )
    log.info(
        "frame %d: %s (%s) in %.2f s", job.frame, job.output, what, time.perf_counter() - started
    )


def _rgb(image: ImageFile) -> np.ndarray:
    """The three channels the model takes: the first three, or one channel repeated."""
    if image.hwc.shape[2] == 1:
        return np.repeat(image.hwc, 3, axis=2)
    if image.hwc.shape[2] < 3:
        raise ConfigError(
            f"retime needs RGB (3 channels) or one channel; the file has channels "
            f"{', '.join(image.channel_names)}"
        )
    return image.hwc[:, :, :3]
