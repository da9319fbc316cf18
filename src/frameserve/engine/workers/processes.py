"""The process host: each model version in a worker process of its own.

:class:`ProcessHost` is the :class:`~frameserve.engine.workers.host.ModelHost` of a server with
isolation on. A model from a model folder (the built-ins included) runs in a worker process
started from its folder (:mod:`frameserve.engine.workers.process`) and kept alive by a
:class:`~frameserve.engine.workers.supervisor.ModelSupervisor`; request frames are handed over
in shared memory (:mod:`frameserve.engine.workers.transport`).

Models that are not files — those of registry *providers*, such as a running server's
training jobs — cannot be imported again in another process: they run in the server process
on an in-process :class:`~frameserve.engine.runner.Runner`, as they always did. So does a
request that holds a model version whose files have changed since (its worker is gone, and a
new one would import the new files).

**Spares.** Starting a worker costs a fresh interpreter importing torch (1-2 s); the model's own
import and setup come after. So the host keeps one *spare* worker started (from the first
worker on): a process with torch imported, waiting to be told its model. A model's first
request then waits only for its import and setup, and a crashed worker is replaced as fast.

One thread watches every worker's memory (every
:data:`~frameserve.engine.workers.supervisor.MEMORY_POLL` seconds) and hands back shared memory
the server let go. When the models of all workers hold more than ``memory_budget_bytes``,
the least recently used idle workers are stopped (they start again on demand). When the
registry replaces or removes a model, its worker stops once its last call is done.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import queue
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future

import numpy as np
import torch

from frameserve.catalogue.entries import ModelEntry
from frameserve.catalogue.folders import ModelSource, source_of
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.devices import default_memory_budget
from frameserve.engine.memory import allocator_tuned
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import InferenceRequest, InferenceResult
from frameserve.engine.runner import Runner
from frameserve.engine.workers.host import ModelMemory, ModelState, ModelStatus, Outcome
from frameserve.engine.workers.process import WorkerConfig
from frameserve.engine.workers.supervisor import (
    MEMORY_POLL,
    STOP_GRACE,
    ModelSupervisor,
    WorkerSettings,
    _Context,
)
from frameserve.engine.workers.transport import SegmentPool
from frameserve.engine.workers.worker import Launched, WorkerProcess, launch

__all__ = ["ProcessHost"]

log = logging.getLogger(__name__)

_IN_PROCESS = ModelStatus(ModelState.READY)
_NOT_STARTED = ModelStatus(ModelState.IDLE)


class ProcessHost:
    """Runs each model version from a model folder in its own worker process.

    Args:
        runner: the in-process runner for models that cannot run in a worker (providers);
            its registry is the host's.
        settings: timeouts, memory caps, crash limits, threads (:class:`WorkerSettings`).
        metrics: where restarts, crashes and timeouts are counted.

    ::

        host = ProcessHost(Runner(registry), settings=WorkerSettings(model_timeout=60.0))
        result = host.run(request)      # in the model's worker process
        host.close()
    """

    def __init__(
        self, runner: Runner, *, settings: WorkerSettings, metrics: Metrics | None = None
    ) -> None:
        self.runner = runner
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.frames = SegmentPool()
        #: Request frames copied into shared memory because they came from elsewhere than
        #: :meth:`allocate_frame` (the front doors' frames never are).
        self.frames_copied_in = 0
        self._lock = threading.Lock()
        self._supervisors: dict[tuple[str, str, str], ModelSupervisor] = {}
        self._closed = False
        budget = settings.memory_budget_bytes
        self._budget = budget if budget is not None else default_memory_budget(torch.device("cpu"))
        self._spawner = _Spawner()
        self._spares = _Spares(self._spawner)
        self._context = _Context(
            settings=settings,
            frames=self.frames,
            metrics=self.metrics,
            launch=self._spares.take,
            config=self._config,
            on_ready=self._make_room,
            on_copy=self._copied,
        )
        runner.registry.add_listener(self._retire_stale)
        self.metrics.gauge(
            "frameserve_worker_memory_bytes",
            "Private memory of each model worker process, by model and version.",
            self._worker_memory,
        )
        _allow_open_files()
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="frameserve-workers", daemon=True)
        self._monitor.start()
        _live_hosts.add(self)

    @property
    def registry(self) -> ModelRegistry:
        """The models this host runs."""
        return self.runner.registry

    # -- running -------------------------------------------------------------------------------

    def run(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request`` in its model's worker (or in-process, see the module docstring)."""
        entry = request.entry or self.registry.get(request.model_id)
        supervisor = self._supervisor(entry)
        if supervisor is None:
            return self.runner.run(request)
        outcome = supervisor.run([request], request.priority)[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[Outcome]:
        """Run a batch as one call of its model's worker; each request gets its outcome."""
        entry = requests[0].entry or self.registry.get(requests[0].model_id)
        supervisor = self._supervisor(entry)
        if supervisor is None:
            return self.runner.run_batch(requests)
        return supervisor.run(requests, requests[0].priority)

    def concurrency_key(self, request: InferenceRequest) -> Hashable:
        """The model version for models in workers; ``None`` (shared) for in-process ones."""
        entry = request.entry
        if entry is None:
            try:
                entry = self.registry.get(request.model_id)
            except Exception:
                return None
        return (
            entry.key if self._source(entry) is not None or entry.key in self._supervisors else None
        )

    def keep(self, result: InferenceResult) -> InferenceResult:
        """``result`` with its frames copied out of shared memory (if any are in it).

        Fresh shared memory is slow to touch (shared pages get no huge pages); a cached result
        that held its segment would make every next frame take fresh memory. A private copy
        (about 5 ms for 1080p; the scheduler makes it at a lower CPU priority while the door
        sends the answer) frees the segment for reuse.
        """
        shared = result.worker is not None or any(
            self.frames.locate(frame) is not None for frame in result.frames.values()
        )
        if not shared:
            return result
        frames = {name: frame.clone() for name, frame in result.frames.items()}
        return dataclasses.replace(result, frames=frames)

    def _copied(self) -> None:
        self.frames_copied_in += 1  # a statistic: a lost increment between threads is harmless

    def allocate_frame(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A float32 buffer in shared memory, handed to a worker without a copy."""
        return self.frames.frame(shape)

    # -- health --------------------------------------------------------------------------------

    def status(self, entry: ModelEntry) -> ModelStatus:
        """The state of ``entry``'s worker (ready for models that run in-process)."""
        supervisor = self._supervisors.get(entry.key)
        if supervisor is not None:
            return supervisor.status()
        return _NOT_STARTED if self._source(entry) is not None else _IN_PROCESS

    def reset(self, model_id: str) -> list[str]:
        """Clear the failed state of every version of ``model_id``."""
        lines = []
        for supervisor in list(self._supervisors.values()):
            if supervisor.entry.id == model_id and supervisor.reset():
                line = f"model {supervisor.name}: cleared its failed state; it starts on demand"
                log.info("%s", line)
                lines.append(line)
        return lines

    def workers(self) -> list[tuple[ModelSupervisor, WorkerProcess]]:
        """The live workers and their supervisors."""
        live = []
        for supervisor in list(self._supervisors.values()):
            worker = supervisor.worker
            if worker is not None:
                live.append((supervisor, worker))
        return live

    def loaded_models(self) -> list[str]:
        """Models set up in-process, then those whose (current) worker is ready."""
        ready = [
            supervisor.entry.id
            for supervisor in list(self._supervisors.values())
            if self.registry.is_current(supervisor.entry.key)
            and supervisor.status().state is ModelState.READY
        ]
        return self.runner.loaded_models() + ready

    def _worker_memory(self) -> list[tuple[tuple[tuple[str, str], ...], float]]:
        samples: list[tuple[tuple[tuple[str, str], ...], float]] = []
        for supervisor, worker in self.workers():
            used = worker.private_memory()
            if used is not None:
                entry = supervisor.entry
                samples.append(((("model", entry.id), ("version", entry.version)), float(used)))
        return samples

    def model_memory(self, entry: ModelEntry) -> ModelMemory:
        """Whether ``entry``'s worker is ready, its model's size and the worker's private
        memory (a model that runs in-process: what the runner holds of it)."""
        supervisor = self._supervisors.get(entry.key)
        if supervisor is None:
            size = self.runner.model_bytes(entry)
            return ModelMemory(loaded=size is not None, model_bytes=size or 0)
        worker = supervisor.worker
        if worker is None or supervisor.status().state is not ModelState.READY:
            return ModelMemory(loaded=False)
        return ModelMemory(
            loaded=True, model_bytes=worker.model_bytes, process_bytes=worker.private_memory()
        )

    def memory_in_use(self) -> int:
        """What in-process models and the models in workers hold."""
        in_workers = sum(worker.model_bytes for _, worker in self.workers())
        return self.runner.memory_in_use() + in_workers

    # -- workers -------------------------------------------------------------------------------

    def _source(self, entry: ModelEntry) -> ModelSource | None:
        """The model folder ``entry`` was loaded from, if it is still what is served."""
        return source_of(entry, self.registry.sources())

    def _supervisor(self, entry: ModelEntry) -> ModelSupervisor | None:
        with self._lock:
            supervisor = self._supervisors.get(entry.key)
            if supervisor is not None:
                return supervisor
            if self._closed or self._source(entry) is None:
                return None
            supervisor = self._supervisors[entry.key] = ModelSupervisor(entry, self._context)
        if not self.registry.is_current(entry.key):
            supervisor.retire()  # an old version: its worker goes once the call is done
        return supervisor

    def _config(self, entry: ModelEntry) -> WorkerConfig:
        source = self._source(entry)
        if source is None:
            raise RuntimeError(f"model {entry.id!r} has no model folder to start from")
        settings = self.settings
        return WorkerConfig(
            source=source,
            model_id=entry.id,
            version=entry.version,
            device=settings.device,
            half_precision=settings.half_precision,
            ocio=settings.ocio,
            interactive_threads=settings.interactive_threads,
            batch_threads=settings.batch_threads,
            log_level=logging.getLogger("frameserve").getEffectiveLevel(),
            tune_allocator=allocator_tuned(),
        )

    def _retire_stale(self) -> None:
        """The registry changed: workers of replaced or removed models stop once idle."""
        for key, supervisor in list(self._supervisors.items()):
            if not self.registry.is_current(key):
                supervisor.retire()

    def _make_room(self, ready: ModelSupervisor) -> None:
        """Stop idle workers, least recently used first, while the models exceed the budget."""
        if self._budget is None:
            return
        live = self.workers()
        total = sum(worker.model_bytes for _, worker in live)
        for supervisor, worker in sorted(live, key=lambda pair: pair[0].last_used):
            if total <= self._budget:
                return
            if supervisor is not ready and supervisor.stop_idle():
                log.info(
                    "stopping the worker of model %s to stay within the model memory budget",
                    supervisor.name,
                )
                total -= worker.model_bytes

    def _watch(self) -> None:
        while not self._stop.wait(MEMORY_POLL):
            for key, supervisor in list(self._supervisors.items()):
                try:
                    supervisor.check_memory()
                    supervisor.flush()
                except Exception:  # the watch must go on
                    log.exception("watching the worker of model %s failed", supervisor.name)
                status = supervisor.status()
                retired = not self.registry.is_current(key)
                if retired and supervisor.in_flight == 0 and status.worker is None:
                    with self._lock:
                        if self._supervisors.get(key) is supervisor:
                            del self._supervisors[key]

    # -- closing -------------------------------------------------------------------------------

    def close(self, timeout: float = STOP_GRACE + 1.0) -> None:
        """Stop every worker (each gets a moment to finish), then the host's threads."""
        with self._lock:
            self._closed = True
            supervisors = list(self._supervisors.values())
        workers = [w for w in (s.close() for s in supervisors) if w is not None]
        stoppers = [
            threading.Thread(
                target=worker.stop,
                args=("stopped", "was stopped: the server is shutting down"),
                kwargs={"grace": STOP_GRACE},
                daemon=True,
            )
            for worker in workers
        ]
        for thread in stoppers:
            thread.start()
        deadline = time.monotonic() + timeout
        for worker in workers:
            if not worker.join(max(0.0, deadline - time.monotonic())):
                worker.kill()
                worker.join(1.0)
        self._stop.set()
        self._monitor.join(1.0)
        self._spares.close()
        self._spawner.close()
        self.frames.close()
        _live_hosts.discard(self)

    def kill_all(self) -> None:
        """Kill every worker at once (the interpreter is exiting)."""
        for _, worker in self.workers():
            worker.kill()
        self._spares.close()


class _Spawner:
    """One long-lived thread that starts worker processes (see :mod:`.worker`)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._loop, name="frameserve-spawner", daemon=True)
        self._thread.start()

    def __call__(self, start: Callable[[], None]) -> None:
        self.submit(start).result()

    def submit(self, start: Callable[[], None]) -> Future[None]:
        """Run ``start`` on the spawner thread; return its future."""
        future: Future[None] = Future()
        self._queue.put((start, future))
        return future

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            start, future = item
            try:
                start()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5.0)


class _Spares:
    """One worker interpreter kept started, waiting to be told its model (see above)."""

    def __init__(self, spawn: _Spawner) -> None:
        self._spawn = spawn
        self._lock = threading.Lock()
        self._ready: list[Launched] = []
        self._starting = False
        self._closed = False

    def take(self) -> Launched:
        """A started interpreter (the spare, or a new one); another spare starts meanwhile."""
        with self._lock:
            spare = self._ready.pop() if self._ready else None
        if spare is not None and spare[0].poll() is not None:  # it died waiting
            spare[1].close()
            spare = None
        launched = spare if spare is not None else launch(self._spawn)
        self._refill()
        return launched

    def _refill(self) -> None:
        with self._lock:
            if self._closed or self._starting or self._ready:
                return
            self._starting = True
        threading.Thread(target=self._start_one, name="frameserve-spare", daemon=True).start()

    def _start_one(self) -> None:
        try:
            launched = launch(self._spawn)
        except Exception:
            log.exception("cannot start a spare worker process")
            with self._lock:
                self._starting = False
            return
        with self._lock:
            self._starting = False
            if not self._closed:
                self._ready.append(launched)
                return
        _discard(launched)

    def close(self) -> None:
        """Stop the spares (and any that is being started)."""
        with self._lock:
            self._closed = True
            spares, self._ready = self._ready, []
        for launched in spares:
            _discard(launched)


def _discard(launched: Launched) -> None:
    process, sock = launched
    sock.close()  # it exits when its socket closes; kill it in case it is still importing
    with contextlib.suppress(OSError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5.0)


def _allow_open_files() -> None:
    """Raise this process's soft limit of open files to its hard limit.

    Every shared-memory segment holds a file descriptor while it lives (a 64-frame batch holds
    64), and the common soft limit of 1,024 is easily reached by a busy server.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_live_hosts: weakref.WeakSet[ProcessHost] = weakref.WeakSet()


@atexit.register
def _kill_workers_at_exit() -> None:
    """Workers of hosts nobody closed die with the interpreter, not after it."""
    for host in list(_live_hosts):
        host.kill_all()
