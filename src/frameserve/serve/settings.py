"""Server settings: one validated, keyword-only object; the command line maps flags onto it.

::

    settings = ServerSettings(port=0, model_folders=["studio_models"], read_timeout=5.0)
    settings.mlclient_door()    # DoorSettings(host='127.0.0.1', port=0, ...)

Each front door is told only its own part, a :class:`DoorSettings`, made here from the
server's settings (:meth:`ServerSettings.mlclient_door`, :meth:`ServerSettings.http_door`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from frameserve.engine.devices import check_device_name
from frameserve.engine.limits import DEFAULT_MAX_FRAME_BYTES, request_bytes_limit
from frameserve.errors import ConfigError

__all__ = ["DEFAULT_JOBS_FOLDER", "JOBS_FOLDER_ENV", "DoorSettings", "ServerSettings"]

#: Environment variable naming the training jobs folder (a deployment switch).
JOBS_FOLDER_ENV = "FRAMESERVE_JOBS_FOLDER"
#: Where training jobs live unless told otherwise (made at the first job): $FRAMESERVE_JOBS_FOLDER,
#: else ~/.frameserve/jobs.
DEFAULT_JOBS_FOLDER = Path(os.environ.get(JOBS_FOLDER_ENV) or "~/.frameserve/jobs")

#: Default result cache: about 40 1080p RGB float results.
DEFAULT_CACHE_BYTES = 1 << 30


@dataclass(frozen=True, kw_only=True)
class DoorSettings:
    """What one front door is told: where it listens, how long it waits, how much it accepts.

    ::

        door = DoorSettings(host="127.0.0.1", port=0, max_connections=16, read_timeout=5.0,
                            request_timeout=60.0, max_frame_bytes=1 << 26)

    Attributes:
        host, port: the address it listens on (port 0 picks a free one).
        max_connections: connections served at once; more are answered with a busy error.
        read_timeout: seconds a client may stay silent while sending a request.
        request_timeout: seconds a client has to send a whole request.
        max_frame_bytes: largest frame accepted per model input (see
            :func:`~frameserve.engine.limits.request_bytes_limit`).
    """

    host: str
    port: int
    max_connections: int
    read_timeout: float
    request_timeout: float
    max_frame_bytes: int

    def max_request_bytes(self, inputs: int) -> int:
        """Return the largest request body accepted when a model takes ``inputs`` images."""
        return request_bytes_limit(self.max_frame_bytes, inputs)


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything ``frameserve serve`` can be told.

    Attributes:
        host: address the MLClient door listens on; loopback unless told otherwise (the
            MLClient protocol has no authentication).
        port: MLClient TCP port; 0 picks a free one.
        http_port: HTTP API port (Open Inference Protocol v2); 0 picks a free one, ``None``
            serves no HTTP.
        model_folders: model folders besides the built-ins (and ``$FRAMESERVE_MODELS``).
        builtin_models: whether to serve the built-in models.
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
        read_timeout: seconds a client may stay silent while sending a request.
        request_timeout: seconds a client has to send a whole request.
        max_connections: connections served at once; more are answered with an error.
        reload_interval: seconds between two looks at the model folders for added, changed
            or removed models, which are then reloaded while the server runs
            (:mod:`frameserve.catalogue.watcher`); ``None`` turns hot reload off.
        jobs_folder: where training jobs and their checkpoints live
            (:mod:`frameserve.training.jobs.queue`); ``~`` is expanded, and the folder is made at
            the first job.
    """

    host: str = "127.0.0.1"
    port: int = 55555
    http_port: int | None = 8000
    model_folders: tuple[Path, ...] = field(default_factory=tuple)
    builtin_models: bool = True
    device: str = "auto"
    model_memory_budget_bytes: int | None = None
    ocio: str | None = None
    workers: int = 2
    batch_workers: int = 1
    cache_bytes: int = DEFAULT_CACHE_BYTES
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    read_timeout: float = 30.0
    request_timeout: float = 600.0
    max_connections: int = 256
    reload_interval: float | None = 1.0
    jobs_folder: Path = DEFAULT_JOBS_FOLDER

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_folders", tuple(Path(p) for p in self.model_folders))
        object.__setattr__(self, "jobs_folder", Path(self.jobs_folder).expanduser())
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
        for name in ("workers", "batch_workers", "max_frame_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("read_timeout", "request_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be above 0 seconds, got {getattr(self, name)}")
        if self.reload_interval is not None and not self.reload_interval > 0:
            raise ConfigError(
                f"reload_interval must be above 0 seconds (or None: off), "
                f"got {self.reload_interval}"
            )

    def max_request_bytes(self, inputs: int) -> int:
        """Return the largest request body accepted when a model takes ``inputs`` images."""
        return request_bytes_limit(self.max_frame_bytes, inputs)

    def mlclient_door(self) -> DoorSettings:
        """Return the settings of the MLClient door (``host:port``)."""
        return self._door(self.port)

    def http_door(self) -> DoorSettings | None:
        """Return the settings of the HTTP door (``host:http_port``); ``None``: no HTTP."""
        return None if self.http_port is None else self._door(self.http_port)

    def _door(self, port: int) -> DoorSettings:
        return DoorSettings(
            host=self.host,
            port=port,
            max_connections=self.max_connections,
            read_timeout=self.read_timeout,
            request_timeout=self.request_timeout,
            max_frame_bytes=self.max_frame_bytes,
        )
