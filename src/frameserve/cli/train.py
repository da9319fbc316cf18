"""``frameserve train``, ``jobs``, ``cancel``, ``resume`` and ``export``: training jobs.

::

    frameserve train --input 'in.####.exr' --target 'gt.####.exr' --frames 1001,1010 \\
        --steps 500 --name degrain --server http://render7:8000 --follow
    frameserve train ... --upload              # send the frames: the server cannot read them
    frameserve train --labels shots/ --name daynight      # a label job (class folders)
    frameserve train ... --local               # in this process, with a progress line
    frameserve jobs [--json]                   # state, step, loss, steps/s, ETA of each job
    frameserve cancel degrain; frameserve resume degrain --steps 1000 --follow
    frameserve export degrain --out studio_models/degrain --format pt2
    frameserve jobs --server https://frames.studio:8000 --token fs_...   # or $FRAMESERVE_TOKEN

**Where frames come from.** Without ``--upload`` the job names the frame files by absolute
path, and the server reads them: right when it shares the disks (a studio file server, or
this machine). With ``--upload`` every frame is read here and uploaded first
(``POST /v2/training/uploads``); uploads of a submission that fails are deleted again. When
the server answers that it cannot read a frame, the message suggests ``--upload``.

Every command talks to ``--server`` (default ``http://127.0.0.1:8000``) through
:class:`frameserve.client.Client`, with ``--token`` (default ``$FRAMESERVE_TOKEN``) where the
server has tokens; ``train --local`` and ``export --local`` work on a jobs
folder in this process instead. Progress (``--follow``, ``--local``) is the command line's one
progress display (:class:`frameserve.cli.progress.StepProgress`); flag defaults come from
:class:`~frameserve.training.settings.TrainingSettings`. Exit status: 0 when it went well
(with ``--follow``: the job is done), 1 when the job failed or was cancelled or the server
refused, 2 for wrong flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from frameserve.cli.flags import setting_default
from frameserve.cli.progress import StepProgress, clock_text, number_text
from frameserve.cli.token import add_token_flag
from frameserve.client import BadRequestError, Client, TrainingJob
from frameserve.errors import ConfigError, FrameServeError
from frameserve.media.sequences import FramePattern, parse_frames
from frameserve.serve.settings import DEFAULT_JOBS_FOLDER
from frameserve.training.settings import TrainingSettings

__all__ = ["DEFAULT_SERVER", "add_train_parsers"]

DEFAULT_SERVER = "http://127.0.0.1:8000"
#: Seconds between two looks at a followed job.
FOLLOW_INTERVAL = 0.5
_UNREADABLE = "cannot read"  # the server cannot see the file (or may not read it)


def add_train_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``train``, ``jobs``, ``cancel``, ``resume`` and ``export`` on ``commands``."""
    train = commands.add_parser(
        "train",
        help="train a network from example frame pairs (or labelled images)",
        description="Submit a training job to a server (or run it here with --local).",
    )
    train.add_argument("--name", required=True, help="job name (also the served model's id)")
    train.add_argument("--input", help="input sequence, e.g. 'in.####.exr'")
    train.add_argument("--target", help="target sequence, e.g. 'gt.####.exr'")
    train.add_argument("--frames", help="training frames, e.g. '1001,1010' or '1001-1010'")
    train.add_argument(
        "--validation-frames", metavar="FRAMES", help="frames of --input/--target to validate on"
    )
    train.add_argument("--labels", metavar="DIR", help="a label job: a folder of class folders")
    train.add_argument(
        "--values", metavar="TABLE", help="a number job: a CSV or JSON table of file to value"
    )
    train.add_argument(
        "--validation", metavar="PATH", help="--labels/--values: another folder or table"
    )
    steps = setting_default(TrainingSettings, "steps")
    train.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    train.add_argument(
        "--setting", action="append", default=[], metavar="NAME=JSON",
        help="another training setting, e.g. crop_size=32 or network=medium (repeatable)",
    )  # fmt: skip
    where = train.add_mutually_exclusive_group()
    where.add_argument("--server", help=f"submit to this server (default {DEFAULT_SERVER})")
    where.add_argument("--local", action="store_true", help="train in this process")
    train.add_argument(
        "--upload", action="store_true", help="upload the frames (the server cannot read them)"
    )
    train.add_argument("--follow", action="store_true", help="show progress until the job ends")
    train.add_argument(
        "--jobs-folder", type=Path, default=DEFAULT_JOBS_FOLDER, help="--local: job folders"
    )
    train.set_defaults(run=_train)

    jobs = commands.add_parser("jobs", help="list a server's training jobs and their progress")
    jobs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    jobs.set_defaults(run=_jobs)
    cancel = commands.add_parser("cancel", help="stop a training job (a checkpoint is kept)")
    cancel.add_argument("name", help="the job")
    cancel.set_defaults(run=_cancel)
    resume = commands.add_parser("resume", help="go on with a stopped training job")
    resume.add_argument("name", help="the job")
    resume.add_argument("--steps", type=int, help="a new total of steps (to train further)")
    resume.add_argument("--follow", action="store_true", help="show progress until it ends")
    resume.set_defaults(run=_resume)
    for sub in (jobs, cancel, resume):
        sub.add_argument("--server", default=None, help=f"the server (default {DEFAULT_SERVER})")

    from frameserve.cli.export import add_export_parser

    export = add_export_parser(commands, default_server=DEFAULT_SERVER)
    for sub in (train, jobs, cancel, resume, export):
        add_token_flag(sub)
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")


