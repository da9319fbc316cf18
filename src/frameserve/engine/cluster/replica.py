"""On a Ray Serve replica: load a model version from its folder and run requests on it.

:class:`ModelReplica` is the class a :class:`~frameserve.engine.cluster.host.RayHost` deploys
for a model version of its own (the replicas of a pool,
:class:`~frameserve.engine.cluster.pooled.PoolReplica`, hold several :class:`LoadedModel`).
Like a worker process (:mod:`frameserve.engine.workers.process`), a replica imports the model
folder again from its path — the registry entry's source, so every node must see the folder at
the same path (shared storage) — finds its model version, and serves it through a
:class:`~frameserve.engine.runner.Runner` over a one-model registry, so padding, tiling,
colour, batching and out-of-memory fallbacks are exactly the server's.

Frames arrive as numpy arrays through Ray's object store (a large argument is stored once and
mapped without a copy on the replica's node) and go back the same way. Interactive and batch
calls run on :class:`CallPool` of their own, the batch one at a lower CPU priority; a call the
gateway cancels (its clients went away) is skipped if it has not started, and gives its place
to the next call if it has (its thread finishes it: a thread cannot be stopped). A model that
fails to load or set up does not fail the replica: each call answers with the error, as a
worker does. Each answer carries the replica's name and process id and the seconds the call
took, which the gateway counts per replica for ``/metrics``.

This module imports Ray only to name the node a replica runs on: Ray Serve wraps the class
when it is deployed.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from frameserve.catalogue.entries import ModelEntry
from frameserve.catalogue.folders import ModelSource, load_model_version
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.colour import ColourManager
from frameserve.engine.failures import crossable, describe_error
from frameserve.engine.niceness import lower_thread_priority, start_native_pools
from frameserve.engine.request import InferenceRequest, InferenceResult, Priority
from frameserve.engine.runner import Runner
from frameserve.errors import (
    FrameServeError,
    ModelLoadError,
    ModelRunError,
)
from frameserve.plugin.knobs import KnobValues

__all__ = [
    "CallPool",
    "LoadedModel",
    "ModelRef",
    "ModelReplica",
    "ReplicaConfig",
    "ReplicaSettings",
    "Reply",
    "Work",
    "as_tensor",
    "node_id",
    "replica_name",
    "set_log_level",
    "thread_pools",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


#: One request as it travels to a replica: its frames by name, knob values, colourspace.
Work = tuple[list[tuple[str, np.ndarray]], dict[str, Any], str]
#: One request's answer: ``("ok", (frames, objects))`` or ``("error", FrameServeError)``.
Reply = tuple[str, Any]


@dataclass(frozen=True)
class ModelRef:
    """Which model version to load: its folder (with the folder's token), id and version."""

    source: ModelSource
    model_id: str
    version: str
    token: str

    @property
    def named(self) -> str:
        """The model as log lines name it (``id``, or ``id vN`` past the first version)."""
        return self.model_id if self.version == "1" else f"{self.model_id} v{self.version}"


@dataclass(frozen=True, kw_only=True)
class ReplicaSettings:
    """How a replica runs its models (as a worker process's settings)."""

    device: str = "auto"
    half_precision: bool | None = None
    ocio: str | None = None
    interactive_threads: int = 2
    batch_threads: int = 1
    log_level: int = logging.INFO


@dataclass(frozen=True)
class ReplicaConfig:
    """Which model version a replica serves, and how."""

    model: ModelRef
    settings: ReplicaSettings


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor without a copy (arrays from the object store are read-only)."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class LoadedModel:
    """One model version imported from its folder and set up on a runner of its own.

    A model that fails to load or set up is kept with its error: each call answers with it.
    """

    def __init__(self, ref: ModelRef, settings: ReplicaSettings) -> None:
        self.ref = ref
        self.load_error: str | None = None
        self.entry: ModelEntry | None = None
        try:
            self.entry = load_model_version(ref.source, ref.model_id, ref.version)
        except Exception as exc:
            self.load_error = describe_error(exc)
        registry = ModelRegistry((), builtins=False)
        if self.entry is not None:
            entry = self.entry
            registry.add_provider("replica", lambda: [entry])
        colour = ColourManager(settings.ocio) if settings.ocio else None
        self.runner = Runner(
            registry,
            device=settings.device,
            colour=colour,
            memory_budget_bytes=None,
            half_precision=settings.half_precision,
        )
        self.model_bytes = 0
        if self.entry is not None:
            try:
                self.model_bytes = self.runner.set_up(self.entry)
            except FrameServeError as exc:  # requests say so (and try the setup again)
                log.warning("model %s failed to set up: %s", ref.model_id, exc)

    def run(self, priority: Priority, items: list[Work]) -> list[Reply]:
        """Run ``items`` (one request, or a batch) on the model; each gets its reply."""
        entry = self.entry
        if entry is None:
            error = ModelLoadError(f"model {self.ref.model_id!r} failed to load: {self.load_error}")
            return [("error", error)] * len(items)
        requests = [
            InferenceRequest(
                model_id=entry.id,
                frames={name: as_tensor(array) for name, array in frames},
                knobs=KnobValues(knobs),
                colourspace=colourspace,
                priority=priority,
                entry=entry,
            )
            for frames, knobs, colourspace in items
        ]
        outcomes = self._outcomes(entry, requests)
        return [_reply(outcome) for outcome in outcomes]

    def unload(self) -> int:
        """Free the model (the runner's instance, then the device's cache); return what it held.

        Call it when no call runs on the model.
        """
        held = self.runner.memory_in_use()
        if self.entry is not None:
            self.runner.unload(self.entry.id, self.entry.version)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return held - self.runner.memory_in_use()

    def _outcomes(
        self, entry: ModelEntry, requests: list[InferenceRequest]
    ) -> list[InferenceResult | FrameServeError]:
        try:
            if len(requests) == 1:
                return [self.runner.run(requests[0])]
            return list(self.runner.run_batch(requests))
        except FrameServeError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # the runner wraps model errors; anything else lands here
            log.exception("model %s failed unexpectedly", entry.id)
            error = ModelRunError(f"model {entry.id!r} failed: {type(exc).__name__}: {exc}")
            return [error] * len(requests)


class CallPool:
    """Runs a replica's calls of one priority: ``size`` at once, each on a thread.

    A call cancelled by the gateway (its clients went away, or its deadline passed) that has
    not started is skipped; one that runs gives its place up at once, so the next call starts
    on another thread, while its own thread finishes it (a thread cannot be stopped): at most
    ``size`` such calls run beside the live ones.
    """

    def __init__(self, size: int, name: str, initializer: Callable[[], None] | None = None):
        self.size = max(1, size)
        self._places = asyncio.Semaphore(self.size)
        self._threads = ThreadPoolExecutor(
            2 * self.size, thread_name_prefix=name, initializer=initializer
        )

    async def run(self, call: Callable[[], T], skipped: Callable[[], None] | None = None) -> T:
        """Run ``call`` on a thread when a place is free; ``skipped`` runs if it never starts."""
        future: Future[T] | None = None
        try:
            async with self._places:
                future = self._threads.submit(call)
                return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future is None or future.cancel():
                log.info("a cancelled call was skipped before it started")
                if skipped is not None:
                    skipped()
            elif not future.done():
                log.info("a cancelled call runs to its end on its thread; the next one starts")
            raise


def thread_pools(settings: ReplicaSettings) -> dict[Priority, CallPool]:
    """A replica's calls per priority: interactive, and batch at a lower CPU priority."""
    start_native_pools()  # at normal priority, before a batch thread can start them
    return {
        Priority.INTERACTIVE: CallPool(settings.interactive_threads, "replica-interactive"),
        Priority.BATCH: CallPool(
            settings.batch_threads, "replica-batch", initializer=lower_thread_priority
        ),
    }


def replica_name() -> str:
    """This replica's name in figures and logs: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def set_log_level(level: int) -> None:
    """Log on a replica as the gateway does (the registry's lines only past warnings), to the
    replica's standard error, which Ray keeps in its logs and shows on the gateway's."""
    logger = logging.getLogger("frameserve")
    logger.setLevel(level)
    logging.getLogger("frameserve.catalogue.registry").setLevel(logging.WARNING)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


class ModelReplica:
    """One model version on a Ray Serve replica (see the module docstring)."""

    def __init__(self, config: ReplicaConfig) -> None:
        set_log_level(config.settings.log_level)
        self.config = config
        self.name = replica_name()
        self.node = node_id()
        self.model = LoadedModel(config.model, config.settings)
        self._pools = thread_pools(config.settings)

    async def run(self, priority: int, items: list[Work]) -> tuple[list[Reply], dict[str, Any]]:
        """Run ``items`` (one request, or a batch) at ``priority``; each gets its reply.

        Returns the replies and the call's figures: replica name, process id, seconds.
        """
        pool = self._pools[Priority(priority)]
        started = time.perf_counter()
        replies = await pool.run(functools.partial(self.model.run, Priority(priority), items))
        figures = {
            "replica": self.name,
            "node": self.node,
            "pid": os.getpid(),
            "seconds": time.perf_counter() - started,
        }
        return replies, figures

    def info(self) -> dict[str, Any]:
        """Who this replica is and what it serves."""
        ref = self.config.model
        return {
            "replica": self.name,
            "node": self.node,
            "pid": os.getpid(),
            "model": ref.model_id,
            "version": ref.version,
            "token": ref.token,
            "model_bytes": self.model.model_bytes,
            "load_error": self.model.load_error,
        }


def _reply(outcome: InferenceResult | FrameServeError) -> Reply:
    if isinstance(outcome, FrameServeError):
        return ("error", crossable(outcome))
    frames = [
        (name, np.ascontiguousarray(frame.detach().to("cpu", torch.float32).numpy()))
        for name, frame in outcome.frames.items()
    ]
    return ("ok", (frames, tuple(outcome.objects)))


def node_id() -> str:
    """The id of the Ray node this process runs on (``""`` outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return ""
