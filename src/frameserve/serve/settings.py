"""Server settings: one validated, keyword-only object; the command line maps flags onto it.

::

    settings = ServerSettings(port=0, model_folders=["studio_models"], read_timeout=5.0)
    settings.mlclient_door()    # MLClientDoorSettings(host='127.0.0.1', port=0, ...)

Each part is told only its own share, made here from the server's settings: the MLClient door
a :class:`MLClientDoorSettings`, the HTTP door a :class:`HttpDoorSettings`, training jobs a
:class:`~frameserve.training.jobs.limits.JobLimits`.

**Serving beyond loopback.** The HTTP API needs tokens there (``tokens_file``) unless
``no_auth`` says the TD accepts an open server; the MLClient protocol carries no credentials,
so its door admits loopback only unless ``mlclient_allow`` lists the networks it serves.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frameserve.engine.devices import check_device_name
from frameserve.engine.limits import (
    DEFAULT_MAX_BATCH_FRAMES,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_REQUEST_IMAGES,
    request_bytes_limit,
)
from frameserve.engine.workers.supervisor import WorkerSettings
from frameserve.errors import ConfigError
from frameserve.serve.door_settings import (
    LOOPBACK_NETWORKS,
    DoorSettings,
    HttpDoorSettings,
    MLClientDoorSettings,
    Network,
    check_patterns,
    is_loopback,
)
from frameserve.serve.mlclient.menu import SEGMENT_BYTES
from frameserve.training.jobs.limits import JobLimits

__all__ = [
    "DEFAULT_JOBS_FOLDER",
    "JOBS_FOLDER_ENV",
    "DoorSettings",
    "HttpDoorSettings",
    "MLClientDoorSettings",
    "Network",
    "ServerSettings",
    "is_loopback",
]

#: Environment variable naming the training jobs folder (a deployment switch).
JOBS_FOLDER_ENV = "FRAMESERVE_JOBS_FOLDER"
#: Where training jobs live unless told otherwise (made at the first job): $FRAMESERVE_JOBS_FOLDER,
#: else ~/.frameserve/jobs.
DEFAULT_JOBS_FOLDER = Path(os.environ.get(JOBS_FOLDER_ENV) or "~/.frameserve/jobs")

#: Default result cache: about 40 1080p RGB float results.
DEFAULT_CACHE_BYTES = 1 << 30


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything ``frameserve serve`` can be told.

    Attributes:
        host: address both doors listen on; loopback unless told otherwise. Beyond loopback
            the server refuses to start without ``tokens_file`` (or ``no_auth``) and without
            ``mlclient_allow``.
        port: MLClient TCP port; 0 picks a free one.
        http_port: HTTP API port (Open Inference Protocol v2); 0 picks a free one, ``None``
            serves no HTTP.
        model_folders: model folders besides the built-ins (and ``$FRAMESERVE_MODELS``).
        builtin_models: whether to serve the built-in models.
        commercial_only: refuse (list as failed, with the reason) every model whose weights
            are not declared cleared for commercial use (:mod:`frameserve.plugin.licences`).
        device: torch device models run on: ``"auto"`` (a CUDA GPU when there is one, else
            the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        model_memory_budget_bytes: memory loaded models may hold before the least recently
            used are unloaded; ``None``: 80% of the GPU's memory on CUDA, half the RAM on the
            CPU (see :mod:`frameserve.engine.pool`).
        ocio: OpenColorIO config (a path or an ``ocio://`` URI) for colour conversions;
            ``None`` means ``$OCIO``, else OpenColorIO's built-in ACES config.
        workers: interactive requests (or batches) run at once.
        batch_workers: batch-priority requests run at once (at a lower CPU priority).
        cache_bytes: memory for the result cache (frames of answered requests); 0 turns it off.
        max_frame_bytes: largest frame accepted per model input; a request may carry this
            times the most inputs any model takes, plus a little for the message.
        max_frame_pixels: largest frame, in pixels, accepted anywhere (requests, uploads,
            training frames); checked from sizes and image headers before decoding.
        max_request_images: images one MLClient request may carry.
        max_batch_frames: frames one HTTP inference request may carry.
        read_timeout: seconds a client may stay silent while sending a request.
        request_timeout: seconds a client has at most to send a whole request.
        header_timeout: seconds a client has to start a request after connecting.
        min_transfer_rate: bytes per second a request body must arrive at, at least.
        max_connections: connections served at once, per door; more are answered with an
            error.
        max_connections_per_address: connections one client address may hold, per door.
        reload_interval: seconds between two looks at the model folders for added, changed
            or removed models, which are then reloaded while the server runs
            (:mod:`frameserve.catalogue.watcher`); ``None`` turns hot reload off.
        jobs_folder: where training jobs and their checkpoints live
            (:mod:`frameserve.training.jobs`); ``~`` is expanded, and the folder is made at
            the first job. Every file the server writes for a client goes in here.
        data_roots: folders training jobs may read frames, label folders and value tables
            from, by path; none by default (network clients upload their frames).
        max_job_frames: image files (inputs, targets, labelled images) one training job may
            name.
        max_table_rows, max_table_bytes: the largest value table a number job may name.
        max_job_bytes: decoded frames one training job may hold in memory.
        decode_timeout: seconds reading a training job's frames may take.
        tokens_file: the HTTP token store (``frameserve token add``); ``None``: no tokens.
        no_auth: serve HTTP beyond loopback without tokens, on purpose.
        mlclient_allow: networks the MLClient door serves (CIDR text, ``"10.1.0.0/16"``);
            empty: loopback only.
        tls_cert, tls_key: PEM certificate and key: the HTTP door speaks HTTPS.
        mlclient_models: model ids or globs the MLClient door (``port``) lists to the node and
            runs, in menu order; ``("*",)``: every model the node can run.
        mlclient_doors: more MLClient doors sharing the engine, each ``(port, patterns)``.
        mlclient_info_bytes: the most bytes a door's info reply (the node's model menu) may
            take; models past it are left out, with a warning. 1,448: one TCP segment on
            Ethernet; raise it only on a network with jumbo frames.
        isolation: run models from model folders (the built-ins included) in worker
            processes, one per model version, so that a model that hangs, crashes or leaks
            memory takes only its own requests down (:mod:`frameserve.engine.workers`);
            ``False``: every model runs in the server process, as before.
        model_timeout: the longest one request (or batch) may run in a model, in seconds,
            unless the model declares its own ``timeout_s``; past it the request fails and
            the model's worker is stopped and started again (with isolation only).
        worker_memory_bytes: the most private memory one worker process may hold; past it the
            worker is stopped and started again. ``None``: half the machine's memory for a
            model that declares no ``memory_limit_mb`` (which then applies alone).
        max_crashes, crash_window: a model whose worker dies ``max_crashes`` times within
            ``crash_window`` seconds is marked failed until it is reloaded (the admin ``load``
            request) or its files change.
        ray_address: run models as Ray Serve deployments on the Ray cluster at this address
            (``auto``: the local Ray, started if none runs) instead of on this machine
            (:mod:`frameserve.engine.cluster`; ``isolation`` then does not apply); ``None``:
            on this machine.
        ray_deployments: a deployment file (TOML or JSON) giving each model's resources and
            replicas on the cluster (:mod:`frameserve.engine.cluster.deployments`).
    """

    host: str = "127.0.0.1"
    port: int = 55555
    http_port: int | None = 8000
    model_folders: tuple[Path, ...] = field(default_factory=tuple)
    builtin_models: bool = True
    commercial_only: bool = False
    device: str = "auto"
    model_memory_budget_bytes: int | None = None
    ocio: str | None = None
    workers: int = 2
    batch_workers: int = 1
    cache_bytes: int = DEFAULT_CACHE_BYTES
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_request_images: int = DEFAULT_MAX_REQUEST_IMAGES
    max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES
    read_timeout: float = 30.0
    request_timeout: float = 600.0
    header_timeout: float = 5.0
    min_transfer_rate: float = 1 << 20
    max_connections: int = 256
    max_connections_per_address: int = 32
    reload_interval: float | None = 1.0
    jobs_folder: Path = DEFAULT_JOBS_FOLDER
    data_roots: tuple[Path, ...] = field(default_factory=tuple)
    max_job_frames: int = 1000
    max_table_rows: int = 100_000
    max_table_bytes: int = 16 << 20
    max_job_bytes: int = 4 << 30
    decode_timeout: float = 120.0
    tokens_file: Path | None = None
    no_auth: bool = False
    mlclient_allow: tuple[str, ...] = field(default_factory=tuple)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    mlclient_models: tuple[str, ...] = ("*",)
    mlclient_doors: tuple[tuple[int, tuple[str, ...]], ...] = field(default_factory=tuple)
    mlclient_info_bytes: int = SEGMENT_BYTES
    isolation: bool = True
    model_timeout: float = 600.0
    worker_memory_bytes: int | None = None
    max_crashes: int = 3
    crash_window: float = 300.0
    ray_address: str | None = None
    ray_deployments: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_folders", tuple(Path(p) for p in self.model_folders))
        object.__setattr__(self, "jobs_folder", Path(self.jobs_folder).expanduser())
        object.__setattr__(self, "data_roots", tuple(_data_root(p) for p in self.data_roots))
        object.__setattr__(self, "mlclient_allow", tuple(self.mlclient_allow))
        object.__setattr__(
            self, "mlclient_models", check_patterns(self.mlclient_models, "--mlclient-models")
        )
        object.__setattr__(
            self,
            "mlclient_doors",
            tuple(
                (port, check_patterns(patterns, f"--mlclient-door {port}="))
                for port, patterns in self.mlclient_doors
            ),
        )
        self._check_door_ports()
        for name in ("tokens_file", "tls_cert", "tls_key", "ray_deployments"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())
        for name in ("port", "http_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} {value} is outside 0..65535")
        check_device_name(self.device)
        budget = self.model_memory_budget_bytes
        if budget is not None and budget < 1:
            raise ConfigError(f"model_memory_budget_bytes must be at least 1, got {budget}")
        if self.cache_bytes < 0:
            raise ConfigError(f"cache_bytes must be 0 (off) or more, got {self.cache_bytes}")
        for name in (
            "workers",
            "batch_workers",
            "max_frame_bytes",
            "max_frame_pixels",
            "max_request_images",
            "max_batch_frames",
            "max_connections",
            "max_connections_per_address",
            "max_job_frames",
            "max_table_rows",
            "max_table_bytes",
            "max_job_bytes",
            "max_crashes",
            "mlclient_info_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "read_timeout",
            "request_timeout",
            "header_timeout",
            "min_transfer_rate",
            "decode_timeout",
            "model_timeout",
            "crash_window",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be above 0, got {getattr(self, name)}")
        memory = self.worker_memory_bytes
        if memory is not None and memory < 1:
            raise ConfigError(f"worker_memory_bytes must be at least 1 (or None), got {memory}")
        if self.reload_interval is not None and not self.reload_interval > 0:
            raise ConfigError(
                f"reload_interval must be above 0 seconds (or None: off), "
                f"got {self.reload_interval}"
            )
        self.mlclient_networks()  # raises for a malformed range
        self._check_exposure()
        self._check_files()

    def _check_exposure(self) -> None:
        if is_loopback(self.host):
            return
        if self.http_port is not None and self.tokens_file is None and not self.no_auth:
            raise ConfigError(
                f"refusing to serve HTTP on {self.host} without tokens: anyone who can reach "
                "it could run models, train and read results; give --tokens FILE "
                "('frameserve token add' makes one), or --no-auth to serve it open on purpose"
            )
        if not self.mlclient_allow:
            raise ConfigError(
                f"the MLClient door on {self.host} needs --mlclient-allow CIDR (repeatable): "
                "its protocol carries no credentials, so list the networks of the artists it "
                "serves (for example --mlclient-allow 10.20.0.0/16)"
            )

    def _check_files(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        for name in ("tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None and not value.is_file():
                raise ConfigError(f"--{name.replace('_', '-')} {str(value)!r} is not a file")
        if self.tokens_file is not None and not self.tokens_file.is_file():
            raise ConfigError(
                f"--tokens {str(self.tokens_file)!r} is not a file; make it with "
                "'frameserve token add NAME --role ROLE --tokens FILE'"
            )

    def mlclient_networks(self) -> tuple[Network, ...]:
        """The networks the MLClient door admits (loopback when none are listed).

        Raises:
            ConfigError: a range that is not an address or CIDR block.
        """
        if not self.mlclient_allow:
            return LOOPBACK_NETWORKS
        networks = []
        for text in self.mlclient_allow:
            try:
                networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"--mlclient-allow {text!r} is not an address or a CIDR range such as "
                    "10.20.0.0/16"
                ) from None
        return tuple(networks)

    def max_request_bytes(self, inputs: int) -> int:
        """Return the largest request body accepted when a model takes ``inputs`` images."""
        return request_bytes_limit(self.max_frame_bytes, inputs)

    def mlclient_door(self) -> MLClientDoorSettings:
        """Return the settings of the MLClient door (``host:port``)."""
        return MLClientDoorSettings(
            **self._door(self.port),
            allow=self.mlclient_networks(),
            max_request_images=self.max_request_images,
            models=self.mlclient_models,
            info_bytes=self.mlclient_info_bytes,
        )

    def extra_mlclient_doors(self) -> list[MLClientDoorSettings]:
        """Return the settings of the extra MLClient doors (``--mlclient-door``), in order."""
        return [
            MLClientDoorSettings(
                **self._door(port),
                allow=self.mlclient_networks(),
                max_request_images=self.max_request_images,
                models=patterns,
                info_bytes=self.mlclient_info_bytes,
                name=",".join(patterns),
            )
            for port, patterns in self.mlclient_doors
        ]

    def _check_door_ports(self) -> None:
        ports = [self.port, *(port for port, _ in self.mlclient_doors)]
        if self.http_port is not None:
            ports.append(self.http_port)
        for port in ports:
            if not 0 <= port <= 65535:
                raise ConfigError(f"port {port} is outside 0..65535")
        taken = [port for port in ports if port != 0]
        for port in sorted(set(taken)):
            if taken.count(port) > 1:
                raise ConfigError(
                    f"port {port} is given to two doors (--port, --http-port, --mlclient-door); "
                    "each door needs a port of its own"
                )

    def http_door(self) -> HttpDoorSettings | None:
        """Return the settings of the HTTP door (``host:http_port``); ``None``: no HTTP."""
        if self.http_port is None:
            return None
        return HttpDoorSettings(
            **self._door(self.http_port),
            tokens_file=self.tokens_file,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            max_batch_frames=self.max_batch_frames,
        )

    def job_limits(self) -> JobLimits:
        """Return what one training job may read and hold."""
        return JobLimits(
            data_roots=self.data_roots,
            max_frame_pixels=self.max_frame_pixels,
            max_job_frames=self.max_job_frames,
            max_table_rows=self.max_table_rows,
            max_table_bytes=self.max_table_bytes,
            max_job_bytes=self.max_job_bytes,
            decode_timeout=self.decode_timeout,
        )

    def worker_settings(self) -> WorkerSettings:
        """Return how model worker processes run (with ``isolation`` on)."""
        return WorkerSettings(
            device=self.device,
            ocio=self.ocio,
            model_timeout=self.model_timeout,
            memory_cap=self.worker_memory_bytes,
            max_crashes=self.max_crashes,
            crash_window=self.crash_window,
            interactive_threads=self.workers,
            batch_threads=self.batch_workers,
            memory_budget_bytes=self.model_memory_budget_bytes,
        )

    def _door(self, port: int) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": port,
            "max_connections": self.max_connections,
            "max_connections_per_address": self.max_connections_per_address,
            "read_timeout": self.read_timeout,
            "request_timeout": self.request_timeout,
            "header_timeout": self.header_timeout,
            "min_transfer_rate": self.min_transfer_rate,
            "max_frame_bytes": self.max_frame_bytes,
            "max_frame_pixels": self.max_frame_pixels,
        }


def _data_root(path: str | os.PathLike[str]) -> Path:
    """A data root as an absolute, resolved folder (symlinks followed once, here)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"data root {str(folder)!r} is not a folder")
    return folder.resolve()
