"""``frameserve run``: a model over whole shots (image sequences), in-process or on a server.

::

    frameserve run blur --input 'plate.####.exr' --output 'soft.####.exr' --frames 1001-1100 \\
        --knob size=4
    frameserve run difference --input a=left.%04d.exr --input b=right.%04d.exr \\
        --output diff.####.exr --frames 1001-1100 --server http://render7:8000

How a run goes:

1. The model's declaration comes from the backend: ``--local`` (the default) runs the model in
   this process (:class:`LocalBackend`); ``--server URL`` sends each frame to a frameserve
   HTTP server (:class:`ServerBackend`). ``--knob`` text is parsed against the declared knobs.
2. A frame whose every output file exists is skipped (unless ``--overwrite``), so a run that
   was stopped resumes where it was. Every other frame's input files are checked before any
   work starts: a missing one stops the run with the list of missing files, or, with
   ``--skip-missing``, those frames are skipped with a warning.
3. ``--jobs`` frames are in flight at once, each read, run and written by one worker thread;
   at most ``--jobs`` frames are held in memory. Outputs are written atomically (a file appears
   complete or not at all), with the first input's data window, display window and metadata
   when the sizes match; result objects go to a JSON sidecar beside the first output
   (``out.1001.exr`` → ``out.1001.json``). ``--colourspace`` names the colourspace the files
   are in; the runner converts to what the model wants and back, so outputs are in it too.
4. A failed frame is logged with its number and error and the run goes on; it stops early when
   ``--stop-after`` frames in a row failed, or at once on an error no frame can get past (an
   unknown model or knob, a model that cannot set up). Exit status: 0 when every frame is
   written or skipped, 1 when a frame failed. Ctrl-C stops at once: no partial file is left.

A progress line on stderr shows frames done, frames per second, the time left and the skipped
and failed counts: redrawn in place on a terminal, one line every few seconds otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch

from frameserve.cli_infer import parse_knob_texts
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
from frameserve.imageio import SUPPORTED_EXTENSIONS, ImageFile, read_image, write_image
from frameserve.knobs import (
    BoolKnob,
    ButtonKnob,
    ChoiceKnob,
    FloatKnob,
    IntKnob,
    KnobSpec,
    KnobValue,
    StringKnob,
)
from frameserve.model import ImageSpec, ModelSpec
from frameserve.registry import MODELS_ENV, ModelRegistry, model_folders_from_env
from frameserve.request import build_request
from frameserve.runner import Runner
from frameserve.sequences import FramePattern, format_frames, parse_frames

__all__ = [
    "Backend",
    "FrameTask",
    "LocalBackend",
    "Progress",
    "RunOptions",
    "RunReport",
    "ServerBackend",
    "add_run_parser",
    "knob_spec_from_config",
    "parse_channels",
    "run_sequence",
]

log = logging.getLogger(__name__)

Frame = npt.NDArray[np.float32]
"""A frame in the internal form, as numpy: float32 ``(C, H, W)``, top row first."""

DEFAULT_LOCAL_JOBS = 2  # one frame computing while the next is read and the last is written
DEFAULT_SERVER_JOBS = 4  # the server batches and runs requests in parallel: keep it fed
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
_REDRAW_SECONDS = 0.1  # a progress line on a terminal changes at most this often

# Errors that every frame would hit alike: the run stops at the first one.
_FATAL_ERRORS = (
    ConfigError,
    ModelNotFoundError,
    KnobError,
    ColourError,
    ModelLoadError,
    ModelSetupError,
)


# -- backends --------------------------------------------------------------------------------


class Backend(Protocol):
    """Where a run's frames are computed; the run loop is the same for every backend."""

    def describe(self, model: str) -> ModelSpec:
        """Return the declaration of ``model`` (inputs, outputs and knob specs)."""
        ...

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` on one frame per input (float32 ``(C, H, W)``, by input name).

        Returns the output frames by name (float32 ``(C, H, W)``) and the result objects as
        JSON-friendly dicts (``{"name": ..., "records": [...]}``).
        """
        ...


class LocalBackend:
    """Runs models in this process: the registry's models, one shared :class:`Runner`.

    ::

        backend = LocalBackend(ModelRegistry(), device="cuda")
        outputs, objects = backend.infer("blur", {"image": frame}, {"size": 4.0},
                                         colourspace=None)
    """

    def __init__(self, registry: ModelRegistry, *, device: str = "cpu") -> None:
        self.registry = registry
        self.runner = Runner(registry, device=device)  # thread-safe: shared by every job

    def describe(self, model: str) -> ModelSpec:
        """Return the declaration of ``model``; raise :class:`ModelNotFoundError`."""
        spec = self.registry.get(model).spec
        assert spec is not None  # get() returns loaded models only
        return spec

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` in-process; see :meth:`Backend.infer`."""
        spec = self.describe(model)
        tensors = [torch.from_numpy(frames[declared.name]) for declared in spec.inputs]
        request = build_request(
            spec, tensors, knobs, colourspace=colourspace, client="frameserve run", protocol="run"
        )
        result = self.runner.run(request)
        outputs = {name: tensor.numpy() for name, tensor in result.frames.items()}
        return outputs, [obj.to_data() for obj in result.objects]


class ServerBackend:
    """Sends each frame to a frameserve HTTP server with :class:`frameserve.client.Client`.

    Frames cross the wire as ``(H, W, C)``; they are converted from and to the internal
    ``(C, H, W)`` form here, at the boundary.

    ::

        backend = ServerBackend("http://render7:8000", timeout=600.0)
    """

    def __init__(self, url: str, *, timeout: float = 600.0, retries: int = 2) -> None:
        from frameserve.client import Client  # only a server run needs the HTTP client

        self.url = url
        self._client = Client(url, timeout=timeout, retries=retries)

    def describe(self, model: str) -> ModelSpec:
        """Ask the server for the declaration of ``model``."""
        info = self._client.model(model)
        if not info.ready:
            raise ModelLoadError(f"model {model!r} failed to load on {self.url}: {info.reason}")
        return ModelSpec(
            id=info.name,
            label=info.label,
            description="",
            inputs=tuple(ImageSpec(name, channels) for name, channels in info.inputs),
            outputs=tuple(ImageSpec(name, channels) for name, channels in info.outputs),
            knobs=tuple(knob_spec_from_config(config) for config in info.knobs),
        )

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` on the server; see :meth:`Backend.infer`."""
        hwc = {
            name: np.ascontiguousarray(frame.transpose(1, 2, 0)) for name, frame in frames.items()
        }
        values = cast("Mapping[str, KnobValue]", knobs)  # checked by the knob specs
        result = self._client.infer(model, hwc, knobs=values, colourspace=colourspace)
        outputs = {
            name: np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32)
            for name, frame in result.frames.items()
        }
        return outputs, [dict(obj) for obj in result.objects]

    def close(self) -> None:
        """Close the client's connections."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()


_KNOB_TYPES: dict[str, type[KnobSpec]] = {
    "bool": BoolKnob,
    "button": ButtonKnob,
    "int": IntKnob,
    "float": FloatKnob,
    "string": StringKnob,
    "choice": ChoiceKnob,
}


def knob_spec_from_config(config: Mapping[str, Any]) -> KnobSpec:
    """Return the knob spec a server describes as ``config`` (``KnobSpec.describe()`` data).

    A knob type this version does not know becomes a :class:`StringKnob`: its ``--knob`` text
    is sent as it is and the server validates it.

    Raises:
        ConfigError: the description lacks a name, or its values do not make a valid spec.
    """
    name = config.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"the server described a knob without a name: {dict(config)!r}")
    kind = str(config.get("type", ""))
    options: dict[str, Any] = {"help": str(config.get("help") or "")}
    options["label"] = str(config.get("label") or "")
    cls = _KNOB_TYPES.get(kind)
    if cls is None:
        log.warning("knob %r has type %r, unknown here; its value is sent as text", name, kind)
        return StringKnob(name, default="", **options)
    if "default" in config and config["default"] is not None:
        options["default"] = config["default"]
    if cls in (IntKnob, FloatKnob):
        options["min"] = config.get("min")
        options["max"] = config.get("max")
    if cls is ChoiceKnob:
        options["choices"] = tuple(config.get("choices") or ())
    return cls(name, **options)


# -- what a run is ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """One checked run: which files, frames and knob values, and how to write.

    Attributes:
        model: the model id.
        inputs: a pattern per declared input, by input name (every input has one).
        outputs: a pattern per output to write, by output name; outputs left out are dropped.
        frames: the frames to process, sorted.
        knobs: typed knob values (see :func:`frameserve.cli_infer.parse_knob_texts`).
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

    A temporal model will need neighbour frames: ``inputs`` then grows to hold the paths of
    ``frame - n .. frame + n`` per input, and only :class:`_FrameProcessor` reads them.
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
    tasks = [_task(options, frame) for frame in options.frames]
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


