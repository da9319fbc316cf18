"""Running the real ``frameserve`` command line from tests: child processes, several at once,
or its ``main`` in the test's own process (where the test is not about the process)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def cli_env() -> dict[str, str]:
    """The environment for ``python -m frameserve``: this checkout's package first.

    ``src`` goes first on ``PYTHONPATH`` so the checkout is what runs whether or not frameserve
    is also installed (editable or not) in the interpreter's environment.
    """
    env = dict(os.environ)
    env.pop("FRAMESERVE_MODELS", None)
    paths = [str(SRC), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def command(*args: str | Path) -> list[str]:
    """The argument list that runs ``frameserve ARGS`` with this interpreter."""
    return [sys.executable, "-m", "frameserve", *(str(arg) for arg in args)]


def frameserve(
    *commands: list[str | Path], cwd: Path = REPO, timeout: float = 180.0
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``frameserve`` once per argument list, all at once; return each finished process.

    Every command must finish without a traceback on stderr.
    """
    started = [
        subprocess.Popen(
            command(*args),
            cwd=cwd,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    finished = []
    try:
        for process in started:
            out, err = process.communicate(timeout=timeout)
            finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for result in finished:
        assert "Traceback" not in result.stderr, f"{result.args}:\n{result.stderr}"
    return finished


def frameserve_here(*commands: list[str | Path]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``frameserve`` once per argument list, one after another, through the command line's
    ``main`` in this process; return each one's exit status, stdout and stderr.

    The exit status is the one the process would exit with (``main``'s return value, or the
    code of argparse's ``SystemExit`` for a usage error); an unexpected exception propagates.
    """
    from frameserve.cli.main import main

    finished = []
    for args in commands:
        argv = [str(arg) for arg in args]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
        finished.append(
            subprocess.CompletedProcess(["frameserve", *argv], code, out.getvalue(), err.getvalue())
        )
    return finished