# -- train -------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    kind = _kind(args)
    if args.local:
        return _train_local(args, kind)
    with _client(args) as client:
        settings = _settings(args)
        if kind == "image":
            pairs, validation = _pairs(args, absolute=not args.upload)
            try:
                job = client.training.submit(
                    args.name,
                    pairs,
                    validation=validation,
                    settings=settings,
                    upload=args.upload,
                    on_upload=_upload_note if args.upload else None,
                )
            except BadRequestError as exc:
                if args.upload or _UNREADABLE not in exc.message:
                    raise
                raise FrameServeError(
                    f"{exc}\nhint: if the server cannot see these files, pass --upload to send "
                    "them from here"
                ) from exc
        else:
            path = os.path.abspath(args.labels if kind == "label" else args.values)
            checks = os.path.abspath(args.validation) if args.validation else None
            job = client.training.submit_labelled(
                args.name, kind, path, validation=checks, settings=settings
            )
        print(f"submitted job {job.name!r} ({job.total_steps} steps on {job.device})")
        return _follow(client, args.name) if args.follow else 0


def _client(args: argparse.Namespace) -> Client:
    """A client of ``--server`` with ``--token`` (``$FRAMESERVE_TOKEN`` when not given)."""
    return Client(args.server or DEFAULT_SERVER, token=args.token)


def _kind(args: argparse.Namespace) -> str:
    """Which job the flags describe; refuse mixtures (exit 2)."""
    image = [flag for flag in ("input", "target", "frames") if getattr(args, flag)]
    labelled = [flag for flag in ("labels", "values") if getattr(args, flag)]
    if len(labelled) > 1 or (labelled and image):
        raise ConfigError(
            "give --input/--target/--frames (an image job), --labels or --values, not several"
        )
    if labelled:
        if args.validation_frames or args.upload:
            flag = "--validation-frames" if args.validation_frames else "--upload"
            raise ConfigError(f"{flag} is for image jobs; --{labelled[0]} is read where it runs")
        return "label" if labelled[0] == "labels" else "number"
    missing = [f"--{flag}" for flag in ("input", "target", "frames") if not getattr(args, flag)]
    if missing:
        raise ConfigError(
            f"an image job needs --input, --target and --frames (missing {', '.join(missing)}); "
            "a label job needs --labels, a number job --values"
        )
    if args.validation:
        raise ConfigError("--validation is for --labels/--values; use --validation-frames")
    if args.upload and args.local:
        raise ConfigError("--upload sends frames to a server; --local reads them here")
    return "image"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"steps": args.steps}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--setting {item!r}: write NAME=VALUE")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    return settings


