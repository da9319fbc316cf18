"""Keeping one model version's worker process alive: start, deadlines, restarts, failure.

A :class:`ModelSupervisor` owns the worker of one model version (``(id, version, token)``):

- **Start.** The worker starts at the model's first request (models are set up on first use,
  never at start-up) and the model reads as *loading* until it has imported the model and run
  its setup; requests wait for it. A start that takes longer than the server's
  ``model_timeout`` (or the model's ``timeout_s``, if longer) is stopped as a hang.
- **Deadlines.** A call may run for the model's ``timeout_s`` (default: the server's
  ``model_timeout``), tightened by the requests' own deadline (HTTP ``deadline_ms``). Past
  it, the call fails with :class:`~frameserve.errors.ModelTimeoutError` naming the model, the
  worker is killed, and a new one starts at once; requests queued for the model run there. A
  deadline that passes while the worker is still starting fails the request unrun
  (:class:`~frameserve.errors.DeadlineExceededError`) and leaves the worker to start.
- **Crashes.** A worker that dies (an exit, a signal, past its memory cap) fails only the
  calls it held, with :class:`~frameserve.errors.ModelCrashedError` naming the model and the
  cause; the model reads as *restarting* while a new worker starts after a pause that doubles
  with each recent crash (:data:`FIRST_BACKOFF` seconds, at most :data:`MAX_BACKOFF`).
  ``max_crashes`` deaths within ``crash_window`` seconds mark the model *failed*: its requests
  get :class:`~frameserve.errors.ModelLoadError` saying why, until :meth:`reset` (the admin
  ``load`` request) — or until its files change, which makes a new model version with a
  supervisor of its own. Timeouts restart the worker but do not count as crashes.
- **Memory.** :meth:`check_memory` (called every :data:`MEMORY_POLL` seconds by the host)
  stops a worker whose private memory is past its cap: the model's ``memory_limit_mb``, else
  the server's ``worker_memory_bytes`` (which also caps the model's own), else half the RAM.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from frameserve.catalogue.entries import ModelEntry
from frameserve.engine.devices import total_memory
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import InferenceRequest, InferenceResult, Priority
from frameserve.engine.workers.host import ModelState, ModelStatus
from frameserve.engine.workers.process import WorkerConfig
from frameserve.engine.workers.transport import SegmentPool
from frameserve.engine.workers.worker import (
    CallTimedOut,
    Death,
    Launched,
    WorkerDied,
    WorkerProcess,
)
from frameserve.errors import (
    DeadlineExceededError,
    FrameServeError,
    ModelCrashedError,
    ModelLoadError,
    ModelTimeoutError,
    RequestCancelledError,
)

__all__ = ["FIRST_BACKOFF", "MAX_BACKOFF", "MEMORY_POLL", "ModelSupervisor", "WorkerSettings"]

log = logging.getLogger(__name__)

#: Seconds before the first restart after a crash; doubled for each further recent crash.
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 30.0
#: Seconds between two looks at the workers' memory.
MEMORY_POLL = 0.15
#: Seconds a stopped worker gets to finish what it runs before it is killed.
STOP_GRACE = 2.0


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """How the workers of a :class:`~frameserve.engine.workers.processes.ProcessHost` run.

    Attributes:
        device, half_precision, ocio: where and how models run (as for the runner).
        model_timeout: seconds a call may run for a model that declares no ``timeout_s``.
        memory_cap: the most private memory of one worker, set by the TD; ``None``: half
            the RAM for models that declare no ``memory_limit_mb`` (which then applies alone).
        max_crashes, crash_window: deaths within so many seconds that mark a model failed.
        interactive_threads, batch_threads: calls one worker runs at once, per priority.
        memory_budget_bytes: what the models of all workers may hold before idle workers
            are stopped, least recently used first (``None``: half the RAM).
    """

    device: str = "cpu"
    half_precision: bool | None = None
    ocio: str | None = None
    model_timeout: float = 600.0
    memory_cap: int | None = None
    max_crashes: int = 3
    crash_window: float = 300.0
    interactive_threads: int = 2
    batch_threads: int = 1
    memory_budget_bytes: int | None = None

    def memory_limit(self, entry: ModelEntry) -> int:
        """The private memory ``entry``'s worker may hold, in bytes."""
        declared = entry.spec.memory_limit_mb
        if declared is not None:
            limit = declared << 20
            return limit if self.memory_cap is None else min(limit, self.memory_cap)
        if self.memory_cap is not None:
            return self.memory_cap
        ram = total_memory(torch.device("cpu"))
        return ram // 2 if ram else 1 << 62

    def timeout(self, entry: ModelEntry) -> float:
        """Seconds one call of ``entry`` may run."""
        declared = entry.spec.timeout_s
        return self.model_timeout if declared is None else declared


