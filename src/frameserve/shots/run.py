"""Run a model over an image sequence: the per-frame loop, its options and its report.

:func:`run_sequence` takes checked :class:`RunOptions` and a
:class:`~frameserve.shots.backends.Backend`, and returns a :class:`RunReport`:

1. A frame whose every output file exists is skipped (unless ``overwrite``), so a run that
   was stopped resumes where it was. Every other frame's input files are checked before any
   work starts: a missing one stops the run with the list of missing files, or, with
   ``skip_missing``, those frames are skipped with a warning.
2. ``jobs`` frames are in flight at once, each read, run and written by one worker thread;
   at most ``jobs`` frames are held in memory. Outputs are written atomically (a file appears
   complete or not at all), with the first input's data window, display window and metadata
   when the sizes match; result objects go to a JSON sidecar beside the first output
   (``out.1001.exr`` → ``out.1001.json``). ``colourspace`` names the colourspace the files
   are in; the runner converts to what the model wants and back, so outputs are in it too.
3. A failed frame is logged with its number and error and the run goes on; it stops early when
   ``stop_after`` frames in a row failed, or at once on an error no frame can get past (an
   unknown model or knob, a model that cannot set up). :attr:`RunReport.exit_code`: 0 when
   every frame is written or skipped, 1 when a frame failed. Ctrl-C stops at once: no partial
   file is left.

Progress is shown with :class:`~frameserve.cli.progress.Progress`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from frameserve.cli.progress import Progress
from frameserve.errors import (
    ColourError,
    ConfigError,
    FrameServeError,
    KnobError,
    ModelLoadError,
    ModelNotFoundError,
    ModelRunError,
    ModelSetupError,
)
from frameserve.media.imageio import ImageFile, Window, read_image, write_image
from frameserve.media.sequences import FramePattern, format_frames
from frameserve.plugin.model import ImageSpec, ModelSpec
from frameserve.shots.backends import Backend, Frame

__all__ = [
    "DEFAULT_LOCAL_JOBS",
    "FrameTask",
    "RunOptions",
    "RunReport",
    "run_sequence",
]

log = logging.getLogger(__name__)

DEFAULT_LOCAL_JOBS = 2  # one frame computing while the next is read and the last is written

# Errors that every frame would hit alike: the run stops at the first one.
_FATAL_ERRORS = (
    ConfigError,
    ModelNotFoundError,
    KnobError,
    ColourError,
    ModelLoadError,
    ModelSetupError,
)


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
        colourspace: the colourspace the files are in and outputs are written in (an
            OpenColorIO name or alias); None: scene-linear.
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


@dataclass(frozen=True)
class FrameTask:
    """The files of one frame: what to read and what to write.

    ``inputs`` holds a path per model input; for a temporal model that includes the
    neighbour frames (``NAME@-1`` ...), found by :func:`neighbour_path`.
    """

    frame: int
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    objects: Path


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


# -- the loop --------------------------------------------------------------------------------


def run_sequence(
    backend: Backend,
    spec: ModelSpec,
    options: RunOptions,
    *,
    stream: IO[str] | None = None,
) -> RunReport:
    """Process ``options.frames`` with ``backend``; report progress on ``stream`` (stderr).

    Raises:
        ConfigError: an input file is missing (without ``skip_missing``); the message lists
            the missing files.
        FrameServeError: an error no frame can get past (unknown model or knob, failed setup).
        KeyboardInterrupt: after stopping the workers; frames in flight write nothing more.
    """
    report = RunReport(total=len(options.frames))
    tasks = [_task(options, spec, frame) for frame in options.frames]
    todo: list[FrameTask] = []
    for task in tasks:
        if not options.overwrite and all(path.exists() for path in task.outputs.values()):
            report.existing.append(task.frame)
        else:
            todo.append(task)
    todo = _drop_missing(todo, options, report)
    if report.existing:
        log.info(
            "%d frame(s) already written, skipped: %s",
            len(report.existing),
            format_frames(report.existing),
        )

    progress = Progress(report.total, stream=sys.stderr if stream is None else stream)
    progress.skip(len(report.existing) + len(report.missing))
    stop = threading.Event()
    process = _FrameProcessor(backend, spec, options, stop)
    pool = ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="frameserve-run")
    pending: dict[Future[None], FrameTask] = {}
    queue = iter(todo)
    failures_in_a_row = 0
    try:
        while True:
            while len(pending) < options.jobs and not report.stopped_early:
                next_task = next(queue, None)
                if next_task is None:
                    break
                pending[pool.submit(process, next_task)] = next_task
            if not pending:
                break
            finished, _ = wait(pending, timeout=progress.tick, return_when=FIRST_COMPLETED)
            for future in finished:
                task = pending.pop(future)
                error = future.exception()
                if error is None:
                    report.written.append(task.frame)
                    progress.done()
                    failures_in_a_row = 0
                    continue
                if isinstance(error, _FATAL_ERRORS) or not isinstance(error, Exception):
                    raise error  # Ctrl-C in a worker, or an error every frame would hit
                report.failed.append(task.frame)
                progress.failed()
                failures_in_a_row += 1
                progress.clear()
                log.error("frame %d failed: %s", task.frame, _describe(error))
                if options.stop_after and failures_in_a_row >= options.stop_after:
                    report.stopped_early = True
                    log.error(
                        "stopping: %d frames in a row failed (--stop-after %d); frames not "
                        "started are left for the next run",
                        failures_in_a_row,
                        options.stop_after,
                    )
            progress.draw()
    except BaseException as exc:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        report.seconds = progress.elapsed()
        progress.finish(
            report, how="interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped"
        )
        raise
    pool.shutdown()
    report.written.sort()
    report.failed.sort()
    report.seconds = progress.elapsed()
    progress.finish(report)
    return report


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
        objects=_objects_pattern(first).path(frame),
    )


def neighbour_path(pattern: FramePattern, frame: int, offset: int) -> Path:
    """The file of ``frame + offset`` for a temporal model, with the fallback at shot ends.

    A neighbour that does not exist on disk is replaced by the nearest existing frame between
    it and the current frame: at the first frame of a shot, ``frame - 1`` is the first frame
    itself; at the last, ``frame + 1`` is the last frame.
    """
    step = -1 if offset > 0 else 1
    for candidate in range(frame + offset, frame, step):
        path = pattern.path(candidate)
        if path.is_file():
            return path
    return pattern.path(frame)


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


class _FrameProcessor:
    """Reads, runs and writes one frame; called on a worker thread."""

    def __init__(
        self, backend: Backend, spec: ModelSpec, options: RunOptions, stop: threading.Event
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.options = options
        self.stop = stop

    def __call__(self, task: FrameTask) -> None:
        if self.stop.is_set():
            return
        started = time.perf_counter()
        read: dict[Path, ImageFile] = {}  # a neighbour may be the same file as another input
        files = {}
        for name, path in task.inputs.items():
            if path not in read:
                read[path] = read_image(path, channels=self.options.channels)
            files[name] = read[path]
        frames = {
            declared.name: _fit_channels(declared, files[declared.name])
            for declared in self.spec.inputs
            if declared.name in files
        }
        if self.stop.is_set():
            return
        outputs, objects = self.backend.infer(
            self.options.model, frames, self.options.knobs, colourspace=self.options.colourspace
        )
        if self.stop.is_set():  # Ctrl-C: write nothing more
            return
        missing = [name for name in task.outputs if name not in outputs]
        if missing:
            raise ModelRunError(
                f"model {self.options.model!r} returned no {', '.join(map(repr, missing))} "
                f"output; it returned {', '.join(map(repr, outputs)) or 'none'}"
            )
        # The sidecar goes first: once the images exist the frame counts as done.
        _write_objects(task.objects, objects)
        first = files[self.spec.inputs[0].name] if self.spec.inputs else None
        for output in self.spec.outputs:
            if output.name in task.outputs:
                self._write(
                    task.outputs[output.name], outputs[output.name], first, output.channel_names
                )
        log.info(
            "frame %d: %s in %.2f s",
            task.frame,
            ", ".join(str(p) for p in task.outputs.values()),
            time.perf_counter() - started,
        )

    def _write(
        self,
        path: Path,
        pixels: Frame,
        source: ImageFile | None,
        channel_names: tuple[str, ...] | None,
    ) -> None:
        scale = None if source is None else _scale_between(source.pixels, pixels)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(
            path,
            pixels,
            channel_names=channel_names,
            metadata=source.metadata if source is not None and scale else None,
            data_window=_scaled(source.data_window, scale) if source and scale else None,
            display_window=_scaled(source.display_window, scale) if source and scale else None,
            pixel_type="half" if self.options.half and path.suffix.lower() == ".exr" else "float",
        )


def _scale_between(source: Frame, output: Frame) -> int | None:
    """Return s when ``output`` is s times ``source`` in width and height (1: the same size)."""
    (height, width), (out_height, out_width) = source.shape[1:], output.shape[1:]
    if out_height % height or out_height // height * width != out_width:
        return None
    return int(out_height // height)


def _scaled(window: Window, scale: int | None) -> Window:
    """The data or display window of a frame made ``scale`` times larger (an upscaler)."""
    if not scale or scale == 1:
        return window
    x, y, width, height = window
    return (x * scale, y * scale, width * scale, height * scale)


def _fit_channels(declared: ImageSpec, image: ImageFile) -> Frame:
    """Repeat a one-channel image to the channels an input declares; keep others as they are."""
    if image.pixels.shape[0] == 1 and declared.channels > 1:
        return np.repeat(image.pixels, declared.channels, axis=0)
    return image.pixels


def _write_objects(path: Path, objects: list[dict[str, Any]]) -> None:
    """Write result objects as JSON, atomically; remove a stale sidecar when there are none."""
    if not objects:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.stem}.tmp-{secrets.token_hex(6)}{path.suffix}"
    try:
        temporary.write_text(json.dumps(objects, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _objects_pattern(pattern: FramePattern) -> FramePattern:
    """``out.####.exr`` → ``out.####.json``: where a frame's result objects are written."""
    head, dot, extension = pattern.suffix.rpartition(".")
    if dot and "/" not in extension and os.sep not in extension:
        suffix = f"{head}.json"
    else:
        suffix = f"{pattern.suffix}.json"
    return FramePattern(
        text=f"{pattern.prefix}{'#' * pattern.padding}{suffix}",
        prefix=pattern.prefix,
        padding=pattern.padding,
        suffix=suffix,
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, FrameServeError):
        return str(error)
    return f"{type(error).__name__}: {error}"
