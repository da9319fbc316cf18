"""The frame server: the engine, the front doors that translate for it, and hot reload.

::

    with FrameServer(ServerSettings(port=0)) as server:
        host, port = server.mlclient_address
        ...

The data path reads top to bottom: front door (protocol) → request → scheduler → model host →
model, and back. This module builds the parts from :class:`ServerSettings`: the registry, the
model host (with ``isolation`` on, a :class:`~frameserve.engine.workers.processes.ProcessHost`
that runs each model in a worker process; else an in-process runner), result cache, metrics
and scheduler, and over them the one
:class:`~frameserve.engine.engine.Engine` that the front doors (MLClient, HTTP) are given,
each with its own :class:`~frameserve.serve.settings.DoorSettings`. The doors only translate
their wire formats; they never hold the registry or scheduler. The HTTP door is built with its
routes: the inference API, the training API over :class:`TrainingJobs` and the dashboard. Unless
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
from frameserve.engine.cluster import RayHost, load_deployments
from frameserve.engine.colour import ColourManager
from frameserve.engine.engine import Engine
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import Priority
from frameserve.engine.runner import Runner
from frameserve.engine.scheduler import Scheduler
from frameserve.engine.workers.host import InProcessHost, ModelHost
from frameserve.engine.workers.processes import ProcessHost
from frameserve.errors import ConfigError
from frameserve.serve.auth.tokens import TokenStore
from frameserve.serve.dashboard import Dashboard
from frameserve.serve.http.api import InferenceApi
from frameserve.serve.http.server import HttpServer
from frameserve.serve.http.training_api import TrainingApi
from frameserve.serve.mlclient.server import MLClientServer
from frameserve.serve.net.listener import FrontDoor
from frameserve.serve.settings import ServerSettings
from frameserve.training.jobs import TrainingJobs
from frameserve.training.jobs.cluster import ClusterTraining

__all__ = ["FrameServer"]

log = logging.getLogger(__name__)


class FrameServer:
    """Everything ``frameserve serve`` runs, startable and stoppable in-process."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        folders = [*self.settings.model_folders, *model_folders_from_env()]
        self.registry = ModelRegistry(
            folders,
            builtins=self.settings.builtin_models,
            commercial_only=self.settings.commercial_only,
        )
        colour = ColourManager(self.settings.ocio) if self.settings.ocio else None
        runner = Runner(
            self.registry,
            device=self.settings.device,
            colour=colour,
            memory_budget_bytes=self.settings.model_memory_budget_bytes,
        )
        self.metrics = Metrics()
        self.host: ModelHost
        training: ClusterTraining | None = None  # jobs run on the cluster with --ray
        if self.settings.ray_address is not None:
            plan = load_deployments(self.settings.ray_deployments)
            training = ClusterTraining(plan.training)
            self.host = RayHost(
                runner,
                address=self.settings.ray_address,
                plan=plan,
                settings=self.settings.worker_settings(),
                metrics=self.metrics,
            )
        elif self.settings.isolation:
            self.host = ProcessHost(
                runner, settings=self.settings.worker_settings(), metrics=self.metrics
            )
        else:
            self.host = InProcessHost(runner)
        cache_bytes = self.settings.cache_bytes
        self.cache = ResultCache(cache_bytes) if cache_bytes else None
        self.scheduler = Scheduler(
            self.host,
            workers=self.settings.workers,
            batch_workers=self.settings.batch_workers,
            cache=self.cache,
            metrics=self.metrics,
        )
        self.engine = Engine(registry=self.registry, scheduler=self.scheduler)
        self.jobs = TrainingJobs(
            self.settings.jobs_folder,
            registry=self.registry,
            busy=lambda: self.engine.queue_depth(Priority.INTERACTIVE) > 0,
            max_upload_bytes=self.settings.max_request_bytes(1),
            limits=self.settings.job_limits(),
            cluster=training,
        )
        self.mlclient = MLClientServer(engine=self.engine, settings=self.settings.mlclient_door())
        #: Every MLClient door, the default one (``port``) first, then ``--mlclient-door``'s.
        self.mlclient_doors = [self.mlclient] + [
            MLClientServer(engine=self.engine, settings=door)
            for door in self.settings.extra_mlclient_doors()
        ]
        self.http: HttpServer | None = None
        #: The web dashboard at ``/`` of the HTTP door (issue 17).
        self.dashboard = Dashboard(self.engine, self.jobs, device=self.settings.device)
        http_door = self.settings.http_door()
        if http_door is not None:
            routes = [
                InferenceApi(
                    self.engine,
                    max_frame_bytes=http_door.max_frame_bytes,
                    max_batch_frames=http_door.max_batch_frames,
                    max_frame_pixels=http_door.max_frame_pixels,
                ),
                TrainingApi(self.jobs),
                self.dashboard,
            ]
            tokens = TokenStore(http_door.tokens_file) if http_door.tokens_file else None
            self.http = HttpServer(http_door, engine=self.engine, routes=routes)
            self.http.router.tokens = tokens  # every request but health then needs a token
        self.watcher: ModelWatcher | None = None
        if self.settings.reload_interval is not None:
            self.watcher = ModelWatcher(self.registry, interval=self.settings.reload_interval)
        self._stopped = threading.Event()

    @property
    def runner(self) -> ModelHost:
        """Where models run (the model host; its name from before models had processes)."""
        return self.host

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
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:8000`` (``https://`` with TLS)."""
        host, port = self.http_address
        scheme = self.http.scheme if self.http is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def is_ready(self) -> bool:
        """Whether the server is started and not shutting down."""
        return self.engine.is_ready()

    def start(self) -> FrameServer:
        """Open every front door and start watching the model folders; return self."""
        ready = [_named(e.id, e.version) for e in self.engine.models()]
        failed = [_named(e.id, e.version) for e in self.engine.catalogue() if not e.ok]
        log.info("models: %s", ", ".join(ready) or "none")
        if self.settings.ray_address is not None:
            log.info("models run as Ray Serve deployments (--ray %s)", self.settings.ray_address)
        else:
            log.info(
                "%s",
                "models run in worker processes, one per model version (--isolation on)"
                if self.settings.isolation
                else "models run in the server process (--isolation off)",
            )
        if failed:
            log.warning("models that failed to load: %s", ", ".join(failed))
        doors: list[FrontDoor] = [*self.mlclient_doors]
        if self.http is not None:
            doors.append(self.http)
        started: list[FrontDoor] = []
        for door in doors:
            try:
                door.start()  # a ConfigError naming the door and its port if it cannot listen
            except ConfigError:
                for other in started:
                    other.close()
                raise
            started.append(door)
        if self.watcher is not None:
            self.watcher.start()
        self.engine.set_ready(True)
        return self

    def wait(self) -> None:
        """Block until :meth:`close` is called (from another thread or a signal handler)."""
        self._stopped.wait()

    def close(self) -> None:
        """Close every front door and stop the workers."""
        self.engine.set_ready(False)
        if self.watcher is not None:
            self.watcher.close()
        self.jobs.close()
        self.dashboard.close()  # its event streams end within a tick
        if self.http is not None:
            self.http.close()
        for door in self.mlclient_doors:
            door.close()
        self.engine.close()
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