@dataclass(frozen=True)
class _Context:
    """What every supervisor of one host shares."""

    settings: WorkerSettings
    frames: SegmentPool
    metrics: Metrics
    launch: Callable[[], Launched]
    config: Callable[[ModelEntry], WorkerConfig]
    on_ready: Callable[[ModelSupervisor], None]
    on_copy: Callable[[], None]


class ModelSupervisor:
    """The worker of one model version, kept alive (see the module docstring). Thread-safe."""

    def __init__(self, entry: ModelEntry, context: _Context) -> None:
        self.entry = entry
        self._context = context
        self._condition = threading.Condition()
        self._state = ModelState.IDLE
        self._error: str | None = None
        self._worker: WorkerProcess | None = None
        self._crashes: deque[float] = deque()
        self._restart: threading.Timer | None = None
        self._retired = False
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.memory_limit = context.settings.memory_limit(entry)

    @property
    def name(self) -> str:
        """How logs and errors name the model: its id, and its version when not 1."""
        entry = self.entry
        return entry.id if entry.version == "1" else f"{entry.id} (version {entry.version})"

    def status(self) -> ModelStatus:
        """The model's state, its error (failed) and its worker's process id."""
        with self._condition:
            worker = self._worker
            pid = worker.pid if worker is not None and worker.alive else None
            return ModelStatus(self._state, self._error, pid)

    @property
    def worker(self) -> WorkerProcess | None:
        """The live worker, if any."""
        worker = self._worker
        return worker if worker is not None and worker.alive else None

    # -- running -------------------------------------------------------------------------------

    def run(
        self, requests: Sequence[InferenceRequest], priority: Priority
    ) -> list[InferenceResult | FrameServeError]:
        """Run ``requests`` (one, or a batch) on the worker, starting it if need be.

        Raises:
            ModelLoadError: the model is marked failed, or its worker cannot load it.
            ModelTimeoutError: the call ran past its timeout or deadline (worker stopped).
            ModelCrashedError: the worker died while it held the call.
            DeadlineExceededError: the requests' deadline passed before the worker was ready.
        """
        settings = self._context.settings
        timeout = settings.timeout(self.entry)
        deadlines = [r.deadline for r in requests]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        with self._condition:
            self.in_flight += 1
        try:
            start_timeout = max(timeout, settings.model_timeout)
            worker = self._ready_worker(time.monotonic() + start_timeout, start_timeout, deadline)
            until = time.monotonic() + timeout  # the call's own time starts now
            try:
                return worker.call(requests, priority, until=min(until, deadline or math.inf))
            except CallTimedOut:
                past_deadline = deadline is not None and deadline < until
                error: FrameServeError = self._timed_out(worker, timeout, past_deadline)
            except WorkerDied as died:
                error = self._crashed(died.death)
            error.worker = worker.pid
            raise error
        finally:
            with self._condition:
                self.in_flight -= 1
                self.last_used = time.monotonic()
                if self._retired and not self.in_flight:
                    self._stop_worker("stopped", "was stopped: its model was replaced or removed")

    def _ready_worker(
        self, until: float, start_timeout: float, deadline: float | None
    ) -> WorkerProcess:
        """The live, ready worker: started now if there is none; waited for if starting.

        A worker that is not ready by ``until`` (its import or setup hangs) is stopped.
        """
        with self._condition:
            while True:
                if self._state is ModelState.FAILED:
                    raise ModelLoadError(self._error or f"model {self.entry.id!r} failed")
                if self._state is ModelState.IDLE:
                    self._start()
                worker = self._worker
                if self._state is ModelState.READY and worker is not None and worker.alive:
                    return worker
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise DeadlineExceededError(
                        f"request dropped unrun: its deadline passed while the worker of model "
                        f"{self.entry.id!r} was {self._state.value}"
                    )
                if now >= until:
                    if worker is not None and worker.alive:
                        raise self._timed_out(worker, start_timeout, False, starting=True)
                    raise ModelTimeoutError(
                        f"model {self.entry.id!r}: no worker was ready within "
                        f"{start_timeout:g} s (--model-timeout)"
                    )
                self._condition.wait(min(until, deadline or math.inf) - now)

    def _timed_out(
        self, worker: WorkerProcess, timeout: float, past_deadline: bool, *, starting: bool = False
    ) -> ModelTimeoutError:
        model = self.entry.id
        if starting:
            what = f"did not finish starting (its import and setup) within {timeout:g} s"
        elif past_deadline:
            what = "ran past the request's deadline (deadline_ms)"
        else:
            what = f"ran past its timeout of {timeout:g} s (timeout_s, --model-timeout)"
        self._context.metrics.model_timeout(model)
        log.error("model %s %s: stopping its worker %d", self.name, what, worker.pid)
        worker.stop("timeout", f"was stopped: a request on it {what}")
        return ModelTimeoutError(f"model {model!r} {what}; its worker was stopped and starts again")

    def _crashed(self, death: Death) -> FrameServeError:
        model = self.entry.id
        if death.reason == "load":
            return ModelLoadError(f"model {model!r} failed to load in its worker: {death.cause}")
        if death.reason == "timeout":
            return ModelTimeoutError(f"model {model!r}: its worker {death.cause}")
        if death.reason == "stopped":
            return RequestCancelledError(f"model {model!r}: its worker {death.cause}")
        return ModelCrashedError(f"model {model!r} crashed: its worker {death.cause}")

    # -- the worker's life ---------------------------------------------------------------------

    def _start(self) -> None:
        """Start a worker (lock held); the state is loading until it says it is ready."""
        self._state = ModelState.LOADING
        try:
            worker = WorkerProcess(
                self._context.config(self.entry),
                self._context.launch(),
                frames=self._context.frames,
                on_exit=self._exited,
                on_copy=self._context.on_copy,
            )
        except Exception as exc:  # fork failed, out of processes: a crash like any other
            log.exception("cannot start a worker for model %s", self.name)
            self._state = ModelState.IDLE
            raise ModelCrashedError(
                f"model {self.entry.id!r}: its worker could not start: {exc}"
            ) from exc
        self._worker = worker
        log.info("started worker %d for model %s", worker.pid, self.name)
        threading.Thread(
            target=self._await_ready,
            args=(worker,),
            name=f"frameserve-start-{worker.pid}",
            daemon=True,
        ).start()

    def _await_ready(self, worker: WorkerProcess) -> None:
        worker.ready.wait()
        with self._condition:
            if worker is self._worker and worker.alive and worker.load_error is None:
                self._state = ModelState.READY
                if worker.setup_error:
                    log.warning("model %s is ready, but %s", self.name, worker.setup_error)
            self._condition.notify_all()
        if worker.alive:
            self._context.on_ready(self)

    def _exited(self, worker: WorkerProcess, death: Death) -> None:
        """The reader's word that ``worker`` ended: restart, or mark the model failed."""
        model = self.entry.id
        with self._condition:
            if worker is not self._worker:
                return
            self._worker = None
            if death.reason == "stopped" or self._retired:
                self._state = ModelState.IDLE
                self._condition.notify_all()
                return
            if death.reason == "load":
                self._state, self._error = (
                    ModelState.FAILED,
                    (f"model {model!r} failed to load in its worker: {death.cause}"),
                )
                log.error("%s", self._error)
                self._condition.notify_all()
                return
            now = time.monotonic()
            if death.is_crash:
                self._context.metrics.worker_crash(model, death.reason)
                self._crashes.append(now)
            window = self._context.settings.crash_window
            while self._crashes and self._crashes[0] < now - window:
                self._crashes.popleft()
            crashes = len(self._crashes)
            if death.is_crash and crashes >= self._context.settings.max_crashes:
                self._state = ModelState.FAILED
                self._error = (
                    f"model {model!r} is marked failed: its worker died {crashes} times within "
                    f"{window:g} s, last {death.cause}; reload it (POST "
                    f"/v2/repository/models/{model}/load) or fix its files"
                )
                log.error("%s", self._error)
                self._condition.notify_all()
                return
            delay = (
                0.0
                if not death.is_crash
                else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, crashes - 1))
            )
            log.warning(
                "worker %d of model %s %s; starting a new one in %.2f s",
                worker.pid,
                self.name,
                death.cause,
                delay,
            )
            self._state = ModelState.RESTARTING
            self._restart = threading.Timer(delay, self._restart_now, args=(death.reason,))
            self._restart.daemon = True
            self._restart.start()
            self._condition.notify_all()

    def _restart_now(self, reason: str) -> None:
        with self._condition:
            if self._state is not ModelState.RESTARTING or self._retired:
                return
            self._context.metrics.worker_restart(self.entry.id, reason)
            try:
                self._start()
            except FrameServeError:
                self._state = ModelState.IDLE  # the next request tries again
            self._condition.notify_all()

    def check_memory(self) -> None:
        """Stop the worker if its private memory is past its cap."""
        worker = self.worker
        if worker is None:
            return
        used = worker.private_memory()
        if used is None or used <= self.memory_limit:
            return
        cause = (
            f"used {_mib(used)} of private memory, above its memory limit of "
            f"{_mib(self.memory_limit)} (memory_limit_mb, --worker-memory-mb); it was stopped"
        )
        log.error("worker %d of model %s %s", worker.pid, self.name, cause)
        worker.stop("memory", cause)

    def flush(self) -> None:
        """Tell the worker what shared memory the server let go."""
        worker = self.worker
        if worker is not None:
            worker.flush()

    # -- ending --------------------------------------------------------------------------------

    def reset(self) -> bool:
        """Clear a failed state (the admin ``load`` request); return whether it was failed."""
        with self._condition:
            if self._state is not ModelState.FAILED:
                return False
            self._state, self._error = ModelState.IDLE, None
            self._crashes.clear()
            self._condition.notify_all()
            return True

    def retire(self) -> None:
        """The model was replaced or removed: stop its worker once no call holds it."""
        with self._condition:
            self._retired = True
            if self._restart is not None:
                self._restart.cancel()
            if not self.in_flight:
                self._stop_worker("stopped", "was stopped: its model was replaced or removed")

    def stop_idle(self) -> bool:
        """Stop the worker if no call holds it (to make room); return whether it did."""
        with self._condition:
            if self.in_flight or self._worker is None or self._state is not ModelState.READY:
                return False
            self._stop_worker("stopped", "was stopped to make room for other models")
            return True

    def _stop_worker(self, reason: str, cause: str) -> None:
        worker = self._worker
        if worker is not None:
            threading.Thread(
                target=worker.stop, args=(reason, cause), kwargs={"grace": STOP_GRACE}, daemon=True
            ).start()

    def close(self) -> WorkerProcess | None:
        """Stop for good: no restart; return the worker to stop (the caller waits for it)."""
        with self._condition:
            self._retired = True
            if self._restart is not None:
                self._restart.cancel()
            self._condition.notify_all()
            return self._worker


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"
