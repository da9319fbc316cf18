"""What the front doors see of the engine: one object to describe models and run requests.

A front door (MLClient, HTTP) translates its wire format and calls :class:`Engine`; it never
holds the registry, runner or scheduler itself. The engine describes the models (every loaded
version, the failed ones, one by id and version), takes checked requests and answers them
through the scheduler, looks results up in the cache, hands out frame buffers the model host
can run without a copy, says which models can serve now, and records what the doors served::

    engine = Engine(registry=registry, scheduler=scheduler)
    entry = engine.model("blur")                         # the newest version
    request = build_request(entry, frames, {"size": 2.0})
    result = engine.submit(request).result()
    engine.record_request(model="blur", protocol="http", outcome="ok", seconds=0.01,
                          size="1920x1080")
    engine.model_memory(entry)                           # loaded? the memory it holds
    engine.running()                                     # calls running now, workers up

A model whose worker process died too often (:mod:`frameserve.engine.workers`) is *failed*:
it is left out of :meth:`Engine.models`, listed by :meth:`Engine.catalogue` with its error,
and :meth:`Engine.model` answers :class:`~frameserve.errors.ModelLoadError` for it until it is
reloaded (:meth:`Engine.reload_models` with its id) or its files change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from frameserve.catalogue.entries import CatalogueEntry, FailedModel, ModelEntry
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.cache import request_key
from frameserve.engine.recent import RecentRequests
from frameserve.engine.request import CheckedKnobs, InferenceRequest, InferenceResult, Priority
from frameserve.engine.scheduler import Scheduler
from frameserve.engine.workers.host import ModelMemory, ModelState, ModelStatus
from frameserve.errors import ModelLoadError, ModelNotFoundError
from frameserve.plugin.model import SCENE_LINEAR

__all__ = ["Engine", "ModelActivity"]


@dataclass(frozen=True)
class ModelActivity:
    """What one model version does now.

    Attributes:
        model / version: the model version.
        running: its calls running now (taken from the queue; a batch counts each request).
        worker_up: whether its worker serves (a worker process started and ready; in-process,
            the server itself, always).
        worker: its worker's process id (``None``: none runs, or it runs in-process).
    """

    model: str
    version: str
    running: int
    worker_up: bool
    worker: int | None

    @property
    def busy(self) -> bool:
        """Whether it runs a call now."""
        return self.running > 0


class Engine:
    """The models and the request path behind the front doors; thread-safe.

    ``scheduler`` brings its runner, result cache and metrics; the engine registers the
    gauges that describe them (queue depth, loaded models, their memory, the cache).
    """

    def __init__(self, *, registry: ModelRegistry, scheduler: Scheduler) -> None:
        self._registry = registry
        self._scheduler = scheduler
        self._ready = threading.Event()
        #: The requests the doors answered lately (the dashboard shows them).
        self.recent = RecentRequests()
        self._register_gauges()

    # -- models --------------------------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        """Every model version that loaded and is not failed, in discovery order, oldest
        version first."""
        host = self._scheduler.host
        return [
            entry
            for entry in self._registry.available()
            if host.status(entry).state is not ModelState.FAILED
        ]

    def catalogue(self) -> list[CatalogueEntry]:
        """Every model version found, those that failed (to load, or by crashing) last."""
        host = self._scheduler.host
        serving: list[CatalogueEntry] = []
        failed: list[CatalogueEntry] = []
        for entry in self._registry.entries():
            status = host.status(entry) if isinstance(entry, ModelEntry) else None
            if status is not None and status.state is ModelState.FAILED:
                failed.append(
                    FailedModel(
                        id=entry.id,
                        source=entry.source,
                        error=status.error or "failed",
                        version=entry.version,
                        builtin=entry.builtin,
                    )
                )
            else:
                (failed if isinstance(entry, FailedModel) else serving).append(entry)
        return serving + failed

    def status(self, entry: ModelEntry) -> ModelStatus:
        """Whether ``entry``'s model can serve now: loading, ready, restarting or failed."""
        return self._scheduler.host.status(entry)

    def model_memory(self, entry: ModelEntry) -> ModelMemory:
        """Whether ``entry``'s model is set up now and the memory it holds (its worker's private
        memory with isolation on, its measured size in-process).

        A model host without ``model_memory`` (see :mod:`frameserve.engine.workers.host`) says
        loaded or not only, from ``loaded_models()``.
        """
        host = self._scheduler.host
        report = getattr(host, "model_memory", None)
        if callable(report):
            found = report(entry)
            if isinstance(found, ModelMemory):
                return found
        return ModelMemory(loaded=entry.id in host.loaded_models())

    def running(self) -> list[ModelActivity]:
        """What each model version that is not failed does now: its calls running and
        whether its worker is up (read-only; in :meth:`models` order)."""
        counts = self._scheduler.running()
        found = []
        for entry in self.models():
            status = self._scheduler.host.status(entry)
            found.append(
                ModelActivity(
                    model=entry.id,
                    version=entry.version,
                    running=counts.get((entry.id, entry.version), 0),
                    worker_up=status.state is ModelState.READY,
                    worker=status.worker,
                )
            )
        return found

    def model(self, model_id: str, version: str | None = None) -> ModelEntry:
        """Return model ``model_id`` in ``version`` (default: its newest).

        Raises:
            ModelLoadError: that model (or version) failed to load; the message says why.
            ModelNotFoundError: there is no such model or version; the message lists what
                there is.
        """
        try:
            entry = self._registry.get(model_id, version)
        except ModelNotFoundError as exc:
            if self._registry.failure(model_id, version) is not None:
                raise ModelLoadError(str(exc)) from None
            raise
        status = self._scheduler.host.status(entry)
        if status.state is ModelState.FAILED:
            raise ModelLoadError(status.error or f"model {model_id!r} failed")
        return entry

    def reload_models(self, model_id: str | None = None) -> list[str]:
        """Load the model folders added or changed since the last look, drop those gone.

        What the hot reload does on its timer, on demand (an admin's ``load`` request); requests
        in flight finish with the models they hold. With ``model_id``, a model marked failed
        after repeated crashes is also cleared, to start afresh. Returns one line per change.
        """
        lines = self._registry.reload_changed()
        if model_id is not None:
            lines += self._scheduler.host.reset(model_id)
        return lines

    def allocate_frame(self, channels: int, height: int, width: int) -> np.ndarray:
        """A float32 ``(C, H, W)`` buffer for a request frame, to decode pixels into.

        Frames in it reach the model without a copy (shared memory when models run in worker
        processes); its contents are undefined until written.
        """
        return self._scheduler.host.allocate_frame((channels, height, width))

    def largest_input_count(self) -> int:
        """The most image inputs any loaded model takes (at least 1), for request size caps."""
        return self._registry.largest_input_count()

    # -- requests ------------------------------------------------------------------------------

    def submit(self, request: InferenceRequest) -> Future[InferenceResult]:
        """Queue a request built by :func:`~frameserve.engine.request.build_request`.

        The future holds the result or the error it raised; cancel it to drop the request
        while it is still queued (its client went away).
        """
        return self._scheduler.submit(request)

    def caches(self, entry: ModelEntry) -> bool:
        """Whether the next result of ``entry`` will be cached: the cache is on, the model
        allows it, and its last result was worth keeping (a model that answers faster than its
        output is copied out of its worker is not cached, so its requests need no key)."""
        return entry.spec.cacheable and self._scheduler.keeps_results_of(entry.key)

    def cache_key(
        self,
        entry: ModelEntry,
        knobs: CheckedKnobs,
        digests: Iterable[bytes],
        *,
        colourspace: str = SCENE_LINEAR,
    ) -> bytes:
        """Return the result cache key of a request from its frames' digests.

        A door that keys requests itself (from the bytes it received, with
        :func:`~frameserve.engine.cache.frame_digest`) looks the key up with :meth:`cached`
        and passes it to ``build_request(cache_key=...)`` so the result is stored under it.
        """
        return request_key(
            entry.id, entry.version, knobs.values, colourspace, digests, token=entry.token
        )

    def cached(self, key: bytes) -> InferenceResult | None:
        """The result stored under ``key``, or ``None`` (the lookup counts in the metrics)."""
        return self._scheduler.cached(key)

    # -- observing -----------------------------------------------------------------------------

    def record_request(
        self,
        *,
        model: str,
        protocol: str,
        outcome: str,
        seconds: float,
        user: str = "-",
        size: str = "-",
    ) -> None:
        """Count one request a door answered; a model id no model has counts as ``unknown``.

        ``user`` is who sent it (``-``: no authentication); it labels the count, for a bounded
        number of users (:data:`~frameserve.engine.metrics.MAX_USER_LABELS`). ``size`` is its
        frames' width x height (``"1920x1080"``; ``"-"``: not known), kept with the recent
        requests only (never a metric label).
        """
        known = model if model in self._registry else "unknown"
        self.recent.add(
            model=known, protocol=protocol, outcome=outcome, seconds=seconds, user=user, size=size
        )
        self._scheduler.metrics.request(
            model=known,
            protocol=protocol,
            outcome=outcome,
            seconds=seconds,
            user=user,
        )

    def metrics_text(self) -> str:
        """Every metric in the Prometheus text format."""
        return self._scheduler.metrics.render()

    def queue_depth(self, priority: Priority) -> int:
        """How many requests of ``priority`` wait to run."""
        return self._scheduler.queue_depth(priority)

    def is_ready(self) -> bool:
        """Whether the server is started and not shutting down."""
        return self._ready.is_set()

    def can_serve(self) -> bool:
        """Whether some model can serve now: not every model is failed or restarting.

        A server without models has nothing to refuse: it counts as able.
        """
        host = self._scheduler.host
        entries = self._registry.available()
        blocked = (ModelState.FAILED, ModelState.RESTARTING)
        return not entries or any(host.status(e).state not in blocked for e in entries)

    def set_ready(self, ready: bool) -> None:
        """Say whether the server is ready (started) or not (starting, shutting down)."""
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    def close(self) -> None:
        """Stop running requests: queued ones fail, running ones finish (see the scheduler);
        then the model host stops (worker processes end)."""
        self._ready.clear()
        self._scheduler.close()
        self._scheduler.host.close()

    def _register_gauges(self) -> None:
        scheduler = self._scheduler
        runner, cache, metrics = scheduler.host, scheduler.cache, scheduler.metrics
        metrics.gauge(
            "frameserve_queue_depth",
            "Requests waiting to run, by priority.",
            lambda: [((("priority", p.name.lower()),), scheduler.queue_depth(p)) for p in Priority],
        )
        metrics.gauge(
            "frameserve_models_loaded",
            "Models whose setup has run and that are held in memory.",
            lambda: [((), len(runner.loaded_models()))],
        )
        metrics.gauge(
            "frameserve_model_memory_bytes",
            "Memory held by loaded models (parameters and buffers).",
            lambda: [((), runner.memory_in_use())],
        )
        metrics.gauge(
            "frameserve_cache_bytes",
            "Bytes of frames held by the result cache.",
            lambda: [((), cache.bytes_used if cache else 0)],
        )
        metrics.gauge(
            "frameserve_cache_entries",
            "Results held by the result cache.",
            lambda: [((), len(cache) if cache else 0)],
        )
