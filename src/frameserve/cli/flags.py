"""Command-line flags that several ``frameserve`` commands share."""

from __future__ import annotations

import argparse

from frameserve.catalogue.registry import MODELS_ENV

__all__ = ["add_model_flags"]


def add_model_flags(parser: argparse.ArgumentParser, *, where: str = "") -> None:
    """Add ``--models DIR`` (repeatable), ``--no-builtins`` and ``-v/--verbose``.

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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
