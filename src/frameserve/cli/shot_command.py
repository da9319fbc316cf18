"""What ``frameserve run`` and ``frameserve retime`` share: where the model runs, and stopping.

- :func:`add_backend_flags` adds ``--server URL`` / ``--local`` / ``--ray ADDRESS`` (one of
  them), ``--ray-deployments``, ``--timeout``, ``--wait``, ``--device``, the token and the
  model-folder flags;
- :func:`backend_from_flags` makes the backend they name;
- :func:`run_shot_command` runs a command's work on that backend: ``SIGTERM`` stops it as
  Ctrl-C does (exit status 143), the temporary files of writes in progress are removed, and a
  server or cluster backend is closed whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from frameserve.cli.flags import add_model_flags, registry_from_flags
from frameserve.cli.token import add_token_flag
from frameserve.engine.cluster import load_deployments
from frameserve.engine.devices import AUTO
from frameserve.media.atomic import remove_pending
from frameserve.shots.backends import (
    DEFAULT_SERVER_TIMEOUT,
    DEFAULT_SERVER_WAIT,
    Backend,
    LocalBackend,
    ServerBackend,
)
from frameserve.shots.cluster import RayBackend

__all__ = [
    "DEFAULT_SERVER_JOBS",
    "DEFAULT_SERVER_URL",
    "TERMINATED_EXIT_CODE",
    "add_backend_flags",
    "backend_from_flags",
    "remote_backend",
    "run_shot_command",
]

log = logging.getLogger(__name__)

DEFAULT_SERVER_JOBS = 4  # a server (or cluster) batches and runs frames in parallel: keep it fed
DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
#: Exit status of a command stopped by SIGTERM (128 + the signal's number, as a shell says it).
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the command stops as on Ctrl-C."""


def add_backend_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags that say where the model runs (and how long a frame may take there)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        metavar="URL",
        help=f"send frames to a frameserve HTTP server, e.g. {DEFAULT_SERVER_URL} (default: "
        "--local)",
    )
    where.add_argument(
        "--local", action="store_true", help="run the model in this process (the default)"
    )
    where.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="fan the frames over the model's Ray Serve replicas on the Ray cluster at ADDRESS "
        "(host:6379, or auto: the local Ray); pip install 'frameserve[ray]'",
    )
    parser.add_argument(
        "--ray-deployments",
        type=Path,
        metavar="FILE",
        help="with --ray: each model's resources and replicas (TOML or JSON; docs/cluster.md)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_SERVER_TIMEOUT,
        metavar="SECONDS",
        help="with --server or --ray: seconds to wait for one frame's answer "
        f"(default {DEFAULT_SERVER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_SERVER_WAIT,
        metavar="SECONDS",
        help="with --server: how long to wait for a server that went away (a restart) to come "
        f"back before a frame fails (default {DEFAULT_SERVER_WAIT:g})",
    )
    parser.add_argument(
        "--device", help=f"torch device to run the model on (local runs; default {AUTO})"
    )
    add_token_flag(parser)
    add_model_flags(parser, where="local and --ray runs")


def remote_backend(args: argparse.Namespace) -> bool:
    """Whether the flags send frames elsewhere (``--server`` or ``--ray``)."""
    return args.server is not None or args.ray is not None


def backend_from_flags(args: argparse.Namespace) -> Backend:
    """The backend ``--server`` / ``--local`` / ``--ray`` name (local by default)."""
    if args.ray is not None:
        return RayBackend(
            registry_from_flags(args),
            address=args.ray,
            plan=load_deployments(args.ray_deployments),
            device=args.device or AUTO,
            timeout=args.timeout,
        )
    if args.server is None:
        return LocalBackend(registry_from_flags(args), device=args.device or AUTO)
    ignored = [
        flag
        for flag, given in (
            ("--device", args.device is not None),
            ("--models", bool(args.models)),
            ("--no-builtins", args.no_builtins),
            ("--commercial-only", args.commercial_only),
        )
        if given
    ]
    if ignored:
        log.warning("%s: ignored with --server (the server has its own)", ", ".join(ignored))
    return ServerBackend(args.server, timeout=args.timeout, token=args.token, wait=args.wait)


def run_shot_command(args: argparse.Namespace, work: Callable[[Backend], int]) -> int:
    """Run ``work`` on the backend the flags name; return its exit status.

    ``SIGTERM`` stops the work as Ctrl-C does and the command exits with
    :data:`TERMINATED_EXIT_CODE`; after either, the temporary files of writes in progress (on
    the work's threads) are removed. The backend is closed in every case.
    """
    backend = backend_from_flags(args)
    try:
        with _stop_on_sigterm():
            return work(backend)
    except KeyboardInterrupt as exc:
        removed = remove_pending()
        log.debug("stopped: %d temporary file(s) of writes in progress removed", removed)
        if isinstance(exc, _Terminated):
            return TERMINATED_EXIT_CODE
        raise
    finally:
        if isinstance(backend, ServerBackend | RayBackend):
            backend.close()


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn ``SIGTERM`` into :class:`_Terminated` in the main thread while the block runs.

    A second ``SIGTERM`` (while the command stops) gets the handler that was there before: by
    default, the process ends at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.getsignal(signal.SIGTERM)
    before = previous if previous is not None else signal.SIG_DFL

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, before)
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
