"""``frameserve export``: a trained job as a model package (or a TorchScript file).

::

    frameserve export degrain --out studio_models/degrain                 # from the server
    frameserve export degrain --out studio_models/degrain --format pt2 --checkpoint 500
    frameserve export degrain --local --out studio_models/degrain --format onnx
    frameserve export jobs/degrain --local --torchscript degrain.pt        # a bare network

A package is a folder with ``model.toml`` and the network (``--format``: ``pt`` TorchScript,
the default, ``pt2`` ``torch.export`` or ``onnx``); served from a model folder it gives the
job's pixels (see :func:`frameserve.training.export.export_package`). It is built and
checked in a hidden folder and renamed into place; an existing ``--out`` is replaced only
with ``--force``. From a server (``--server``, the default ``http://127.0.0.1:8000``) the
server builds and checks it and this command unpacks it; with ``--local`` it is built here
from a job of ``--jobs-folder`` (or JOB is the path of a job folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from frameserve.errors import ConfigError
from frameserve.serve.settings import DEFAULT_JOBS_FOLDER

__all__ = ["add_export_parser", "checkpoint_name"]


def add_export_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], *, default_server: str
) -> argparse.ArgumentParser:
    """Register ``export`` on ``commands``; return its parser."""
    export = commands.add_parser(
        "export",
        help="export a training job as a model package (or a TorchScript file)",
        description="Write a model package (model.toml + network) serving a trained job.",
    )
    export.add_argument("job", metavar="JOB", help="the job's name (or, --local, its folder)")
    out = export.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, metavar="DIR", help="the package folder to write")
    out.add_argument(
        "--torchscript",
        type=Path,
        metavar="FILE",
        help="--local: write a bare TorchScript file instead (pads frames itself)",
    )
    export.add_argument(
        "--format", default="pt", choices=("pt", "pt2", "onnx"), help="network format (pt)"
    )
    export.add_argument(
        "--checkpoint", default="latest", help="latest (default), a step (500) or step_500"
    )
    export.add_argument("--id", help="the package's model id (default: the job's model id)")
    export.add_argument("--version", default="1.0.0", help="the package's version (1.0.0)")
    export.add_argument("--force", action="store_true", help="replace an existing --out")
    where = export.add_mutually_exclusive_group()
    where.add_argument("--server", help=f"export from this server (default {default_server})")
    where.add_argument("--local", action="store_true", help="export here from a jobs folder")
    export.add_argument(
        "--jobs-folder", type=Path, default=DEFAULT_JOBS_FOLDER, help="--local: job folders"
    )
    export.set_defaults(run=_export, default_server=default_server)
    return export


def checkpoint_name(text: str) -> str:
    """Return the checkpoint ``--checkpoint`` text names: ``500`` → ``step_500``."""
    text = text.strip()
    return f"step_{int(text)}" if text.isdigit() else text


def _export(args: argparse.Namespace) -> int:
    checkpoint = checkpoint_name(args.checkpoint)
    if not args.local:
        if args.torchscript is not None:
            raise ConfigError("--torchscript writes from a local job folder: add --local")
        return _download(args, checkpoint)
    folder = Path(args.job)
    if not folder.is_dir() or not (folder / "job.json").is_file():
        folder = Path(args.jobs_folder).expanduser() / args.job
    from frameserve.training import resolve_checkpoint
    from frameserve.training.export import export_package, export_torchscript

    if args.torchscript is not None:
        export_torchscript(resolve_checkpoint(folder, checkpoint), args.torchscript)
        print(f"wrote {args.torchscript}")
        return 0
    report = export_package(
        folder,
        args.out,
        network_format=args.format,
        checkpoint=checkpoint,
        model_id=args.id,
        version=args.version,
        force=args.force,
    )
    print(f"wrote {args.out}")
    print(report.summary())
    return 0


def _download(args: argparse.Namespace, checkpoint: str) -> int:
    from frameserve.catalogue.packages import read_manifest
    from frameserve.client import Client

    out: Path = args.out
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; use --force to replace it")
    with Client(args.server or args.default_server, timeout=600.0, token=args.token) as client:
        client.training.download_package(
            args.job,
            out,
            format=args.format,
            checkpoint=checkpoint,
            model_id=args.id,
            version=args.version,
            force=args.force,
        )
    manifest = read_manifest(out / "model.toml")
    print(
        f"wrote {out}: {manifest.id} {manifest.version} {manifest.label!r}, {manifest.network.name}"
    )
    return 0
