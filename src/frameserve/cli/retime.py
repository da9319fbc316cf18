"""``frameserve retime``: slow motion, speed changes and speed ramps of a shot, by RIFE.

::

    frameserve retime --input 'plate.####.exr' --output 'slow.####.exr' --speed 0.5
    frameserve retime --input 'plate.####.exr' --output 'ramp.####.exr' --curve ramp.txt \\
        --frames 1001-1050 --knob scale=0.5

``--speed S`` plays the shot at a constant speed (0.5: half speed, twice as many frames): output
frame ``START + k`` shows source time ``FIRST + k * S``, where ``FIRST`` is the first source frame
on disk and ``START`` is ``--start`` (default ``FIRST``). ``--curve FILE`` gives the timing as a
table, one ``OUTPUT_FRAME SOURCE_TIME`` pair per line (Nuke's ASCII curve export of a retime
curve, or CSV). ``--frames`` makes only some of the output frames. Output frames at whole source
frames are copies; the others are made by the ``retime`` model from the two source frames
around them (``--knob scale=0.5`` for 4K, ``--knob ensemble=true``).

This module is the command line only; the work is :func:`frameserve.shots.retime.retime_sequence`
(how frames are skipped, resumed, checked, copied and written). Where the model runs
(``--local``, ``--server URL``, ``--ray ADDRESS``), ``--jobs``, ``--stop-after``, stopping on
Ctrl-C or ``SIGTERM`` and the exit status are as for ``frameserve run``
(:mod:`frameserve.cli.shot_command`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from frameserve.cli.flags import setting_default
from frameserve.cli.infer import parse_knob_texts
from frameserve.cli.progress import FrameProgress
from frameserve.cli.run import parse_channels
from frameserve.cli.shot_command import (
    DEFAULT_SERVER_JOBS,
    add_backend_flags,
    remote_backend,
    run_shot_command,
)
from frameserve.errors import ConfigError
from frameserve.media.sequences import FramePattern, format_frames, parse_frames
from frameserve.plugin.model import ModelSpec
from frameserve.shots.backends import Backend
from frameserve.shots.retime import (
    RETIME_MODEL,
    RetimeOptions,
    read_curve,
    retime_sequence,
    speed_timing,
)

__all__ = ["add_retime_parser"]

log = logging.getLogger(__name__)


def add_retime_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``retime`` subcommand on ``commands``; it sets ``args.run``."""
    retime = commands.add_parser(
        "retime",
        help="retime a shot (slow motion, speed ramps) with in-between frames made by RIFE",
        description=(
            "Write a shot at other times: frames at whole source frames are copied, the others "
            "made by the 'retime' model (RIFE) from the two source frames around them. Frames "
            "whose outputs exist are skipped, so a stopped retime resumes."
        ),
    )
    retime.add_argument("--input", required=True, metavar="PATTERN", help="source sequence")
    retime.add_argument("--output", required=True, metavar="PATTERN", help="output sequence")
    timing = retime.add_mutually_exclusive_group(required=True)
    timing.add_argument(
        "--speed",
        type=float,
        metavar="S",
        help="constant speed: 0.5 is half speed (twice the frames), 2 double speed",
    )
    timing.add_argument(
        "--curve",
        type=Path,
        metavar="FILE",
        help="timing table: one 'OUTPUT_FRAME SOURCE_TIME' pair per line (spaces or commas)",
    )
    retime.add_argument(
        "--start",
        type=int,
        metavar="FRAME",
        help="with --speed: the first output frame's number (default: the first source frame)",
    )
    retime.add_argument(
        "--frames",
        metavar="RANGE",
        help="output frames to make: 1001-1100, 1,5,10-20 (default: every frame of the timing)",
    )
    retime.add_argument(
        "--knob",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a knob of the retime model: scale (auto, 2, 1, 0.5, 0.25), ensemble, refine",
    )
    add_backend_flags(retime)
    retime.add_argument(
        "--channels", metavar="CHANNELS", help="channels read from the source: rgb, a layer..."
    )
    retime.add_argument(
        "--colourspace",
        "--colorspace",
        dest="colourspace",
        metavar="NAME",
        help="colourspace of the files (default: scene-linear)",
    )
    retime.add_argument("--overwrite", action="store_true", help="remake existing outputs")
    retime.add_argument(
        "--skip-missing", action="store_true", help="skip frames whose source files are missing"
    )
    retime.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help=f"frames in flight (default {setting_default(RetimeOptions, 'jobs')} local, "
        f"{DEFAULT_SERVER_JOBS} with --server or --ray)",
    )
    retime.add_argument("--half", action="store_true", help="write EXR outputs as half floats")
    stop_after = setting_default(RetimeOptions, "stop_after")
    retime.add_argument(
        "--stop-after",
        type=int,
        default=stop_after,
        metavar="N",
        help=f"stop after N frames in a row failed (default {stop_after}; 0: never)",
    )
    retime.set_defaults(run=_retime)


def _retime(args: argparse.Namespace) -> int:
    """Carry out ``frameserve retime`` from parsed arguments; return the exit status."""

    def work(backend: Backend) -> int:
        spec = backend.describe(RETIME_MODEL)
        options = _options(args, spec)
        progress = FrameProgress(sys.stderr, command="retime")
        return retime_sequence(backend, spec, options, progress=progress).exit_code

    return run_shot_command(args, work)


def _options(args: argparse.Namespace, spec: ModelSpec) -> RetimeOptions:
    source = FramePattern.parse(args.input)
    output = FramePattern.parse(args.output)
    if output.name(0) == source.name(0):
        raise ConfigError(f"--output {args.output!r} would overwrite the source; write elsewhere")
    if args.curve is not None:
        if args.start is not None:
            raise ConfigError("--start goes with --speed; a --curve names its output frames")
        timing = read_curve(args.curve)
    else:
        frames = source.frames_on_disk()
        if not frames:
            raise ConfigError(f"no files of {args.input!r} found")
        log.info("source frames on disk: %s", format_frames(frames))
        timing = speed_timing(frames, args.speed, start=args.start)
    if args.frames is not None:
        wanted = parse_frames(args.frames)
        unknown = [frame for frame in wanted if frame not in timing]
        if unknown:
            raise ConfigError(
                f"--frames {args.frames!r}: output frame(s) {format_frames(unknown)} are not in "
                f"the timing, which makes {format_frames(timing)}"
            )
        timing = {frame: timing[frame] for frame in wanted}
    jobs = args.jobs
    if jobs is None:
        remote = remote_backend(args)
        jobs = DEFAULT_SERVER_JOBS if remote else setting_default(RetimeOptions, "jobs")
    return RetimeOptions(
        input=source,
        output=output,
        timing=timing,
        knobs=parse_knob_texts(spec, args.knob),
        channels=None if args.channels is None else parse_channels(args.channels),
        colourspace=args.colourspace,
        overwrite=args.overwrite,
        skip_missing=args.skip_missing,
        jobs=int(jobs),
        half=args.half,
        stop_after=args.stop_after,
    )
