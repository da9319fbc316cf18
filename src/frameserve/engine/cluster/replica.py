"""On a Ray Serve replica: load one model version from its folder and run requests on it.

:class:`ModelReplica` is the class a :class:`~frameserve.engine.cluster.host.RayHost` deploys
(one Ray Serve deployment per model version). Like a worker process
(:mod:`frameserve.engine.workers.process`), a replica imports the model folder again from its
path — the registry entry's source, so every node must see the folder at the same path
(shared storage) — finds its model version, and serves it alone through a
:class:`~frameserve.engine.runner.Runner` over a one-model registry, so padding, tiling,
colour, batching and out-of-memory fallbacks are exactly the server's.

Frames arrive as numpy arrays through Ray's object store (a large argument is stored once and
mapped without a copy on the replica's node) and go back the same way. Interactive and batch
calls run on thread pools of their own, the batch one at a lower CPU priority. A model that
fails to load or set up does not fail the replica: each call answers with the error, as a
worker does. Each answer carries the replica's name and process id and the seconds the call
took, which the gateway counts per replica for ``/metrics``.

This module imports Ray only to name the node a replica runs on: Ray Serve wraps the class
when it is deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from frameserve.catalogue.entries import ModelEntry
from frameserve.catalogue.folders import ModelSource, load_folder
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.colour import ColourManager
from frameserve.engine.request import InferenceRequest, InferenceResult, Priority
from frameserve.engine.runner import Runner
from frameserve.errors import FrameServeError, ModelLoadError, ModelRunError
from frameserve.plugin.knobs import KnobValues

__all__ = ["BATCH_NICENESS", "ModelReplica", "ReplicaConfig", "Reply", "Work", "as_tensor"]

log = logging.getLogger(__name__)

#: How much lower (in ``nice`` steps) batch calls run than interactive ones.
BATCH_NICENESS = 10

#: One request as it travels to a replica: its frames by name, knob values, colourspace.
Work = tuple[list[tuple[str, np.ndarray]], dict[str, Any], str]
#: One request's answer: ``("ok", (frames, objects))`` or ``("error", FrameServeError)``.
Reply = tuple[str, Any]


@dataclass(frozen=True, kw_only=True)
class ReplicaConfig:
    """Which model version a replica serves, and how (as a worker process's config)."""

    source: ModelSource
    model_id: str
    version: str
    token: str
    device: str = "auto"
    half_precision: bool | None = None
    ocio: str | None = None
    interactive_threads: int = 2
    batch_threads: int = 1
    log_level: int = logging.INFO


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """``array`` as a tensor without a copy (arrays from the object store are read-only)."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class ModelReplica:
    """One model version on a Ray Serve replica (see the module docstring)."""

    def __init__(self, config: ReplicaConfig) -> None:
        logging.getLogger("frameserve").setLevel(config.log_level)
        logging.getLogger("frameserve.catalogue.registry").setLevel(logging.WARNING)
        self.config = config
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.node = _node_id()
        self.load_error: str | None = None
        self.entry: ModelEntry | None = None
        try:
            self.entry = _load_entry(config)
        except Exception as exc:
            self.load_error = _describe(exc)
        registry = ModelRegistry((), builtins=False)
        if self.entry is not None:
            entry = self.entry
            registry.add_provider("replica", lambda: [entry])
        colour = ColourManager(config.ocio) if config.ocio else None
        self.runner = Runner(
            registry,
            device=config.device,
            colour=colour,
            memory_budget_bytes=None,
            half_precision=config.half_precision,
        )
        self.model_bytes = 0
        if self.entry is not None:
            try:
                self.model_bytes = self.runner.set_up(self.entry)
            except FrameServeError as exc:  # requests say so (and try the setup again)
                log.warning("model %s failed to set up: %s", config.model_id, exc)
        self._pools = {
            Priority.INTERACTIVE: ThreadPoolExecutor(
                max(1, config.interactive_threads), thread_name_prefix="replica-interactive"
            ),
            Priority.BATCH: ThreadPoolExecutor(
                max(1, config.batch_threads),
                thread_name_prefix="replica-batch",
                initializer=_lower_thread_priority,
            ),
        }

    async def run(self, priority: int, items: list[Work]) -> tuple[list[Reply], dict[str, Any]]:
        """Run ``items`` (one request, or a batch) at ``priority``; each gets its reply.

        Returns the replies and the call's figures: replica name, process id, seconds.
        """
        loop = asyncio.get_running_loop()
        pool = self._pools[Priority(priority)]
        started = time.perf_counter()
        replies = await loop.run_in_executor(pool, self._run, Priority(priority), items)
        figures = {
            "replica": self.name,
            "node": self.node,
            "pid": os.getpid(),
            "seconds": time.perf_counter() - started,
        }
        return replies, figures

    def info(self) -> dict[str, Any]:
        """Who this replica is and what it serves."""
        return {
            "replica": self.name,
            "node": self.node,
            "pid": os.getpid(),
            "model": self.config.model_id,
            "version": self.config.version,
            "token": self.config.token,
            "model_bytes": self.model_bytes,
            "load_error": self.load_error,
        }

    def _run(self, priority: Priority, items: list[Work]) -> list[Reply]:
        entry = self.entry
        if entry is None:
            error = ModelLoadError(
                f"model {self.config.model_id!r} failed to load: {self.load_error}"
            )
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


def _reply(outcome: InferenceResult | FrameServeError) -> Reply:
    if isinstance(outcome, FrameServeError):
        return ("error", _picklable(outcome))
    frames = [
        (name, np.ascontiguousarray(frame.detach().to("cpu", torch.float32).numpy()))
        for name, frame in outcome.frames.items()
    ]
    return ("ok", (frames, tuple(outcome.objects)))


def _load_entry(config: ReplicaConfig) -> ModelEntry:
    """Import the model folder and return the entry of the model version to serve."""
    loaded = load_folder(config.source)
    for entry in loaded.entries:
        if entry.id == config.model_id and entry.version == config.version:
            if isinstance(entry, ModelEntry):
                return entry
            raise ModelLoadError(f"model {config.model_id!r} failed to load: {entry.error}")
    raise ModelLoadError(
        f"model {config.model_id!r} (version {config.version}) is not in {config.source.folder}"
    )


def _node_id() -> str:
    """The id of the Ray node this process runs on (``""`` outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FrameServeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _picklable(error: FrameServeError) -> FrameServeError:
    """``error`` without its traceback, able to cross to the gateway (or a plain one)."""
    error.__traceback__ = error.__cause__ = error.__context__ = None
    try:
        pickle.dumps(error)
    except Exception:
        return ModelRunError(str(error))
    return error


_niceness_lock = threading.Lock()


def _lower_thread_priority() -> None:
    with _niceness_lock, contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BATCH_NICENESS)
