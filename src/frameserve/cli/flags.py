"""Command-line flags that several ``frameserve`` commands share, and their defaults.

Defaults come from the settings objects the flags fill in (:func:`setting_default`), so a
flag and its setting cannot drift apart::

    parser.add_argument("--workers", type=int, default=setting_default(ServerSettings, "workers"))
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from frameserve.catalogue.registry import MODELS_ENV, ModelRegistry, model_folders_from_env
from frameserve.serve.settings import DEFAULT_JOBS_FOLDER, JOBS_FOLDER_ENV

__all__ = ["add_model_flags", "registry_from_flags", "setting_default"]


def add_model_flags(
    parser: argparse.ArgumentParser, *, where: str = "", jobs_folder: bool = True
) -> None:
    """Add ``--models DIR`` (repeatable), ``--no-builtins``, ``--commercial-only``,
    ``--jobs-folder DIR`` (unless ``jobs_folder`` is false: ``serve`` has its own) and
    ``-v/--verbose``.

    ``where`` qualifies the model flags in the help, e.g. ``"local runs"``.
    """
    note = f"; {where}" if where else ""
    parser.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="DIR",
        help=f"a folder of models (repeatable; ${MODELS_ENV} adds more{note})",
    )
    parser.add_argument("--no-builtins", action="store_true", help="leave out the built-in models")
    parser.add_argument(
        "--commercial-only",
        action="store_true",
        help="refuse every model whose weights are not declared cleared for commercial use "
        "(listed as failed, with the reason)",
    )
    if jobs_folder:
        parser.add_argument(
            "--jobs-folder",
            type=Path,
            default=DEFAULT_JOBS_FOLDER,
            metavar="DIR",
            help="training jobs served as models, as a server serves them (default "
            f"{DEFAULT_JOBS_FOLDER}, or ${JOBS_FOLDER_ENV})",
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def registry_from_flags(args: argparse.Namespace) -> ModelRegistry:
    """Return the models the flags of :func:`add_model_flags` name: model folders (and
    ``$FRAMESERVE_MODELS``), the built-ins unless left out, and the jobs of the jobs folder."""
    from frameserve.training.jobs.serving import serve_jobs_folder

    registry = ModelRegistry(
        [*args.models, *model_folders_from_env()],
        builtins=not args.no_builtins,
        commercial_only=args.commercial_only,
    )
    if getattr(args, "jobs_folder", None) is not None:
        serve_jobs_folder(registry, args.jobs_folder)
    return registry


def setting_default(settings: type[Any], name: str) -> Any:
    """Return the default of field ``name`` of the settings dataclass ``settings``.

    ::

        setting_default(ServerSettings, "port")        # 55555
        setting_default(RunOptions, "stop_after")      # 10

    Raises:
        LookupError: ``settings`` has no such field, or the field has no default.
    """
    for item in dataclasses.fields(settings):
        if item.name != name:
            continue
        if item.default is not dataclasses.MISSING:
            return item.default
        if item.default_factory is not dataclasses.MISSING:
            return item.default_factory()
        raise LookupError(f"{settings.__name__}.{name} has no default")
    raise LookupError(f"{settings.__name__} has no field {name!r}")
