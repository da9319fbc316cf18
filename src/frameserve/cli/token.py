"""``frameserve token add/list/remove``: the users of a token file and their roles.

::

    frameserve token add maya --role artist --tokens tokens.json   # prints the token, once
    frameserve token list --tokens tokens.json [--json]              # names, roles, created
    frameserve token remove maya --tokens tokens.json                # her token stops working

The file stores each token's hash only (:mod:`frameserve.serve.auth.tokens`); ``add`` prints
the new token alone on its last line, so a script can take it with ``tail -n 1``. A server
started with ``--tokens`` on the same file sees every change within a second. Exit status: 0
when done, 1 for a name that is taken (``add``) or not there (``remove``), 2 for wrong flags
(an unknown role, a name that is not allowed) or a file that is not a token file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frameserve.serve.auth.tokens import TokenFile
from frameserve.serve.auth.users import Role

__all__ = ["add_token_flag", "add_token_parser"]


def add_token_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--token TOKEN`` to a command that talks to a server (default ``$FRAMESERVE_TOKEN``)."""
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="the bearer token of a server with tokens (default $FRAMESERVE_TOKEN, which, "
        "unlike the flag, other users of this machine cannot see in the process list)",
    )


def add_token_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``token`` (with ``add``, ``list`` and ``remove``) on ``commands``."""
    token = commands.add_parser(
        "token",
        help="add, list or remove the users of an HTTP token file (frameserve serve --tokens)",
        description="Manage the bearer tokens of 'frameserve serve --tokens FILE'.",
    )
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    roles = [role.label for role in Role]

    add = actions.add_parser("add", help="add a user; print its new token (shown only once)")
    add.add_argument("name", help="the user's name (letters, digits, . _ @ -)")
    add.add_argument(
        "--role",
        required=True,
        choices=roles,
        help="artist: models, inference, their own training jobs; td: every job, exports; "
        "admin: everything, model reload included",
    )
    add.set_defaults(run=_add)

    listing = actions.add_parser("list", help="list the users: names, roles, created")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_list)

    remove = actions.add_parser("remove", help="remove a user: its token stops working")
    remove.add_argument("name", help="the user's name")
    remove.set_defaults(run=_remove)

    for sub in (add, listing, remove):
        sub.add_argument(
            "--tokens", type=Path, required=True, metavar="FILE", help="the token file"
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add(args: argparse.Namespace) -> int:
    role = Role.parse(args.role)
    token = TokenFile(args.tokens).add(args.name, role)
    print(f"added {args.name!r} ({role.label}) to {args.tokens}; its token, shown only this once:")
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    entries = TokenFile(args.tokens).entries()
    if args.json:
        rows = [{"name": e.name, "role": e.role.label, "created": e.created} for e in entries]
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "ROLE", "CREATED"), *((e.name, e.role.label, e.created) for e in entries)]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _remove(args: argparse.Namespace) -> int:
    entry = TokenFile(args.tokens).remove(args.name)
    print(
        f"removed {entry.name!r} ({entry.role.label}) from {args.tokens}; its token no longer works"
    )
    return 0
