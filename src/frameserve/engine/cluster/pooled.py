"""On a Ray Serve replica of a pool: many model versions, loaded on demand, least recently used
unloaded.

:class:`PoolReplica` is the class a :class:`~frameserve.engine.cluster.host.RayHost` deploys
for a pool of the deployment file (``[pools.NAME]``): one Ray Serve application whose replicas
serve every model of the pool. Each call names its model version with Ray Serve's *model
multiplexing* (``handle.options(multiplexed_model_id="id@version")``): Ray Serve routes it to
a replica that holds that model if one does, and the replica's loader (``serve.multiplexed``)
loads it if it does not, unloading the least recently used model first when the replica holds
``max_models_per_replica`` already. Each model is a
:class:`~frameserve.engine.cluster.replica.LoadedModel` (imported from its folder, set up on a
runner of its own), freed on unload (its runner's instance, then the device's cache) once the
calls running on it are done.

A call carries the model folder's token: when the gateway reloaded the model (hot reload), the
replica that holds the old one loads the new one in its place and frees the old one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from frameserve.engine.cluster.replica import (
    LoadedModel,
    ModelRef,
    ReplicaSettings,
    Reply,
    Work,
    node_id,
    replica_name,
    set_log_level,
    thread_pools,
)
from frameserve.engine.request import Priority
from frameserve.errors import ModelLoadError

__all__ = ["PoolConfig", "PoolReplica", "multiplexed_id"]

log = logging.getLogger(__name__)

#: Times a call tries to find its model held (it may be unloaded or replaced meanwhile).
TRIES = 3


def multiplexed_id(model_id: str, version: str) -> str:
    """The multiplexed model id of a model version (the folder's token is not part of it)."""
    return f"{model_id}@{version}"


@dataclass(frozen=True)
class PoolConfig:
    """A pool's name, how many models one replica holds, and how replicas run them."""

    pool: str
    max_models: int
    settings: ReplicaSettings


class _Slot:
    """One model version a replica holds: the loaded model, replaced when its folder changes.

    Calls hold the loaded model while they run (:meth:`acquire`, :meth:`release`); a model
    replaced or unloaded is freed when its last call ends.
    """

    def __init__(self, replica: PoolReplica, key: str, ref: ModelRef) -> None:
        self.replica = replica
        self.key = key
        self.lock = threading.Lock()
        self._replacing = threading.Lock()  # one new version loads at a time
        self.loaded: LoadedModel | None = LoadedModel(ref, replica.config.settings)
        self.users: dict[int, int] = {}
        self.retired: dict[int, LoadedModel] = {}

    @property
    def token(self) -> str | None:
        """The folder token of the model held (``None``: unloaded)."""
        loaded = self.loaded
        return None if loaded is None else loaded.ref.token

    def acquire(self, token: str) -> LoadedModel | None:
        """The loaded model for a call, if it is the one of ``token``; ``None``: load again."""
        with self.lock:
            loaded = self.loaded
            if loaded is None or loaded.ref.token != token:
                return None
            self.users[id(loaded)] = self.users.get(id(loaded), 0) + 1
            return loaded

    def release(self, loaded: LoadedModel) -> None:
        """A call on ``loaded`` ended; free it if it was retired and this was its last call."""
        with self.lock:
            left = self.users[id(loaded)] = self.users.get(id(loaded), 1) - 1
            if left > 0 or self.retired.pop(id(loaded), None) is None:
                return
            self.users.pop(id(loaded), None)
        self.replica.freed(loaded, "its last call ended")

    def replace(self, ref: ModelRef) -> None:
        """Load ``ref`` (the model's folder changed) in place of the model held."""
        with self._replacing:
            if self.token == ref.token:
                return
            fresh = LoadedModel(ref, self.replica.config.settings)  # calls go on meanwhile
            with self.lock:
                old, self.loaded = self.loaded, fresh
        log.info("model %s changed: replica %s loaded it again", ref.named, self.replica.name)
        if old is not None:
            self._retire(old, "replaced by its new version")

    def unload(self, why: str) -> None:
        """Unload the model held (freed once no call runs on it)."""
        with self.lock:
            old, self.loaded = self.loaded, None
        if self.replica.slots.get(self.key) is self:
            self.replica.slots.pop(self.key, None)
        if old is not None:
            self._retire(old, why)

    def __del__(self) -> None:
        """Called by Ray Serve's multiplexer when it unloads this model (least recently used)."""
        self.unload("least recently used")

    def _retire(self, loaded: LoadedModel, why: str) -> None:
        with self.lock:
            if self.users.get(id(loaded), 0) > 0:
                self.retired[id(loaded)] = loaded
                return
            self.users.pop(id(loaded), None)
        self.replica.freed(loaded, why)


class PoolReplica:
    """A replica of a pool: the models the gateway sends, loaded on demand (module docstring)."""

    def __init__(self, config: PoolConfig) -> None:
        from ray import serve

        set_log_level(config.settings.log_level)
        self.config = config
        self.name = replica_name()
        self.node = node_id()
        self._serve = serve
        self._pools = thread_pools(config.settings)
        self._refs: dict[str, ModelRef] = {}
        #: The models this replica holds (as Ray Serve's multiplexer does), by multiplexed id.
        self.slots: dict[str, _Slot] = {}
        self._loads = 0
        self._unloads = 0
        self._freed_bytes = 0

        async def load(key: str) -> _Slot:
            return await self._load(key)

        self._load_model: Callable[[str], Awaitable[_Slot]] = serve.multiplexed(
            max_num_models_per_replica=config.max_models
        )(load)

    async def run(
        self, ref: ModelRef, priority: int, items: list[Work]
    ) -> tuple[list[Reply], dict[str, Any]]:
        """Run ``items`` on the model ``ref`` names (loading it if this replica does not hold
        it); return the replies and the call's figures, with the models this replica holds."""
        loop = asyncio.get_running_loop()
        key = multiplexed_id(ref.model_id, ref.version)
        started = time.perf_counter()
        self._refs[key] = ref
        loaded = None
        for _ in range(TRIES):
            slot: _Slot = await self._load_model(key)
            if slot.token != ref.token:
                await loop.run_in_executor(None, slot.replace, ref)
            loaded = slot.acquire(ref.token)
            if loaded is not None:
                break
        if loaded is None:
            error = ModelLoadError(f"model {ref.model_id!r} was unloaded before it could run")
            return [("error", error)] * len(items), self._figures(started)
        held = loaded

        def call() -> list[Reply]:
            try:
                return held.run(Priority(priority), items)
            finally:  # here, not in the coroutine: a cancelled call may still be running
                slot.release(held)

        pool = self._pools[Priority(priority)]
        replies = await pool.run(call, skipped=lambda: slot.release(held))
        return replies, self._figures(started)

    async def refresh(self, ref: ModelRef) -> dict[str, Any]:
        """Load the new version of a model this replica holds (hot reload); else nothing."""
        slot = self.slots.get(multiplexed_id(ref.model_id, ref.version))
        if slot is not None and slot.token not in (None, ref.token):
            self._refs[slot.key] = ref
            await asyncio.get_running_loop().run_in_executor(None, slot.replace, ref)
        return self.info()

    def info(self) -> dict[str, Any]:
        """Who this replica is and the models it holds."""
        return {
            "replica": self.name,
            "node": self.node,
            "pid": os.getpid(),
            "pool": self.config.pool,
            "held": self.held(),
            "loads": self._loads,
            "unloads": self._unloads,
            "freed_bytes": self._freed_bytes,
        }

    def held(self) -> dict[str, tuple[str, int]]:
        """The models this replica holds: token and bytes by multiplexed id."""
        held = {}
        for key, slot in list(self.slots.items()):
            loaded = slot.loaded
            if loaded is not None:
                held[key] = (loaded.ref.token, loaded.model_bytes)
        return held

    def freed(self, loaded: LoadedModel, why: str) -> None:
        """Free ``loaded`` (no call runs on it) and say so."""
        freed = loaded.unload()
        self._unloads += 1
        self._freed_bytes += freed
        log.info(
            "replica %s unloaded model %s (%s): freed %.1f MB; it holds %d model(s)",
            self.name,
            loaded.ref.named,
            why,
            freed / 2**20,
            len(self.held()),
        )

    async def _load(self, key: str) -> _Slot:
        """Ray Serve's multiplexer asks for a model this replica does not hold."""
        ref = self._refs[key]
        started = time.perf_counter()
        slot = await asyncio.get_running_loop().run_in_executor(None, _Slot, self, key, ref)
        self.slots[key] = slot
        self._loads += 1
        log.info(
            "replica %s loaded model %s in %.2f s; it holds %d model(s) (at most %d)",
            self.name,
            ref.named,
            time.perf_counter() - started,
            len(self.held()),
            self.config.max_models,
        )
        return slot

    def _figures(self, started: float) -> dict[str, Any]:
        return {
            "replica": self.name,
            "node": self.node,
            "pid": os.getpid(),
            "seconds": time.perf_counter() - started,
            "held": self.held(),
            "loads": self._loads,
            "unloads": self._unloads,
        }
