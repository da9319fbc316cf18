"""Where models run: the interface the scheduler runs requests through, and the in-process host.

The scheduler decides *when* a request runs; a :class:`ModelHost` decides *where*. Two hosts
exist: :class:`InProcessHost` runs every model in the server process on a
:class:`~frameserve.engine.runner.Runner` (``--isolation off``, and commands such as
``frameserve run --local``), and :class:`~frameserve.engine.workers.processes.ProcessHost`
runs each model version in a worker process of its own. A cluster backend (Ray Serve: a
deployment per model, replicas for workers) is meant to be a third implementation of the same
small interface:

- ``run(request)`` / ``run_batch(requests)``: run one request, or requests the scheduler
  grouped into a batch, and return results (or, for a batch, each request's error). The host
  enforces the run-time limits it can (a worker is stopped past its deadline).
- ``concurrency_key(request)``: requests with the same key share the scheduler's
  ``workers`` / ``batch_workers`` limits. The in-process host answers one key for every model
  (they share one process and its threads); the process host one key per model version, so a
  model that hangs holds only its own turns, never the other models'.
- ``allocate_frame(shape)``: a float32 buffer for a request frame that the host can run
  without copying it (shared memory for worker processes); front doors decode into it.
- ``keep(result)``: the result as something that may be kept indefinitely (the result cache
  keeps it), independent of the host's reusable buffers — the result itself in-process, a
  copy of its frames from shared memory for the process host.
- ``status(entry)``: whether the model can serve now (:class:`ModelStatus`); ``reset(id)``
  clears a failed state; ``loaded_models()`` / ``memory_in_use()`` for the metrics;
  ``close()``.

A host may also answer ``model_memory(entry)`` (:class:`ModelMemory`: whether that version is
set up now and the memory it holds; the dashboard's models page shows it). Both hosts here do;
:meth:`Engine.model_memory <frameserve.engine.engine.Engine.model_memory>` falls back to
``loaded_models()`` for a host that does not.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from frameserve.catalogue.entries import ModelEntry
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import InferenceRequest, InferenceResult
from frameserve.engine.runner import Runner
from frameserve.errors import FrameServeError

__all__ = ["InProcessHost", "ModelHost", "ModelMemory", "ModelState", "ModelStatus", "Outcome"]

Outcome = InferenceResult | FrameServeError


class ModelState(enum.Enum):
    """Where a model's worker is in its life."""

    IDLE = "idle"  #: no worker runs it now; one starts at its next request
    LOADING = "loading"  #: its worker is starting: importing the model, running its setup
    READY = "ready"  #: its worker serves requests
    RESTARTING = "restarting"  #: its worker died or was stopped; a new one is starting
    FAILED = "failed"  #: its worker died too often; it is not run until it is reloaded


@dataclass(frozen=True)
class ModelStatus:
    """A model's state, why it failed (if it did) and the process id of its worker."""

    state: ModelState
    error: str | None = None
    worker: int | None = None

    @property
    def ready(self) -> bool:
        """Whether a request would run now (an idle model's worker starts on demand)."""
        return self.state in (ModelState.IDLE, ModelState.READY)


@dataclass(frozen=True)
class ModelMemory:
    """Whether a model version is set up now, and the memory it holds.

    Attributes:
        loaded: its setup has run and it is held (in its worker process, or in-process).
        model_bytes: its parameters and buffers, measured after its setup (0: none, or not
            loaded; see :mod:`frameserve.engine.pool`).
        process_bytes: the private memory of its worker process (``RssAnon``: the model, its
            imports and its working buffers); ``None`` when it runs in the server process or
            no worker of it runs.
    """

    loaded: bool
    model_bytes: int = 0
    process_bytes: int | None = None


#: What the in-process host reports for every model.
IN_PROCESS = ModelStatus(ModelState.READY)


class ModelHost(Protocol):
    """Where models run (see the module docstring). Implementations are thread-safe."""

    @property
    def registry(self) -> ModelRegistry:
        """The models this host runs."""
        ...

    def run(self, request: InferenceRequest) -> InferenceResult:
        """Run one request; raise its error (a :class:`~frameserve.errors.FrameServeError`)."""
        ...

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[Outcome]:
        """Run requests with one batch key together; return each one's result or error."""
        ...

    def concurrency_key(self, request: InferenceRequest) -> Hashable:
        """What ``request`` shares the scheduler's concurrency limits with."""
        ...

    def allocate_frame(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A float32 ``(C, H, W)`` buffer for a request frame (contents undefined)."""
        ...

    def keep(self, result: InferenceResult) -> InferenceResult:
        """``result``, or a copy, that holds none of the host's reusable buffers."""
        ...

    def status(self, entry: ModelEntry) -> ModelStatus:
        """Whether ``entry``'s model can serve now."""
        ...

    def reset(self, model_id: str) -> list[str]:
        """Clear the failed state of ``model_id``'s versions; return one line per change."""
        ...

    def loaded_models(self) -> list[str]:
        """The ids of the models set up now (one per instance)."""
        ...

    def memory_in_use(self) -> int:
        """Bytes the set-up models hold."""
        ...

    def close(self) -> None:
        """Stop running models; release what the host holds."""
        ...


class InProcessHost:
    """Every model in this process, on one :class:`~frameserve.engine.runner.Runner`.

    ::

        host = InProcessHost(Runner(registry, device="cpu"))
        result = host.run(request)
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @property
    def registry(self) -> ModelRegistry:
        """The runner's registry."""
        return self.runner.registry

    def run(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request`` on the runner, in the calling thread."""
        return self.runner.run(request)

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[Outcome]:
        """Run ``requests`` as batches on the runner, in the calling thread."""
        return self.runner.run_batch(requests)

    def concurrency_key(self, request: InferenceRequest) -> Hashable:
        """One key for all: every model shares this process."""
        return None

    def allocate_frame(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A plain numpy buffer."""
        return np.empty(shape, dtype=np.float32)

    def keep(self, result: InferenceResult) -> InferenceResult:
        """The result itself: its frames are its own."""
        return result

    def status(self, entry: ModelEntry) -> ModelStatus:
        """Always ready: an in-process model fails per request, never as a whole."""
        return IN_PROCESS

    def reset(self, model_id: str) -> list[str]:
        """Nothing to clear."""
        return []

    def loaded_models(self) -> list[str]:
        """The runner's set-up models."""
        return self.runner.loaded_models()

    def model_memory(self, entry: ModelEntry) -> ModelMemory:
        """Whether the runner holds ``entry``'s model, and its measured size."""
        size = self.runner.model_bytes(entry)
        return ModelMemory(loaded=size is not None, model_bytes=size or 0)

    def memory_in_use(self) -> int:
        """What the runner's models hold."""
        return self.runner.memory_in_use()

    def close(self) -> None:
        """Nothing to stop: the scheduler's threads end the work."""