def _pairs(
    args: argparse.Namespace, *, absolute: bool
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    source, target = FramePattern.parse(args.input), FramePattern.parse(args.target)

    def paths(frames: str | None) -> list[tuple[str, str]]:
        found = []
        for frame in parse_frames(frames) if frames else []:
            pair = (str(source.path(frame)), str(target.path(frame)))
            found.append((os.path.abspath(pair[0]), os.path.abspath(pair[1])) if absolute else pair)
        return found

    return paths(args.frames), paths(args.validation_frames)


def _upload_note(done: int, total: int, filename: str) -> None:
    sys.stderr.write(f"uploading {done + 1}/{total}: {filename}\n")


def _train_local(args: argparse.Namespace, kind: str) -> int:
    from frameserve.training import ImagePairs, Trainer, TrainingProgress
    from frameserve.training.jobs import LabelSource

    settings = TrainingSettings.from_dict(_settings(args))
    folder = Path(args.jobs_folder).expanduser() / args.name
    line = StepProgress(sys.stderr)

    def report(progress: TrainingProgress) -> None:
        eta = progress.eta_seconds if math.isfinite(progress.eta_seconds) else None
        line.show(
            progress.step,
            progress.total_steps,
            loss=progress.train_loss,
            validation_loss=progress.validation_loss,
            speed=progress.steps_per_second,
            eta=eta,
        )

    if kind == "image":
        train, validation = _pairs(args, absolute=True)
        data: Any = ImagePairs.from_files(train, validation)
    else:
        data = LabelSource(kind, args.labels or args.values, args.validation).read()
    if folder.is_dir() and any((folder / "checkpoints").glob("step_*.pt")):
        trainer = Trainer.resume(folder, data, on_progress=report, steps=settings.steps)
    else:
        trainer = Trainer(data, settings, job_dir=folder, name=args.name, on_progress=report)
    try:
        trainer.run()
    finally:
        line.end()
        _record_local_job(folder, args.name, settings, done=trainer.step_count >= settings.steps)
    print(f"job {args.name!r}: {trainer.step_count} steps, checkpoints in {folder}")
    return 0


def _record_local_job(folder: Path, name: str, settings: TrainingSettings, *, done: bool) -> None:
    """Leave the job's record beside its checkpoints, as a server's job has: a server started
    on the jobs folder lists and serves it too (its frames are not kept: it cannot be resumed
    there)."""
    from frameserve.training.jobs.store import JobRecord, JobState

    if not (folder / "job.json").is_file():
        return  # stopped before the trainer was built: nothing to serve
    JobRecord(
        folder=folder,
        name=name,
        state=JobState.DONE if done else JobState.CANCELLED,
        files=None,
        settings=settings.to_dict(),
        device=settings.device,
    ).save()


# -- following, listing, cancelling, resuming --------------------------------------------------


def _follow(client: Client, name: str) -> int:
    """Show job ``name``'s progress until it ends; 0 when it is done."""
    line = StepProgress(sys.stderr)

    def show(job: TrainingJob) -> None:
        line.show(
            job.step,
            job.total_steps,
            loss=job.loss,
            validation_loss=job.validation_loss,
            speed=job.steps_per_second,
            eta=job.eta_seconds,
            state=job.state,
            force=job.finished,
        )

    try:
        job = client.training.wait(name, interval=FOLLOW_INTERVAL, on_progress=show)
    except KeyboardInterrupt:
        line.end()
        print(f"stopped following; job {name!r} goes on (frameserve cancel {name})")
        return 130
    line.end()
    if job.error:
        print(f"job {name!r} failed: {job.error}", file=sys.stderr)
    print(f"job {name!r}: {job.state} at step {job.step}/{job.total_steps}")
    return 0 if job.state == "done" else 1


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.training.jobs()
    if args.json:
        print(json.dumps([_job_data(job) for job in jobs], indent=2))
        return 0
    rows = [("NAME", "STATE", "STEP", "LOSS", "VAL LOSS", "STEPS/S", "ETA", "DEVICE")]
    for job in jobs:
        rows.append(
            (
                job.name,
                job.state,
                f"{job.step}/{job.total_steps}",
                number_text(job.loss),
                number_text(job.validation_loss),
                f"{job.steps_per_second:.1f}" if job.steps_per_second else "-",
                clock_text(job.eta_seconds),
                job.device,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    for job in jobs:
        if job.error:
            print(f"{job.name}: {job.error}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.training.cancel(args.name)
    if job.state == "running":
        print(f"job {job.name!r}: stopping after its current step")
    else:
        kept = f" (checkpoint {job.checkpoints[-1]})" if job.checkpoints else ""
        print(f"job {job.name!r}: {job.state} at step {job.step}/{job.total_steps}{kept}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.training.resume(args.name, steps=args.steps)
        print(f"job {job.name!r}: {job.state} from step {job.step} of {job.total_steps}")
        return _follow(client, args.name) if args.follow else 0


def _job_data(job: TrainingJob) -> dict[str, Any]:
    return dataclasses.asdict(job)
