"""The frame server: one registry, runner and scheduler shared by every front door.

::

    with FrameServer(ServerSettings(port=0)) as server:
        host, port = server.mlclient_address
        ...

The data path reads top to bottom: front door (protocol) → request → scheduler → runner →
model, and back. Front doors (MLClient, HTTP) only translate. Unless
``settings.reload_interval`` is ``None``, a :class:`~frameserve.catalogue.watcher.ModelWatcher`
reloads model folders that are added, changed or removed while the server runs.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from frameserve.catalogue.registry import ModelRegistry, model_folders_from_env
from frameserve.catalogue.watcher import ModelWatcher
from frameserve.engine.cache import ResultCache
from frameserve.engine.colour import ColourManager
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import Priority
from frameserve.engine.runner import Runner
from frameserve.engine.scheduler import Scheduler
from frameserve.serve.http.server import HttpServer
from frameserve.serve.http.training_api import TrainingApi
from frameserve.serve.mlclient.server import MLClientServer
from frameserve.serve.settings import ServerSettings
from frameserve.training.jobs import TrainingJobs

__all__ = ["FrameServer"]

log = logging.getLogger(__name__)


class FrameServer:
    """Everything ``frameserve serve`` runs, startable and stoppable in-process."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        folders = [*self.settings.model_folders, *model_folders_from_env()]
        self.registry = ModelRegistry(folders, builtins=self.settings.builtin_models)
        colour = ColourManager(self.settings.ocio) if self.settings.ocio else None
        self.runner = Runner(
            self.registry,
            device=self.settings.device,
            colour=colour,
            memory_budget_bytes=self.settings.model_memory_budget_bytes,
        )
        self.metrics = Metrics()
        cache_bytes = self.settings.cache_bytes
        self.cache = ResultCache(cache_bytes) if cache_bytes else None
        self.scheduler = Scheduler(
            self.runner,
            workers=self.settings.workers,
            batch_workers=self.settings.batch_workers,
            cache=self.cache,
            metrics=self.metrics,
        )
        self._register_gauges()
        self.mlclient = MLClientServer(
            registry=self.registry, scheduler=self.scheduler, settings=self.settings
        )
        self.http: HttpServer | None = None
        if self.settings.http_port is not None:
            self.http = HttpServer(
                registry=self.registry,
                scheduler=self.scheduler,
                settings=self.settings,
                is_ready=self.is_ready,
            )
        self.jobs = TrainingJobs(
            self.settings.jobs_folder,
            registry=self.registry,
            busy=lambda: self.scheduler.queue_depth(Priority.INTERACTIVE) > 0,
            max_upload_bytes=self.settings.max_request_bytes(1),
        )
        if self.http is not None:
            training = TrainingApi(self.jobs)
            self.http.api.extensions.append(training.handle)
            self.http.api.body_limits.append(training.body_limit)
        self.watcher: ModelWatcher | None = None
        if self.settings.reload_interval is not None:
            self.watcher = ModelWatcher(self.registry, interval=self.settings.reload_interval)
        self._ready = threading.Event()
        self._stopped = threading.Event()

    @property
    def mlclient_address(self) -> tuple[str, int]:
        """Host and port of the MLClient door."""
        return self.mlclient.address

    @property
    def http_address(self) -> tuple[str, int]:
        """Host and port of the HTTP door."""
        if self.http is None:
            raise RuntimeError("this server serves no HTTP (http_port is None)")
        return self.http.address

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:8000``."""
        host, port = self.http_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _register_gauges(self) -> None:
        metrics = self.metrics
        metrics.gauge(
            "frameserve_queue_depth",
            "Requests waiting to run, by priority.",
            lambda: [
                ((("priority", p.name.lower()),), self.scheduler.queue_depth(p)) for p in Priority
            ],
        )
        metrics.gauge(
            "frameserve_models_loaded",
            "Models whose setup has run and that are held in memory.",
            lambda: [((), len(self.runner.loaded_models()))],
        )
        metrics.gauge(
            "frameserve_model_memory_bytes",
            "Memory held by loaded models (parameters and buffers).",
            lambda: [((), self.runner.memory_in_use())],
        )
        metrics.gauge(
            "frameserve_cache_bytes",
            "Bytes of frames held by the result cache.",
            lambda: [((), self.cache.bytes_used if self.cache else 0)],
        )
        metrics.gauge(
            "frameserve_cache_entries",
            "Results held by the result cache.",
            lambda: [((), len(self.cache) if self.cache else 0)],
        )

    def is_ready(self) -> bool:
        """Whether the server is started and not shutting down."""
        return self._ready.is_set()

    def start(self) -> FrameServer:
        """Open every front door and start watching the model folders; return self."""
        ready = [_named(e.id, e.version) for e in self.registry.available()]
        failed = [_named(e.id, e.version) for e in self.registry.entries() if not e.ok]
        log.info("models: %s", ", ".join(ready) or "none")
        if failed:
            log.warning("models that failed to load: %s", ", ".join(failed))
        self.mlclient.start()
        if self.http is not None:
            self.http.start()
        if self.watcher is not None:
            self.watcher.start()
        self._ready.set()
        return self

    def wait(self) -> None:
        """Block until :meth:`close` is called (from another thread or a signal handler)."""
        self._stopped.wait()

    def close(self) -> None:
        """Close every front door and stop the workers."""
        self._ready.clear()
        if self.watcher is not None:
            self.watcher.close()
        self.jobs.close()
        if self.http is not None:
            self.http.close()
        self.mlclient.close()
        self.scheduler.close()
        self._stopped.set()

    def __enter__(self) -> FrameServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _named(model_id: str, version: str) -> str:
    return model_id if version == "1" else f"{model_id} v{version}"
