"""``frameserve run``: a model over whole shots (image sequences), in-process or on a server.

::

    frameserve run blur --input 'plate.####.exr' --output 'soft.####.exr' --frames 1001-1100 \\
        --knob size=4
    frameserve run difference --input a=left.%04d.exr --input b=right.%04d.exr \\
        --output diff.####.exr --frames 1001-1100 --server http://render7:8000

This module is the command line only: it parses the flags into a backend and checked
:class:`~frameserve.shots.run.RunOptions`, then hands them to
:func:`~frameserve.shots.run.run_sequence`.

- ``--local`` (the default) runs the model in this process
  (:class:`~frameserve.shots.backends.LocalBackend`); ``--server URL`` sends each frame to a
  frameserve HTTP server (:class:`~frameserve.shots.backends.ServerBackend`); ``--ray ADDRESS``
  fans the frames over the model's replicas on a Ray cluster
  (:class:`~frameserve.shots.cluster.RayBackend`). The model's
  declaration comes from the backend, and ``--knob`` text is parsed against its knobs.
- ``--input`` and ``--output`` patterns are matched to the declared inputs and outputs;
  without ``--frames``, the frames are those of the first input found on disk.

How frames are skipped, checked, run in parallel (``--jobs``) and written, how failures stop
a run (``--stop-after``) and what the exit status is: see :mod:`frameserve.shots.run`.
A progress line on stderr (:class:`frameserve.cli.progress.FrameProgress`) shows frames done,
frames per second, the time left and the skipped and failed counts.

**Stopping.** Ctrl-C (exit status 130) and ``SIGTERM`` (exit status 143) stop the run at once:
frames in flight write nothing more, and the temporary files of writes in progress are removed
(:func:`frameserve.media.atomic.remove_pending`). A run killed outright (``SIGKILL``) cannot
clean up; the next run in the same output folders removes what it left.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from frameserve.cli.flags import setting_default
from frameserve.cli.infer import parse_knob_texts
from frameserve.cli.progress import FrameProgress
from frameserve.cli.shot_command import (
    DEFAULT_SERVER_JOBS,
    TERMINATED_EXIT_CODE,
    add_backend_flags,
    remote_backend,
    run_shot_command,
)
from frameserve.errors import ConfigError
from frameserve.media.imageio import SUPPORTED_EXTENSIONS
from frameserve.media.sequences import FramePattern, format_frames, parse_frames
from frameserve.plugin.model import ModelSpec
from frameserve.shots.backends import Backend
from frameserve.shots.run import RunOptions, run_sequence

__all__ = ["TERMINATED_EXIT_CODE", "add_run_parser", "parse_channels"]

log = logging.getLogger(__name__)


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
    add_backend_flags(run)
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
        help="colourspace the input files are in, and the outputs are written in unless "
        "--output-colourspace says otherwise (an OpenColorIO name or alias such as acescg or "
        "srgb; default: each sequence's own, as Nuke's Read decides it: what its files declare, "
        "else sRGB for 8/16-bit integer files and scene-linear for float ones)",
    )
    run.add_argument(
        "--output-colourspace",
        "--output-colorspace",
        dest="output_colourspace",
        metavar="NAME",
        help="colourspace the outputs are written in (default: --colourspace if given, else "
        "each output file type's: sRGB for PNG, JPEG, TIFF and DPX, scene-linear for EXR)",
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
        help=f"frames in flight (default {setting_default(RunOptions, 'jobs')} local, "
        f"{DEFAULT_SERVER_JOBS} with --server or --ray)",
    )
    run.add_argument("--half", action="store_true", help="write EXR outputs as half floats")
    stop_after = setting_default(RunOptions, "stop_after")
    run.add_argument(
        "--stop-after",
        type=int,
        default=stop_after,
        metavar="N",
        help=f"stop after N frames in a row failed (default {stop_after}; 0: never)",
    )
    run.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Carry out ``frameserve run`` from parsed arguments; return the exit status."""

    def work(backend: Backend) -> int:
        spec = backend.describe(args.model)
        options = _options(args, spec)
        return run_sequence(backend, spec, options, progress=FrameProgress(sys.stderr)).exit_code

    return run_shot_command(args, work)


def _options(args: argparse.Namespace, spec: ModelSpec) -> RunOptions:
    # A temporal model's neighbour inputs (NAME@-1 ...) come from NAME's sequence.
    names = [i.name for i in spec.inputs if spec.input_source(i.name)[1] == 0]
    inputs = _patterns(args.inputs, names, "--input", spec.id)
    optional = {i.name for i in spec.inputs if i.optional}
    missing = [name for name in names if name not in inputs and name not in optional]
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
        output_colourspace=args.output_colourspace or args.colourspace,
        overwrite=args.overwrite,
        skip_missing=args.skip_missing,
        jobs=_jobs(args),
        half=args.half,
        stop_after=args.stop_after,
    )


def _jobs(args: argparse.Namespace) -> int:
    """``--jobs``, else the default for where the model runs."""
    if args.jobs is not None:
        return int(args.jobs)
    return DEFAULT_SERVER_JOBS if remote_backend(args) else int(setting_default(RunOptions, "jobs"))


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