def _task(options: RunOptions, frame: int) -> FrameTask:
    outputs = {name: pattern.path(frame) for name, pattern in options.outputs.items()}
    first = next(iter(options.outputs.values()))
    return FrameTask(
        frame=frame,
        inputs={name: pattern.path(frame) for name, pattern in options.inputs.items()},
        outputs=outputs,
        objects=_objects_pattern(first).path(frame),
    )


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
        files = {
            name: read_image(path, channels=self.options.channels)
            for name, path in task.inputs.items()
        }
        frames = {
            declared.name: _fit_channels(declared, files[declared.name])
            for declared in self.spec.inputs
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
        for name, path in task.outputs.items():
            self._write(path, outputs[name], first)
        log.info(
            "frame %d: %s in %.2f s",
            task.frame,
            ", ".join(str(p) for p in task.outputs.values()),
            time.perf_counter() - started,
        )

    def _write(self, path: Path, pixels: Frame, source: ImageFile | None) -> None:
        same_size = source is not None and source.pixels.shape[1:] == pixels.shape[1:]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(
            path,
            pixels,
            metadata=source.metadata if source is not None and same_size else None,
            data_window=source.data_window if source is not None and same_size else None,
            display_window=source.display_window if source is not None and same_size else None,
            pixel_type="half" if self.options.half and path.suffix.lower() == ".exr" else "float",
        )


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


# -- progress --------------------------------------------------------------------------------


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


# -- the command line ------------------------------------------------------------------------


def parse_channels(text: str) -> tuple[str, ...]:
    """Return the channel names ``--channels`` text stands for.

    - a comma list: ``R,G,B,A`` or ``diffuse.R,diffuse.G`` (a trailing comma makes a list of
      one: ``Z,``);
    - ``rgb`` / ``rgba`` (any case): ``R,G,B`` / ``R,G,B,A``;
    - ``LAYER.rgb`` / ``LAYER.rgba``: that layer's ``R,G,B`` / ``R,G,B,A``;
    - one channel name whose last part is in capitals: ``Z``, ``A``, ``depth.Z``;
    - any other name is a layer: ``diffuse`` → ``diffuse.R,diffuse.G,diffuse.B``.

    Raises:
        ConfigError: the text is empty or names a channel twice.
    """
    text = text.strip()
    if "," in text:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
    elif text.lower() in ("rgb", "rgba"):
        names = tuple(text.upper())
    elif text.rpartition(".")[2].lower() in ("rgb", "rgba") and "." in text:
        layer, _, letters = text.rpartition(".")
        names = tuple(f"{layer}.{letter}" for letter in letters.upper())
    elif text and text.rpartition(".")[2].isupper():
        names = (text,)
    elif text:
        names = tuple(f"{text}.{letter}" for letter in "RGB")
    else:
        names = ()
    if not names:
        raise ConfigError(
            "--channels is empty: write channel names (R,G,B,A), rgb, rgba or a layer (diffuse)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"--channels {text!r} names a channel twice")
    return names


def add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``run`` subcommand on ``commands``; it sets ``args.run``."""
    run = commands.add_parser(
        "run",
        help="run a model over image sequences (whole shots), in-process or on a server",
        description=(
            "Run a model over every frame of image sequences. Frames whose outputs exist are "
            "skipped, so a stopped run resumes. Patterns: '####' or '@@@@' (one per digit of "
            "zero padding) or '%04d'."
        ),
    )
    run.add_argument("model", help="model id (see 'frameserve models')")
    run.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="[NAME=]PATTERN",
        help="input sequence, e.g. 'plate.####.exr' for the first input, NAME=PATTERN for "
        "an input by name (repeatable)",
    )
    run.add_argument(
        "--output",
        dest="outputs",
        action="append",
        required=True,
        metavar="[NAME=]PATTERN",
        help="output sequence for the first output, or NAME=PATTERN by output name "
        "(repeatable; outputs not named are not written)",
    )
    run.add_argument(
        "--frames",
        metavar="RANGE",
        help="frames to process: 1001-1100, 1001-1100x2, 1,5,10-20 (default: every frame of "
        "the first input found on disk)",
    )
    run.add_argument(
        "--knob", action="append", default=[], metavar="NAME=VALUE", help="knob value (repeatable)"
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        metavar="URL",
        help=f"send frames to a frameserve HTTP server, e.g. {DEFAULT_SERVER_URL} (default: "
        "--local)",
    )
    where.add_argument(
        "--local", action="store_true", help="run the model in this process (the default)"
    )
    run.add_argument(
        "--channels",
        metavar="CHANNELS",
        help="channels read from the inputs: R,G,B,A, rgb, rgba, or a layer such as diffuse "
        "(default: every channel; the model takes the first ones it declares)",
    )
    run.add_argument(
        "--colourspace",
        "--colorspace",
        dest="colourspace",
        metavar="NAME",
        help="colourspace the files are in, and the outputs are written in (an OpenColorIO "
        "name or alias such as acescg or srgb; default: scene-linear)",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="recompute frames whose outputs exist"
    )
    run.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip frames with a missing input file instead of stopping before any work",
    )
    run.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help=f"frames in flight (default {DEFAULT_LOCAL_JOBS} local, {DEFAULT_SERVER_JOBS} "
        "with --server)",
    )
    run.add_argument("--half", action="store_true", help="write EXR outputs as half floats")
    run.add_argument(
        "--stop-after",
        type=int,
        default=10,
        metavar="N",
        help="stop after N frames in a row failed (default 10; 0: never)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --server: seconds to wait for one frame's answer (default 600)",
    )
    run.add_argument("--device", help="torch device to run the model on (local runs; default cpu)")
    run.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="DIR",
        help=f"a folder of models (repeatable; ${MODELS_ENV} adds more; local runs)",
    )
    run.add_argument("--no-builtins", action="store_true", help="leave out the built-in models")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Carry out ``frameserve run`` from parsed arguments; return the exit status."""
    backend = _backend(args)
    try:
        spec = backend.describe(args.model)
        options = _options(args, spec)
        report = run_sequence(backend, spec, options)
    finally:
        if isinstance(backend, ServerBackend):
            backend.close()
    return report.exit_code


def _backend(args: argparse.Namespace) -> Backend:
    if args.server is None:
        registry = ModelRegistry(
            [*args.models, *model_folders_from_env()], builtins=not args.no_builtins
        )
        return LocalBackend(registry, device=args.device or "cpu")
    ignored = [
        flag
        for flag, given in (
            ("--device", args.device is not None),
            ("--models", bool(args.models)),
            ("--no-builtins", args.no_builtins),
        )
        if given
    ]
    if ignored:
        log.warning("%s: ignored with --server (the server has its own)", ", ".join(ignored))
    return ServerBackend(args.server, timeout=args.timeout)


def _options(args: argparse.Namespace, spec: ModelSpec) -> RunOptions:
    inputs = _patterns(args.inputs, [i.name for i in spec.inputs], "--input", spec.id)
    missing = [i.name for i in spec.inputs if i.name not in inputs]
    if missing:
        raise ConfigError(
            f"model {spec.id!r} needs a sequence for input(s) {', '.join(map(repr, missing))}: "
            f"add --input {missing[0]}=PATTERN"
        )
    outputs = _patterns(args.outputs, [o.name for o in spec.outputs], "--output", spec.id)
    dropped = [o.name for o in spec.outputs if o.name not in outputs]
    if dropped:
        log.info("outputs not written (no --output NAME=PATTERN): %s", ", ".join(dropped))
    _check_outputs(inputs, outputs)
    return RunOptions(
        model=spec.id,
        inputs=inputs,
        outputs=outputs,
        frames=_frames(args.frames, inputs),
        knobs=parse_knob_texts(spec, args.knob),
        channels=None if args.channels is None else parse_channels(args.channels),
        colourspace=args.colourspace,
        overwrite=args.overwrite,
        skip_missing=args.skip_missing,
        jobs=args.jobs
        if args.jobs is not None
        else DEFAULT_LOCAL_JOBS
        if args.server is None
        else DEFAULT_SERVER_JOBS,
        half=args.half,
        stop_after=args.stop_after,
    )


def _patterns(
    texts: Sequence[str], names: Sequence[str], flag: str, model: str
) -> dict[str, FramePattern]:
    """Map ``[NAME=]PATTERN`` texts to the declared names; a bare pattern is the first's."""
    kind = "input" if flag == "--input" else "output"
    patterns: dict[str, FramePattern] = {}
    for text in texts:
        name, sep, rest = text.partition("=")
        if sep and name in names:
            key, pattern = name, rest
        elif names:
            key, pattern = names[0], text
        else:
            raise ConfigError(f"{flag} {text!r}: model {model!r} has no {kind}s")
        if key in patterns:
            raise ConfigError(
                f"{flag} {text!r}: {kind} {key!r} already has a sequence; name each {kind} "
                f"with NAME=PATTERN, NAME one of: {', '.join(names)}"
            )
        patterns[key] = FramePattern.parse(pattern)
    return {name: patterns[name] for name in names if name in patterns}  # declared order


def _check_outputs(inputs: Mapping[str, FramePattern], outputs: Mapping[str, FramePattern]) -> None:
    for pattern in outputs.values():
        extension = pattern.path(0).suffix.lower()
        if extension not in SUPPORTED_EXTENSIONS:
            allowed = ", ".join(sorted(SUPPORTED_EXTENSIONS))
            raise ConfigError(
                f"--output {str(pattern)!r}: cannot write "
                f"{extension or 'files without an extension'}; the extension must be one of "
                f"{allowed}"
            )
    read = {os.path.abspath(p.name(0)): n for n, p in inputs.items()}
    written: dict[str, str] = {}
    for name, pattern in outputs.items():
        target = os.path.abspath(pattern.name(0))
        if target in read:
            raise ConfigError(
                f"output {name!r} would overwrite input {read[target]!r} ({pattern}); "
                "write to another sequence"
            )
        if target in written:
            raise ConfigError(f"outputs {written[target]!r} and {name!r} have the same sequence")
        written[target] = name


def _frames(text: str | None, inputs: Mapping[str, FramePattern]) -> list[int]:
    if text is not None:
        return parse_frames(text)
    if not inputs:
        raise ConfigError("give the frames to make with --frames (the model has no inputs)")
    first = next(iter(inputs.values()))
    frames = first.frames_on_disk()
    if not frames:
        raise ConfigError(f"no files of {str(first)!r} found; give the frames with --frames")
    log.info("frames found on disk for %s: %s", first, format_frames(frames))
    return frames
