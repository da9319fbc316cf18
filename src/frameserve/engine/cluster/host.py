"""The Ray host: each model version as a Ray Serve deployment on a cluster.

:class:`RayHost` is the :class:`~frameserve.engine.workers.host.ModelHost` of
``frameserve serve --ray ADDRESS``. The front doors, the scheduler (priorities, fair turns,
batching, cancellation, the result cache) and the metrics stay on the gateway — the machine
that runs ``frameserve serve`` — and only the calls of models go to the cluster:

- a model version from a model folder (the built-ins included) runs as a Ray Serve
  application of its own (:func:`~frameserve.engine.cluster.connect.app_name`) whose replicas
  (:class:`~frameserve.engine.cluster.replica.ModelReplica`) import the folder from its path;
  its resources and replicas come from the deployment file
  (:mod:`~frameserve.engine.cluster.deployments`). It is deployed at its first request and
  deleted when the host closes;
- frames travel as numpy arrays through Ray's object store;
- the scheduler runs each model version on lanes of its own (as for worker processes), so its
  ``workers`` and ``batch_workers`` bound the calls in flight per model: with a replica's
  ``max_ongoing_requests`` at least their sum, no call waits inside Ray, and interactive
  calls overtake batch ones at the gateway, where the queues are;
- models of a pool (``[pools.NAME]`` in the deployment file) share one application instead
  (:mod:`~frameserve.engine.cluster.pools`): each call names its model version with Ray
  Serve's model multiplexing, and the pool's replicas load models on demand, unloading the
  least recently used; the scheduler's lanes are then the pool's, not each model's;
- when the registry replaces a model (hot reload), its application is deployed again with the
  new version (Ray Serve rolls the replicas over); a removed model's application is deleted;
- a replica that dies fails the calls it was running with
  :class:`~frameserve.errors.ModelCrashedError` (Ray Serve starts another); a call past its
  timeout or deadline fails with :class:`~frameserve.errors.ModelTimeoutError` and is
  cancelled.

Models that are not files (providers such as training jobs) run on the gateway's in-process
runner, as with worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from frameserve.catalogue.entries import ModelEntry
from frameserve.catalogue.folders import ModelSource, source_of
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.cluster.calls import answer, outcome, work_items
from frameserve.engine.cluster.connect import (
    app_name,
    connect,
    deploy_application,
    first_line,
    import_ray,
    ray_error,
)
from frameserve.engine.cluster.deployments import DeploymentPlan, Resources
from frameserve.engine.cluster.figures import ReplicaFigures
from frameserve.engine.cluster.pooled import multiplexed_id
from frameserve.engine.cluster.pools import PoolApps, pool_app_name
from frameserve.engine.cluster.replica import (
    ModelRef,
    ModelReplica,
    ReplicaConfig,
    ReplicaSettings,
)
from frameserve.engine.cluster.states import (
    Deployment,
    Followed,
    delete_applications,
    follow_states,
)
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import InferenceRequest, InferenceResult
from frameserve.engine.runner import Runner
from frameserve.engine.workers.host import ModelMemory, ModelState, ModelStatus, Outcome
from frameserve.engine.workers.supervisor import WorkerSettings
from frameserve.errors import (
    FrameServeError,
    ModelCrashedError,
    ModelLoadError,
    ModelTimeoutError,
    RequestCancelledError,
)

__all__ = ["RayHost"]

log = logging.getLogger(__name__)

#: Seconds between looks at the deployments' states (Ray Serve's status).
STATUS_POLL = 2.0
#: Seconds a roll-out waits for a pool's replica to load a changed model.
ROLL_OUT_WAIT = 60.0
#: Seconds closing waits for the deleted applications' replicas to stop.
CLOSE_WAIT = 15.0
_IN_PROCESS = ModelStatus(ModelState.READY)
_NOT_STARTED = ModelStatus(ModelState.IDLE)


class RayHost:
    """Runs each model version from a model folder as a Ray Serve deployment.

    Args:
        runner: the in-process runner for models that are not files; its registry is the
            host's.
        address: the Ray cluster (``auto``: the local one, started if none runs).
        plan: resources and replicas per model (:func:`load_deployments`).
        settings: device, colour, timeouts and threads per priority, as for worker processes.
        metrics: where replica figures, crashes and timeouts are counted.

    ::

        host = RayHost(Runner(registry), address="auto", plan=load_deployments(None),
                       settings=WorkerSettings())
        result = host.run(request)      # on a replica
        host.close()
    """

    def __init__(
        self,
        runner: Runner,
        *,
        address: str = "auto",
        plan: DeploymentPlan | None = None,
        settings: WorkerSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.runner = runner
        self.address = address
        self.plan = plan or DeploymentPlan()
        self.settings = settings or WorkerSettings()
        self.metrics = metrics or Metrics()
        self._ray, self._serve = import_ray()
        self._joined = connect(address)
        self._lock = threading.Lock()
        self._deploying = threading.Lock()
        self._deployments: dict[tuple[str, str], Deployment] = {}
        self._closed = False
        runner.registry.add_listener(self._registry_changed)
        self.figures = ReplicaFigures(self.metrics, self._replica_states)
        self.pools = PoolApps(self._deploy_app, self.metrics)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="frameserve-ray", daemon=True)
        self._watcher.start()

    @property
    def registry(self) -> ModelRegistry:
        """The models this host runs."""
        return self.runner.registry

    # -- running -------------------------------------------------------------------------------

    def run(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request`` on a replica of its model (or in-process, for providers' models)."""
        outcome = self.run_batch([request])[0]
        if isinstance(outcome, FrameServeError):
            raise outcome
        return outcome

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[Outcome]:
        """Run a batch as one call of a replica; each request gets its outcome."""
        entry = requests[0].entry or self.registry.get(requests[0].model_id)
        if self._source(entry) is None and self._deployments.get(_dkey(entry)) is None:
            if len(requests) == 1:
                return [self.runner.run(requests[0])]
            return self.runner.run_batch(requests)
        try:
            deployment, handle = self._handle(entry)
        except FrameServeError as exc:
            return [exc] * len(requests)
        items = work_items(requests)
        timeout = self._timeout(entry, requests)
        priority = int(requests[0].priority)
        if deployment.pool:
            response = handle.run.remote(deployment.ref, priority, items)
        else:
            response = handle.run.remote(priority, items)
        try:
            replies, figures = answer(response, requests, timeout)
        except RequestCancelledError as exc:
            log.info("model %s on the cluster: %s", _named(entry), exc)
            response.cancel()
            return [exc] * len(requests)
        except Exception as exc:  # Ray's errors (and a timeout), as the engine's
            error = ray_error(exc, entry.id, timeout)
            self._failed_call(entry, response, error)
            if deployment.pool and isinstance(error, ModelCrashedError):
                self.pools.forget_holdings(deployment.pool)
            return [error] * len(requests)
        self.figures.record(entry.id, entry.version, figures)
        self.pools.record(deployment.pool, figures)
        pid = int(figures["pid"])
        return [outcome(reply, pid) for reply in replies]

    def _timeout(self, entry: ModelEntry, requests: Sequence[InferenceRequest]) -> float:
        timeout = self.settings.timeout(entry)
        deadlines = [r.deadline for r in requests if r.deadline is not None]
        if deadlines:
            timeout = min(timeout, max(0.01, max(deadlines) - time.monotonic()))
        return timeout

    def _failed_call(self, entry: ModelEntry, response: Any, error: FrameServeError) -> None:
        name = _named(entry)
        if isinstance(error, ModelTimeoutError):
            self.metrics.model_timeout(name)
            try:
                response.cancel()
            except Exception:  # it may be done or gone already
                log.debug("cancelling a timed-out call of %s failed", name, exc_info=True)
        elif isinstance(error, ModelCrashedError):
            self.metrics.worker_crash(name, "replica")
            self.metrics.worker_restart(name, "replica died")
        log.warning("model %s on the cluster: %s", name, error)

    def concurrency_key(self, request: InferenceRequest) -> Hashable:
        """The model version for deployed models (its pool for a pool's models); ``None``
        (shared) for in-process ones."""
        entry = request.entry
        if entry is None:
            try:
                entry = self.registry.get(request.model_id)
            except Exception:
                return None
        if self._source(entry) is None:
            return None
        pool = self.plan.pool_of(entry.id, entry.version)
        return entry.key if pool is None else f"pool:{pool.name}"

    def allocate_frame(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A plain numpy buffer (Ray copies it into its object store once per call)."""
        return np.empty(shape, dtype=np.float32)

    def keep(self, result: InferenceResult) -> InferenceResult:
        """``result`` with frames from the object store copied (which frees the objects)."""
        if result.worker is None:
            return result
        frames = {name: frame.clone() for name, frame in result.frames.items()}
        return dataclasses.replace(result, frames=frames)

    # -- deployments ---------------------------------------------------------------------------

    def _handle(self, entry: ModelEntry) -> tuple[Deployment, Any]:
        """``entry``'s deployment and the handle its calls go to, deploying (again) if needed."""
        pool = self.plan.pool_of(entry.id, entry.version)
        with self._lock:
            if self._closed:
                raise ModelLoadError("the server is shutting down")
            deployment = self._deployments.get(_dkey(entry))
            if deployment is None:
                app = pool_app_name(pool.name) if pool else app_name(entry.id, entry.version)
                deployment = Deployment(app, entry, pool=pool.name if pool else "")
                self._deployments[_dkey(entry)] = deployment
        with deployment.lock:
            current = deployment.entry.token == entry.token and deployment.handle is not None
            stale = not self.registry.is_current(entry.key)
            if deployment.handle is not None and (current or stale):
                return deployment, deployment.handle  # a stale request runs on what is deployed
            if deployment.state is ModelState.FAILED and deployment.entry.token == entry.token:
                raise ModelLoadError(f"model {entry.id!r} cannot be deployed: {deployment.error}")
            if pool is None:
                self._deploy(deployment, entry)
                return deployment, deployment.handle
            deployment.ref = self._ref(entry)
            pool_handle = self.pools.handle(pool, self._replica_settings())
            key = multiplexed_id(entry.id, entry.version)
            deployment.entry, deployment.state = entry, ModelState.READY
            deployment.handle = pool_handle.options(multiplexed_model_id=key)
            return deployment, deployment.handle

    def _deploy(self, deployment: Deployment, entry: ModelEntry) -> None:
        """Deploy ``entry`` as ``deployment``'s application and wait until it runs (lock held)."""
        resources = self.plan.for_model(entry.id, entry.version)
        config = ReplicaConfig(self._ref(entry), self._replica_settings())
        deployment.entry = entry
        deployment.state = (
            ModelState.LOADING if deployment.handle is None else ModelState.RESTARTING
        )
        log.info("deploying model %s on Ray Serve (%s)", _named(entry), resources)
        started = time.monotonic()
        try:
            handle, info = self._deploy_app(deployment.app, ModelReplica, config, resources)
        except Exception as exc:
            deployment.state = ModelState.FAILED
            deployment.error = first_line(exc)
            raise ModelLoadError(
                f"model {entry.id!r} cannot be deployed on Ray Serve: {deployment.error}"
            ) from exc
        deployment.handle = handle
        deployment.model_bytes = int(info.get("model_bytes") or 0)
        deployment.error = info.get("load_error")
        deployment.state = ModelState.READY
        log.info(
            "model %s deployed on Ray Serve in %.1f s (replica %s)",
            _named(entry),
            time.monotonic() - started,
            info.get("replica"),
        )

    def _deploy_app(
        self, name: str, replica_class: type, config: object, resources: Resources
    ) -> tuple[Any, Mapping[str, Any]]:
        return deploy_application(name, replica_class, config, resources, lock=self._deploying)

    def _ref(self, entry: ModelEntry) -> ModelRef:
        """The model folder and version a replica loads for ``entry``."""
        source = self._source(entry)
        if source is None:
            raise ModelLoadError(f"model {entry.id!r} has no model folder to deploy from")
        return ModelRef(source, entry.id, entry.version, entry.token)

    def _replica_settings(self) -> ReplicaSettings:
        settings = self.settings
        return ReplicaSettings(
            device=settings.device,
            half_precision=settings.half_precision,
            ocio=settings.ocio,
            interactive_threads=settings.interactive_threads,
            batch_threads=settings.batch_threads,
            log_level=logging.getLogger("frameserve").getEffectiveLevel(),
        )

    def _source(self, entry: ModelEntry) -> ModelSource | None:
        """The model folder ``entry`` was loaded from, if it is still what is served."""
        return source_of(entry, self.registry.sources())

    def _registry_changed(self) -> None:
        """Roll replaced models out to their replicas; delete removed models' applications."""
        if self._closed:
            return
        threading.Thread(target=self._roll_out, name="frameserve-ray-rollout", daemon=True).start()

    def _roll_out(self) -> None:
        for key, deployment in list(self._deployments.items()):
            if deployment.handle is None or self.registry.is_current(deployment.entry.key):
                continue
            try:
                newest = self.registry.get(key[0], key[1])
            except FrameServeError:
                newest = None
            try:
                if newest is not None and self._source(newest) is not None:
                    log.info("model %s changed: rolling it out to its replicas", _named(newest))
                    _, handle = self._handle(newest)
                    if deployment.pool:  # the replica holding the old one loads the new one
                        handle.refresh.remote(deployment.ref).result(timeout_s=ROLL_OUT_WAIT)
                elif deployment.pool:  # its replicas unload it when it is least recently used
                    log.info(
                        "model %s is gone from pool %s", _named(deployment.entry), deployment.pool
                    )
                    with self._lock:
                        self._deployments.pop(key, None)
                else:
                    log.info("model %s is gone: deleting its deployment", deployment.app)
                    with deployment.lock:
                        self._serve.delete(deployment.app)
                        deployment.handle = None
                        deployment.state = ModelState.IDLE
                    with self._lock:
                        self._deployments.pop(key, None)
            except Exception:
                log.exception("rolling out %s failed", deployment.app)

    # -- health and figures --------------------------------------------------------------------

    def status(self, entry: ModelEntry) -> ModelStatus:
        """The state of ``entry``'s deployment (ready for models that run in-process)."""
        deployment = self._deployments.get(_dkey(entry))
        if deployment is None:
            return _NOT_STARTED if self._source(entry) is not None else _IN_PROCESS
        app = self.pools.apps.get(deployment.pool)
        if app is not None and deployment.state is not ModelState.FAILED:
            return ModelStatus(app.state, app.error)
        return ModelStatus(deployment.state, deployment.error)

    def reset(self, model_id: str) -> list[str]:
        """Clear the failed state of ``model_id``'s deployments (deployed again on demand)."""
        lines = []
        for deployment in list(self._deployments.values()):
            if deployment.entry.id == model_id and self.pools.reset(deployment.pool):
                lines.append(f"pool {deployment.pool}: cleared its failed state")
                log.info("%s", lines[-1])
            if deployment.entry.id == model_id and deployment.state is ModelState.FAILED:
                deployment.state = ModelState.IDLE
                deployment.error = None
                line = f"model {_named(deployment.entry)}: cleared its failed state"
                log.info("%s", line)
                lines.append(line)
        return lines

    def loaded_models(self) -> list[str]:
        """Models set up in-process, then those whose deployment runs or a pool replica holds."""
        deployed = [
            d.entry.id
            for d in list(self._deployments.values())
            if self.registry.is_current(d.entry.key)
            and (self._held(d) if d.pool else d.state is ModelState.READY)
        ]
        return self.runner.loaded_models() + deployed

    def _held(self, deployment: Deployment) -> list[int]:
        """The bytes of ``deployment``'s model on each pool replica that holds it."""
        entry = deployment.entry
        return self.pools.held(deployment.pool, entry.id, entry.version, entry.token)

    def model_memory(self, entry: ModelEntry) -> ModelMemory:
        """Whether ``entry``'s deployment runs and its model's size on one replica (for a
        model that runs in-process: what the runner holds of it)."""
        deployment = self._deployments.get(_dkey(entry))
        if deployment is None:
            size = self.runner.model_bytes(entry)
            return ModelMemory(loaded=size is not None, model_bytes=size or 0)
        if deployment.state is not ModelState.READY or deployment.entry.key != entry.key:
            return ModelMemory(loaded=False)
        if deployment.pool:
            held = self._held(deployment)
            return ModelMemory(loaded=bool(held), model_bytes=max(held, default=0))
        return ModelMemory(loaded=True, model_bytes=deployment.model_bytes)

    def memory_in_use(self) -> int:
        """What in-process models hold, plus each deployed model's size times its replicas and
        what the pools' replicas hold."""
        deployed = sum(
            d.model_bytes * max(1, d.replicas.get("RUNNING", 1))
            for d in list(self._deployments.values())
            if d.state is ModelState.READY and not d.pool
        )
        return self.runner.memory_in_use() + deployed + self.pools.bytes_in_use()

    def _replica_states(self) -> list[tuple[str, str, dict[str, int]]]:
        return [
            (d.entry.id, d.entry.version, dict(d.replicas))
            for d in list(self._deployments.values())
            if not d.pool
        ] + [
            (f"pool:{app.pool.name}", "", dict(app.replicas))
            for app in list(self.pools.apps.values())
        ]

    def _watch(self) -> None:
        """Follow Ray Serve's view of each deployment: replica counts, unhealthy, failed."""
        while not self._stop.wait(STATUS_POLL):
            try:
                applications = self._serve.status().applications
            except Exception:
                log.debug("cannot read Ray Serve's status", exc_info=True)
                continue
            followed: list[Followed] = [d for d in self._deployments.values() if not d.pool]
            follow_states(applications, [*followed, *self.pools.apps.values()])

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Delete this host's deployments; disconnect from Ray if this host joined it."""
        with self._lock:
            self._closed = True
            deployments: list[Followed] = [d for d in self._deployments.values() if not d.pool]
            deployments += self.pools.apps.values()
            self._deployments = {}
        self._stop.set()
        self._watcher.join(STATUS_POLL + 1.0)
        apps = [d.app for d in deployments if d.handle is not None]
        delete_applications(self._serve, apps, CLOSE_WAIT)
        if self._joined:
            self._ray.shutdown()


def _dkey(entry: ModelEntry) -> tuple[str, str]:
    return (entry.id, entry.version)


def _named(entry: ModelEntry) -> str:
    return entry.id if entry.version == "1" else f"{entry.id} v{entry.version}"
