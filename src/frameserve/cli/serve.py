"""The ``serve`` command: its flags, mapped onto :class:`ServerSettings` in one place.

Every default is the settings field's (:func:`~frameserve.cli.flags.setting_default`)::

    frameserve serve --host 10.20.0.5 --tokens tokens.json --mlclient-allow 10.20.0.0/16
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from typing import Any

from frameserve.cli.flags import setting_default
from frameserve.engine.devices import AUTO
from frameserve.errors import ConfigError
from frameserve.serve.settings import ServerSettings, is_loopback

__all__ = ["add_serve_flags", "serve_command", "server_settings"]

log = logging.getLogger(__name__)


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """The flags of ``serve``; every default is the :class:`ServerSettings` field's."""

    def default(name: str) -> Any:
        return setting_default(ServerSettings, name)

    serve.add_argument(
        "--jobs-folder",
        type=Path,
        default=default("jobs_folder"),
        help=f"where training jobs live (default {default('jobs_folder')}; with --ray: on "
        "storage every node shares, at the same path)",
    )
    serve.add_argument(
        "--host", default=default("host"), help="address to listen on (default: loopback only)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=default("port"),
        help=f"MLClient TCP port (default {default('port')}; 0: any free port)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=default("http_port"),
        help=f"HTTP API port (default {default('http_port')}; 0: no HTTP API)",
    )
    serve.add_argument(
        "--device",
        default=default("device"),
        help=f"torch device to run models on: {AUTO} (a CUDA GPU if there is one), cpu, cuda, "
        f"cuda:1 (default {default('device')})",
    )
    serve.add_argument(
        "--memory-budget-mb",
        type=int,
        default=None,
        help="memory loaded models may hold before the least recently used is unloaded "
        "(default: most of the GPU's memory, or a share of RAM)",
    )
    serve.add_argument(
        "--ocio",
        default=default("ocio"),
        help="OpenColorIO config for colour conversions (default: $OCIO, "
        "else the built-in ACES config)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=default("workers"),
        help=f"interactive requests run at once (default {default('workers')})",
    )
    serve.add_argument(
        "--batch-workers",
        type=int,
        default=default("batch_workers"),
        help=f"batch requests run at once (default {default('batch_workers')})",
    )
    serve.add_argument(
        "--cache-mb",
        type=int,
        default=default("cache_bytes") >> 20,
        help=f"result cache size in MiB (default {default('cache_bytes') >> 20}; 0: no cache)",
    )
    serve.add_argument(
        "--max-frame-bytes",
        type=int,
        default=default("max_frame_bytes"),
        help="largest frame accepted per model input (default: 8K RGBA float)",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=default("read_timeout"),
        help=f"seconds a client may stay silent mid-request (default {default('read_timeout'):g})",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=default("max_connections"),
        help=f"connections served at once (default {default('max_connections')})",
    )
    serve.add_argument(
        "--reload-interval",
        type=float,
        default=default("reload_interval"),
        metavar="S",
        help="look for added, changed or removed models every S seconds and reload them "
        f"(default {default('reload_interval'):g}; 0: no hot reload)",
    )
    serve.add_argument(
        "--max-frame-pixels",
        type=int,
        default=default("max_frame_pixels"),
        metavar="N",
        help="largest frame in pixels (width x height) accepted in requests, uploads and "
        f"training frames, checked before decoding (default {default('max_frame_pixels')})",
    )
    serve.add_argument(
        "--max-request-images",
        type=int,
        default=default("max_request_images"),
        metavar="N",
        help=f"images one MLClient request may carry (default {default('max_request_images')})",
    )
    serve.add_argument(
        "--max-batch-frames",
        type=int,
        default=default("max_batch_frames"),
        metavar="N",
        help=f"frames one HTTP inference request may carry (default {default('max_batch_frames')})",
    )
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=default("request_timeout"),
        metavar="S",
        help=f"seconds a client has at most to send a whole request "
        f"(default {default('request_timeout'):g})",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=default("header_timeout"),
        metavar="S",
        help=f"seconds a client has to start its request (default {default('header_timeout'):g})",
    )
    serve.add_argument(
        "--min-transfer-rate",
        type=float,
        default=default("min_transfer_rate"),
        metavar="BYTES_PER_S",
        help="slowest a request body may arrive; a body of N bytes must be in within "
        f"header-timeout + N / rate seconds (default {default('min_transfer_rate'):g})",
    )
    serve.add_argument(
        "--max-connections-per-address",
        type=int,
        default=default("max_connections_per_address"),
        metavar="N",
        help="connections one client address may hold per door "
        f"(default {default('max_connections_per_address')})",
    )
    workers = serve.add_argument_group("model worker processes")
    workers.add_argument(
        "--isolation",
        choices=("on", "off"),
        default="on" if default("isolation") else "off",
        help="on: models from model folders (built-ins too) run in worker processes, one per "
        "model version, so a model that hangs, crashes or leaks takes only its own requests "
        "down; off: every model runs in the server process (default %(default)s)",
    )
    workers.add_argument(
        "--model-timeout",
        type=float,
        default=default("model_timeout"),
        metavar="S",
        help="longest one request may run in a model that declares no timeout_s; its worker "
        f"is then stopped and started again (default {default('model_timeout'):g})",
    )
    workers.add_argument(
        "--worker-memory-mb",
        type=int,
        default=None,
        metavar="MIB",
        help="most private memory one worker process may hold before it is stopped and "
        "started again; also caps a model's own memory_limit_mb (default: half the RAM for "
        "models that declare none)",
    )
    workers.add_argument(
        "--max-crashes",
        type=int,
        default=default("max_crashes"),
        metavar="N",
        help="a model whose worker dies N times within --crash-window seconds is marked failed "
        f"until it is reloaded or its files change (default {default('max_crashes')})",
    )
    workers.add_argument(
        "--crash-window",
        type=float,
        default=default("crash_window"),
        metavar="S",
        help=f"see --max-crashes (default {default('crash_window'):g})",
    )
    cluster = serve.add_argument_group("Ray cluster (pip install 'frameserve[ray]')")
    cluster.add_argument(
        "--ray",
        dest="ray_address",
        default=None,
        metavar="ADDRESS",
        help="run models as Ray Serve deployments on the Ray cluster at ADDRESS (host:6379, "
        "ray://host:10001, or auto: the local Ray, started if none runs); the front doors, "
        "queues and result cache stay on this machine (default: models run here)",
    )
    cluster.add_argument(
        "--ray-deployments",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML or JSON file of each model's resources on the cluster: num_cpus, num_gpus, "
        "min_replicas, max_replicas, max_ongoing_requests, resources (see docs/cluster.md)",
    )
    training = serve.add_argument_group("training jobs")
    training.add_argument(
        "--data-root",
        dest="data_roots",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a folder whose files training jobs may name by path (repeatable; none by "
        "default: clients upload their frames)",
    )
    training.add_argument(
        "--max-job-frames",
        type=int,
        default=default("max_job_frames"),
        metavar="N",
        help=f"image files one training job may name (default {default('max_job_frames')})",
    )
    training.add_argument(
        "--max-table-rows",
        type=int,
        default=default("max_table_rows"),
        metavar="N",
        help=f"rows of a number job's value table (default {default('max_table_rows')})",
    )
    training.add_argument(
        "--max-table-bytes",
        type=int,
        default=default("max_table_bytes"),
        metavar="N",
        help=f"size of a number job's value table (default {default('max_table_bytes')})",
    )
    training.add_argument(
        "--max-job-mb",
        type=int,
        default=default("max_job_bytes") >> 20,
        metavar="MIB",
        help="decoded frames one training job may hold in memory "
        f"(default {default('max_job_bytes') >> 20})",
    )
    training.add_argument(
        "--decode-timeout",
        type=float,
        default=default("decode_timeout"),
        metavar="S",
        help=f"seconds reading a job's frames may take (default {default('decode_timeout'):g})",
    )
    security = serve.add_argument_group("access")
    security.add_argument(
        "--tokens",
        dest="tokens_file",
        type=Path,
        default=default("tokens_file"),
        metavar="FILE",
        help="require a bearer token from this store on every HTTP request but /v2/health "
        "('frameserve token add' makes it)",
    )
    security.add_argument(
        "--no-auth",
        action="store_true",
        help="serve HTTP beyond loopback without tokens, on purpose",
    )
    security.add_argument(
        "--mlclient-allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="a network the MLClient door serves (repeatable; default: loopback only; "
        "needed when --host is not loopback)",
    )
    security.add_argument(
        "--mlclient-models",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="model ids or globs the MLClient door lists to the node and runs, in menu order "
        "(commas or spaces; default: every model the node can run)",
    )
    security.add_argument(
        "--mlclient-door",
        action="append",
        default=[],
        metavar="PORT=PATTERN,...",
        help="one more MLClient door on PORT listing its own models, e.g. 55556=segment,"
        "person_matte (repeatable; all doors share one engine)",
    )
    security.add_argument(
        "--mlclient-info-bytes",
        type=int,
        default=default("mlclient_info_bytes"),
        metavar="N",
        help="the most bytes a door's model menu may take; models past it are left out with a "
        "warning (default %(default)s: one TCP segment, which the node reads in one recv; "
        "raise only on a network with jumbo frames)",
    )
    security.add_argument(
        "--tls-cert", type=Path, default=None, metavar="FILE", help="PEM certificate: HTTPS"
    )
    security.add_argument(
        "--tls-key", type=Path, default=None, metavar="FILE", help="PEM private key of it"
    )


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """Map the ``serve`` flags onto :class:`ServerSettings` (the one place that does)."""
    return ServerSettings(
        host=args.host,
        port=args.port,
        http_port=args.http_port or None,
        model_folders=tuple(Path(p) for p in args.models),
        builtin_models=not args.no_builtins,
        commercial_only=args.commercial_only,
        device=args.device,
        model_memory_budget_bytes=(
            None if args.memory_budget_mb is None else args.memory_budget_mb << 20
        ),
        ocio=args.ocio,
        workers=args.workers,
        batch_workers=args.batch_workers,
        cache_bytes=args.cache_mb << 20,
        max_frame_bytes=args.max_frame_bytes,
        max_frame_pixels=args.max_frame_pixels,
        max_request_images=args.max_request_images,
        max_batch_frames=args.max_batch_frames,
        read_timeout=args.read_timeout,
        request_timeout=args.request_timeout,
        header_timeout=args.header_timeout,
        min_transfer_rate=args.min_transfer_rate,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        reload_interval=args.reload_interval or None,
        jobs_folder=args.jobs_folder,
        data_roots=tuple(args.data_roots),
        max_job_frames=args.max_job_frames,
        max_table_rows=args.max_table_rows,
        max_table_bytes=args.max_table_bytes,
        max_job_bytes=args.max_job_mb << 20,
        decode_timeout=args.decode_timeout,
        tokens_file=args.tokens_file,
        no_auth=args.no_auth,
        mlclient_allow=tuple(args.mlclient_allow),
        mlclient_models=(
            setting_default(ServerSettings, "mlclient_models")
            if args.mlclient_models is None
            else _split_patterns(args.mlclient_models)
        ),
        mlclient_doors=tuple(_mlclient_door(text) for text in args.mlclient_door),
        mlclient_info_bytes=args.mlclient_info_bytes,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        isolation=args.isolation == "on",
        model_timeout=args.model_timeout,
        worker_memory_bytes=(
            None if args.worker_memory_mb is None else args.worker_memory_mb << 20
        ),
        max_crashes=args.max_crashes,
        crash_window=args.crash_window,
        ray_address=args.ray_address,
        ray_deployments=args.ray_deployments,
    )


def _split_patterns(parts: list[str]) -> tuple[str, ...]:
    return tuple(p.strip() for part in parts for p in part.split(",") if p.strip())


def _mlclient_door(text: str) -> tuple[int, tuple[str, ...]]:
    """Parse ``PORT=PATTERN,...`` of ``--mlclient-door``."""
    port, sep, patterns = text.partition("=")
    if not sep or not port.strip().isdigit() or not _split_patterns([patterns]):
        raise ConfigError(
            f"--mlclient-door {text!r}: expected PORT=PATTERN,... such as "
            "55556=segment,person_matte"
        )
    return int(port), _split_patterns([patterns])


def serve_command(args: argparse.Namespace) -> int:
    """Start the server from the ``serve`` flags; return when it is stopped by a signal."""
    from frameserve.engine.memory import tune_allocator
    from frameserve.serve.server import FrameServer

    tune_allocator()
    settings = server_settings(args)
    if not is_loopback(settings.host):
        log.warning(
            "listening on %s: the MLClient door admits %s; HTTP %s",
            settings.host,
            ", ".join(str(n) for n in settings.mlclient_networks()),
            "needs tokens" if settings.tokens_file else "is open to anyone (--no-auth)",
        )
    server = FrameServer(settings)
    server.start()  # a port that cannot be listened on is a ConfigError naming it

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait()
    return 0
