#!/usr/bin/env python3
"""Set up frameserve in ./.venv and run it: the README's two commands.

    python3.11 dev.py serve [frameserve serve options]   # set up, then start the server
    python3.11 dev.py test  [pytest options]             # set up, then lint and run the tests

Setting up creates ``.venv`` with the running Python (3.11 or newer) and installs the project
with its test extras into it; it is skipped while ``pyproject.toml`` is unchanged since the last
install. Only the standard library is used here, so a fresh machine needs nothing else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".frameserve-install"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _python() -> Path:
    return BIN / ("python.exe" if os.name == "nt" else "python")


def _run(*command: object) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], cwd=ROOT, check=True)


def set_up() -> None:
    """Create the virtual environment and install the project (editable, with test extras)."""
    if sys.version_info < (3, 11):  # noqa: UP036 - runs before anything is installed
        sys.exit(f"frameserve needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text().strip() == wanted and _python().is_file():
        return
    if not _python().is_file():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    _run(
        _python(),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--editable",
        f"{ROOT}[test]",
    )
    STAMP.write_text(wanted + "\n")


#: The browser the dashboard tests drive (Debian's package; Playwright is a test extra).
CHROMIUM = Path("/usr/bin/chromium")


def set_up_browser() -> None:
    """Install Debian's ``chromium`` for the browser tests when it is missing.

    Uses ``apt-get`` (through ``sudo`` when not root). When it cannot be installed the tests
    that need it fail, naming it; nothing is skipped.
    """
    if CHROMIUM.is_file():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        print(f"{CHROMIUM} is missing and there is no apt-get: the browser tests will fail")
        return
    prefix = [] if os.geteuid() == 0 else (["sudo"] if shutil.which("sudo") else None)
    if prefix is None:
        print(f"{CHROMIUM} is missing and this user cannot install it: the browser tests will fail")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [*prefix, apt, "update", "-qq"],
        [*prefix, apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        print("+", " ".join(command), flush=True)
        if subprocess.run(command, env=env, check=False).returncode != 0:
            print("installing chromium failed: the browser tests will fail")
            return


#: What ``test`` lints and format-checks.
LINTED = ("src", "tests", "benchmarks", "examples", "scripts", "dev.py")


def main(argv: list[str]) -> int:
    """Run ``serve`` or ``test``; other arguments pass through to the command."""
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    set_up()
    try:
        if command == "serve":
            _run(BIN / "frameserve", "serve", *rest)
        else:
            set_up_browser()
            _run(_python(), "-m", "ruff", "check", *LINTED)
            _run(_python(), "-m", "ruff", "format", "--check", *LINTED)
            _run(_python(), "-m", "mypy")
            _run(_python(), "-m", "pytest", *rest)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
