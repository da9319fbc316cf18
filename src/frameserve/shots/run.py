"""Run a model over an image sequence: the per-frame loop, its options, progress and report.

:func:`run_sequence` takes checked :class:`RunOptions` and a
:class:`~frameserve.shots.backends.Backend`, and returns a :class:`RunReport`:

1. Temporary files that killed writers left in the output folders are removed first
   (:func:`frameserve.media.atomic.remove_leftovers`). A frame whose every output file exists
   is skipped (unless ``overwrite``), so a run that was stopped resumes where it was. Every
   other frame's input files are checked before any work starts: a missing one stops the run
   with the list of missing files, or, with ``skip_missing``, those frames are skipped with a
   warning.
2. ``jobs`` frames are in flight at once, each read, run and written by one worker thread
   (:class:`~frameserve.shots.frames.FrameProcessor`); at most ``jobs`` frames are held in
   memory. Outputs are written atomically (a file appears complete or not at all), with the
   first input's data window, display window and metadata when the sizes match; result
   objects go to a JSON sidecar beside the first output (``out.1001.exr`` →
   ``out.1001.json``). A model that carries its answer from frame to frame (it declares the
   knobs ``frame`` and ``prompt_frame``, as ``segment`` does) gets one frame at a time when
   the run sets ``prompt_frame``: that frame first, then the later frames, then the earlier
   ones backwards, written frames included. ``colourspace`` names the colourspace the files
   are in; the runner converts to what the model wants and back, so outputs are in it too.
3. A failed frame is logged with its number and error and the run goes on; it stops early when
   ``stop_after`` frames in a row failed, or at once on an error no frame can get past (an
   unknown model or knob, a model that cannot set up). :attr:`RunReport.exit_code`: 0 when
   every frame is written or skipped, 1 when a frame failed. Ctrl-C stops at once: frames in
   flight write nothing more, and no partial file is left. (The loop is
   :func:`frameserve.shots.flight.fly`, which ``frameserve retime`` shares.)

Progress goes to a :class:`RunProgress` given by the caller (the command line draws a
progress line, :class:`frameserve.cli.progress.FrameProgress`); this layer draws nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path

from frameserve.errors import ConfigError
from frameserve.media.atomic import remove_leftovers
from frameserve.media.colourspaces import Assumed, file_colourspace, output_colourspace
from frameserve.media.imageio import read_image
from frameserve.media.sequences import FramePattern, format_frames
from frameserve.plugin.model import ModelSpec
from frameserve.shots.backends import Backend
from frameserve.shots.flight import PROGRESS_INTERVAL, RunEnd, RunProgress, RunReport, fly
from frameserve.shots.frames import (
    FRAME_KNOB,
    FrameProcessor,
    FrameTask,
    neighbour_path,
    objects_pattern,
)

__all__ = [
    "DEFAULT_LOCAL_JOBS",
    "PROGRESS_INTERVAL",
    "FrameTask",
    "RunEnd",
    "RunOptions",
    "RunProgress",
    "RunReport",
    "run_sequence",
]

log = logging.getLogger(__name__)

DEFAULT_LOCAL_JOBS = 2  # one frame computing while the next is read and the last is written

# -- what a run is ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """One checked run: which files, frames and knob values, and how to write.

    Attributes:
        model: the model id.
        inputs: a pattern per declared input, by input name (every input has one; a temporal
            model's neighbour frames come from their input's pattern).
        outputs: a pattern per output to write, by output name; outputs left out are dropped.
        frames: the frames to process, sorted.
        knobs: typed knob values (see :func:`frameserve.cli.infer.parse_knob_texts`).
        channels: channel names read from every input file, in order; None: all of them.
        colourspace: the colourspace the input files are in (an OpenColorIO name or alias);
            None: each sequence's own, as its first file says
            (:func:`~frameserve.media.colourspaces.file_colourspace`).
        output_colourspace: the colourspace outputs are written in; None: each output file
            type's (:func:`~frameserve.media.colourspaces.output_colourspace`). Outputs of a
            model whose outputs are data (vectors, IDs) are never converted.
        overwrite: recompute frames whose outputs exist.
        skip_missing: skip frames with a missing input file instead of stopping.
        jobs: frames in flight at once.
        half: write EXR outputs as half floats (other formats are not affected).
        stop_after: stop after this many frames in a row failed; 0: never.
    """

    model: str
    inputs: Mapping[str, FramePattern]
    outputs: Mapping[str, FramePattern]
    frames: Sequence[int]
    knobs: Mapping[str, object] = field(default_factory=dict)
    channels: tuple[str, ...] | None = None
    colourspace: str | None = None
    output_colourspace: str | None = None
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
        if not self.outputs:
            raise ConfigError("a run needs at least one output pattern (--output PATTERN)")


# -- the loop --------------------------------------------------------------------------------


def _input_colourspace(options: RunOptions, todo: Sequence[FrameTask]) -> str | None:
    """The colourspace the inputs are read in: ``options.colourspace``, else each sequence's
    own as its first file to read says (printed once per sequence); they must agree."""
    if options.colourspace is not None or not todo:
        return options.colourspace
    assumed: dict[str, Assumed] = {}
    for name, path in todo[0].inputs.items():
        if "@" in name:
            continue  # a neighbour frame: the same sequence
        assumed[name] = file_colourspace(read_image(path, channels=options.channels))
        log.info("input %r: %s read as %s (%s)", name, path, *astuple(assumed[name]))
    names = {a.colourspace for a in assumed.values()}
    if len(names) > 1:
        found = ", ".join(f"{n}: {a.colourspace}" for n, a in assumed.items())
        raise ConfigError(
            f"the inputs are in different colourspaces ({found}); say which with --colourspace"
        )
    return names.pop() if names else None


def run_sequence(
    backend: Backend,
    spec: ModelSpec,
    options: RunOptions,
    *,
    progress: RunProgress | None = None,
) -> RunReport:
    """Process ``options.frames`` with ``backend``; tell ``progress`` (if any) how it goes.

    Raises:
        ConfigError: an input file is missing (without ``skip_missing``); the message lists
            the missing files.
        FrameServeError: an error no frame can get past (unknown model or knob, failed setup).
        KeyboardInterrupt: after stopping the workers; frames in flight write nothing more.
    """
    started = time.monotonic()
    report = RunReport(total=len(options.frames))
    tasks = [_task(options, spec, frame) for frame in options.frames]
    folders = {path.parent for task in tasks for path in (*task.outputs.values(), task.objects)}
    for folder in sorted(folders):
        remove_leftovers(folder)
    todo: list[FrameTask] = []
    for task in tasks:
        if not options.overwrite and all(path.exists() for path in task.outputs.values()):
            report.existing.append(task.frame)
        else:
            todo.append(task)
    todo = _drop_missing(todo, options, report)
    todo, jobs = _carry_order(todo, options, spec, report)
    if report.existing:
        log.info(
            "%d frame(s) already written, skipped: %s",
            len(report.existing),
            format_frames(report.existing),
        )

    read_as = _input_colourspace(options, todo)
    written_as = {
        name: options.output_colourspace or output_colourspace(pattern.suffix)
        for name, pattern in options.outputs.items()
    }
    stop = threading.Event()
    process = FrameProcessor(
        backend,
        spec,
        model=options.model,
        knobs=options.knobs,
        channels=options.channels,
        colourspace=read_as,
        output_colourspaces=written_as,
        half=options.half,
        stop=stop,
    )
    return fly(
        process,
        todo,
        _frame,
        report,
        jobs=jobs,
        stop_after=options.stop_after,
        stop=stop,
        progress=progress,
        started=started,
    )


def _task(options: RunOptions, spec: ModelSpec, frame: int) -> FrameTask:
    outputs = {name: pattern.path(frame) for name, pattern in options.outputs.items()}
    first = next(iter(options.outputs.values()))
    inputs = {}
    for declared in spec.inputs:
        base, offset = spec.input_source(declared.name)
        if base in options.inputs:  # an optional input may have no sequence
            inputs[declared.name] = neighbour_path(options.inputs[base], frame, offset)
    return FrameTask(
        frame=frame,
        inputs=inputs,
        outputs=outputs,
        objects=objects_pattern(first).path(frame),
    )


#: A model that carries its answer from frame to frame (``segment``) declares this knob and
#: :data:`~frameserve.shots.frames.FRAME_KNOB`; a run that sets it runs its frames one at a
#: time, outward from that frame (it first, then later frames, then earlier ones backwards).
PROMPT_FRAME_KNOB = "prompt_frame"


def _carry_order(
    todo: list[FrameTask], options: RunOptions, spec: ModelSpec, report: RunReport
) -> tuple[list[FrameTask], int]:
    """The frames in the order a carrying model needs, and how many may be in flight."""
    start = options.knobs.get(PROMPT_FRAME_KNOB)
    carries = spec.knob(PROMPT_FRAME_KNOB) is not None and spec.knob(FRAME_KNOB) is not None
    if not carries or not isinstance(start, int) or start < 0 or not todo:
        return todo, options.jobs
    if start not in options.frames:
        raise ConfigError(
            f"--knob {PROMPT_FRAME_KNOB}={start} is not among the frames to process "
            f"({format_frames(options.frames)}); the prompts must be on one of them"
        )
    if report.existing:  # every frame is carried from its neighbour: recompute the chain
        log.info(
            "%s is set: the %d frame(s) already written are computed again, each frame is "
            "carried from its neighbour",
            PROMPT_FRAME_KNOB,
            len(report.existing),
        )
        todo = sorted(todo + [_task(options, spec, f) for f in report.existing], key=_frame)
        report.existing.clear()
    after = [task for task in todo if task.frame >= start]
    before = [task for task in reversed(todo) if task.frame < start]
    return after + before, 1


def _frame(task: FrameTask) -> int:
    return task.frame


def _drop_missing(todo: list[FrameTask], options: RunOptions, report: RunReport) -> list[FrameTask]:
    """Check every input file of ``todo`` up front; stop or skip frames with a missing one."""
    missing: dict[int, list[Path]] = {}
    for task in todo:
        absent = [path for path in task.inputs.values() if not path.is_file()]
        if absent:
            missing[task.frame] = absent
    if not missing:
        return todo
    paths = [str(path) for absent in missing.values() for path in absent]
    shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    frames = format_frames(missing)
    if not options.skip_missing:
        raise ConfigError(
            f"{len(paths)} input file(s) missing for {len(missing)} frame(s) ({frames}): "
            f"{shown}; nothing was processed. Fix the inputs or --frames, or pass "
            "--skip-missing to process the other frames"
        )
    log.warning("skipping %d frame(s) with missing inputs (%s): %s", len(missing), frames, shown)
    report.missing.extend(missing)
    return [task for task in todo if task.frame not in missing]
