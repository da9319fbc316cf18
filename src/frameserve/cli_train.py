"""``frameserve train``, ``jobs``, ``cancel`` and ``resume``: training from the command line.

::

    frameserve train --input 'in.####.exr' --target 'gt.####.exr' --frames 1001,1010 \\
        --steps 500 --name degrain --local            # in this process, with a progress line
    frameserve train ... --server http://host:8000 --follow   # on a server, polling progress
    frameserve jobs --server http://host:8000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from frameserve.errors import ConfigError, FrameServeError
from frameserve.sequences import FramePattern, parse_frames
from frameserve.settings import DEFAULT_JOBS_FOLDER

__all__ = ["add_train_parsers"]

DEFAULT_SERVER = "http://127.0.0.1:8000"
_FINAL = ("done", "failed", "cancelled")


def add_train_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``train``, ``jobs``, ``cancel`` and ``resume`` on ``commands``."""
    train = commands.add_parser("train", help="train a network from example frame pairs")
    train.add_argument("--input", required=True, help="input sequence, e.g. 'in.####.exr'")
    train.add_argument("--target", required=True, help="target sequence, e.g. 'gt.####.exr'")
    train.add_argument("--frames", required=True, help="frames, e.g. '1001,1010' or '1001-1010'")
    train.add_argument("--steps", type=int, default=2000, help="training steps")
    train.add_argument("--name", required=True, help="job name (also the served model's id)")
    train.add_argument(
        "--setting", action="append", default=[], metavar="NAME=JSON",
        help="another training setting, e.g. crop_size=32 (repeatable)",
    )  # fmt: skip
    where = train.add_mutually_exclusive_group()
    where.add_argument("--server", help=f"submit to this server (default {DEFAULT_SERVER})")
    where.add_argument("--local", action="store_true", help="train in this process")
    train.add_argument("--follow", action="store_true", help="poll the job until it ends")
    train.add_argument(
        "--jobs-folder", type=Path, default=DEFAULT_JOBS_FOLDER, help="--local: job folders"
    )
    train.set_defaults(run=_train)
    jobs = commands.add_parser("jobs", help="list a server's training jobs")
    jobs.set_defaults(run=_jobs)
    subs = [train, jobs]
    for action in ("cancel", "resume"):
        sub = commands.add_parser(action, help=f"{action} a training job on a server")
        sub.add_argument("name", help="the job")
        sub.set_defaults(run=_cancel if action == "cancel" else _resume)
        subs.append(sub)
    for sub in subs:
        if sub is not train:
            sub.add_argument("--server", default=None, help=f"default {DEFAULT_SERVER}")
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"steps": args.steps}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--setting {item!r}: write NAME=VALUE")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    return settings


def _pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    source, target = FramePattern.parse(args.input), FramePattern.parse(args.target)
    return [(str(source.path(f)), str(target.path(f))) for f in parse_frames(args.frames)]


def _train(args: argparse.Namespace) -> int:
    if args.local:
        return _train_local(args)
    body = {"name": args.name, "pairs": _pairs(args), "settings": _settings(args)}
    server = args.server or DEFAULT_SERVER
    job = _call(server, "POST", "/v2/training/jobs", body)
    print(f"submitted job {job['name']!r} ({job['total_steps']} steps)")
    return _follow(server, args.name) if args.follow else 0


def _train_local(args: argparse.Namespace) -> int:
    from frameserve.training import ImagePairs, Trainer, TrainingProgress, TrainingSettings

    settings = TrainingSettings.from_dict(_settings(args))
    folder = Path(args.jobs_folder).expanduser() / args.name

    def report(progress: TrainingProgress) -> None:
        sys.stderr.write(f"\r{_line(progress.step, progress.total_steps, progress.train_loss)}")
        sys.stderr.flush()

    data = ImagePairs.from_files(_pairs(args))
    if folder.is_dir() and any((folder / "checkpoints").glob("step_*.pt")):
        trainer = Trainer.resume(folder, data, on_progress=report, steps=settings.steps)
    else:
        trainer = Trainer(data, settings, job_dir=folder, name=args.name, on_progress=report)
    trainer.run()
    sys.stderr.write("\n")
    print(f"job {args.name!r}: {trainer.step_count} steps, checkpoints in {folder}")
    return 0


def _follow(server: str, name: str) -> int:
    while True:
        job = _call(server, "GET", f"/v2/training/jobs/{name}")
        sys.stderr.write(f"\r{_line(job['step'], job['total_steps'], job['loss'])} {job['state']}")
        if job["state"] in _FINAL:
            sys.stderr.write("\n")
            if job["error"]:
                print(f"job {name!r} failed: {job['error']}", file=sys.stderr)
            return 0 if job["state"] == "done" else 1
        time.sleep(1.0)


def _jobs(args: argparse.Namespace) -> int:
    for job in _call(args.server or DEFAULT_SERVER, "GET", "/v2/training/jobs")["jobs"]:
        print(f"{job['name']:24} {job['state']:9} {job['step']}/{job['total_steps']}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    job = _call(args.server or DEFAULT_SERVER, "POST", f"/v2/training/jobs/{args.name}/cancel")
    print(f"job {job['name']!r}: {job['state']}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    job = _call(args.server or DEFAULT_SERVER, "POST", f"/v2/training/jobs/{args.name}/resume")
    print(f"job {job['name']!r}: {job['state']}")
    return 0


def _line(step: int, total: int, loss: float | None) -> str:
    shown = "-" if loss is None else f"{loss:.4g}"
    return f"step {step}/{total}  loss {shown}"


def _call(server: str, method: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.rstrip("/") + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        finally:
            exc.close()
        raise FrameServeError(f"{server}: {message}") from exc
    except OSError as exc:
        raise FrameServeError(f"cannot reach {server}: {exc}") from exc
