"""Command-line flags that several ``frameserve`` commands share, and their defaults.

Defaults come from the settings objects the flags fill in (:func:`setting_default`), so a
flag and its setting cannot drift apart::

    parser.add_argument("--workers", type=int, default=setting_default(ServerSettings, "workers"))
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from frameserve.catalogue.registry import MODELS_ENV

__all__ = ["add_model_flags", "setting_default"]


def add_model_flags(parser: argparse.ArgumentParser, *, where: str = "") -> None:
    """Add ``--models DIR`` (repeatable), ``--no-builtins``, ``--commercial-only`` and
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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


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
