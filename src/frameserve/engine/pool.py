"""Loaded model instances: setup on first use, a memory budget, least-recently-used unloading.

The pool keeps one instance per model version, keyed by the registry entry's
``(id, version, token)``: a model whose files changed has a new token, so it gets a new
instance and never runs on the old one. A model is set up the first time a request needs it
(never at start-up), by one thread while requests for other models keep running. While a
request uses a model it is *in use* and is never unloaded.

**Replaced models.** When the registry no longer serves an instance's key (its model was
reloaded or removed), the pool unloads it as soon as no request uses it
(:meth:`ModelPool.retire_stale`, called after every change of the registry). A request that
was given the old entry before the change still runs on the old model, set up again if need
be, and that instance is dropped once the request is done.

**Size of a model.** After ``setup`` (and the runner's conversions, such as float16), a model's
size is the bytes of the distinct tensors it holds: the parameters and buffers of every
``torch.nn.Module`` that is an attribute of the instance (or the instance itself, when it is a
module), plus the tensors that are attributes of the instance directly. On a CUDA device it is
the larger of that and the growth of ``torch.cuda.memory_allocated`` across setup, which also
catches tensors held elsewhere (in lists, in a compiled graph); when two models set up at once
the two measurements mix, so sizes are approximate.

**Budget.** When a model has been loaded and the sizes of the loaded models add up to more than
the budget, the least recently used models not in use are unloaded until they fit: the
instance is dropped, then garbage is collected and, on CUDA, the cached blocks are handed back
(``torch.cuda.empty_cache``). A model that was loaded before makes room for its known size
*before* its setup runs. When the models in use alone exceed the budget, a WARNING says so and
they stay: running a request beats refusing it. If a setup runs out of memory while unused
models are loaded, they are all unloaded and the setup is tried once more. An unloaded model
sets up again on its next use.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from frameserve.catalogue.registry import ModelEntry, ModelRegistry
from frameserve.engine.devices import allocated_bytes, is_out_of_memory, release_memory
from frameserve.errors import ModelSetupError
from frameserve.plugin.model import Model, ModelSpec

__all__ = ["LoadedModel", "ModelPool", "model_modules", "model_tensor_bytes"]

log = logging.getLogger(__name__)


class LoadedModel:
    """A model instance whose setup has run, and what the runner learnt about it.

    Attributes:
        id: the model's id.
        version: the model's version.
        key: the registry entry's ``(id, version, token)`` it was set up from.
        spec: the model's declaration.
        model: the instance.
        size_bytes: its measured size (see the module docstring).
        in_use: how many requests are running on it now.
        half: whether it runs in float16.
        batched: whether it writes its own ``predict_batch`` (then every request goes there).
        channels_last: whether its 4-D frames are handed over in channels-last memory order.
        channels_last_proven: whether a prediction on channels-last frames has succeeded.
        tile_limit: the tile size (pixels) that worked after running out of memory, if any.
        retired: whether the registry has replaced it (it is unloaded once not in use).
    """

    def __init__(self, entry: ModelEntry, model: Model) -> None:
        self.id = entry.id
        self.version = entry.version
        self.key = entry.key
        self.spec: ModelSpec = entry.spec
        self.model = model
        self.size_bytes = 0
        self.in_use = 0
        self.half = False
        self.batched = False
        self.channels_last = False
        self.channels_last_proven = False
        self.tile_limit: int | None = None
        self.retired = False

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.id!r}, version {self.version}, {self.size_bytes} bytes, "
            f"in use {self.in_use})"
        )


def model_modules(model: object) -> list[torch.nn.Module]:
    """Return the ``torch.nn.Module`` attributes of ``model`` (and ``model``, if it is one)."""
    found = [model] if isinstance(model, torch.nn.Module) else []
    for value in vars(model).values():
        if isinstance(value, torch.nn.Module) and all(value is not m for m in found):
            found.append(value)
    return found


def model_tensor_bytes(model: object) -> int:
    """Return the bytes of the distinct tensors ``model`` holds (see the module docstring)."""
    seen: set[int] = set()
    total = 0
    tensors: list[torch.Tensor] = [v for v in vars(model).values() if isinstance(v, torch.Tensor)]
    for module in model_modules(model):
        tensors += [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


Key = tuple[str, str, str]


class ModelPool:
    """One instance per model version of ``registry`` on ``device``, within ``budget_bytes``.

    ``budget_bytes`` may be ``None``: no limit.

    ``prepare`` runs after each ``setup`` (under ``torch.inference_mode``), before the model is
    measured: the runner converts it there (float16, memory format).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        device: torch.device,
        *,
        budget_bytes: int | None,
        prepare: Callable[[LoadedModel], None] = lambda loaded: None,
    ) -> None:
        self.registry = registry
        self.device = device
        self.budget_bytes = budget_bytes
        self._prepare = prepare
        self._lock = threading.Lock()
        self._loaded: OrderedDict[Key, LoadedModel] = OrderedDict()  # least recent first
        self._setup_locks: dict[Key, threading.Lock] = {}
        self._known_sizes: dict[tuple[str, str], int] = {}  # by id and version

    def loaded(self) -> list[str]:
        """Return the ids of the loaded models, least recently used first (one per instance)."""
        with self._lock:
            return [loaded.id for loaded in self._loaded.values()]

    def bytes_in_use(self) -> int:
        """Return the sum of the sizes of the loaded models."""
        with self._lock:
            return sum(loaded.size_bytes for loaded in self._loaded.values())

    def size_of(self, key: Key) -> int | None:
        """Return the size of the loaded instance of registry entry ``key``; ``None``: none is
        loaded."""
        with self._lock:
            loaded = self._loaded.get(key)
            return None if loaded is None else loaded.size_bytes

    @contextmanager
    def use(self, entry: ModelEntry) -> Iterator[LoadedModel]:
        """Hold the model of ``entry`` loaded (setting it up if needed) and in use inside.

        Raises:
            ModelSetupError: its setup raised.
        """
        loaded = self._acquire(entry)
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.in_use -= 1
                done = loaded.retired and not loaded.in_use
                if done and self._loaded.get(loaded.key) is loaded:
                    del self._loaded[loaded.key]
            if done:
                log.info("unloaded model %s: it was replaced", _name(loaded))
                del loaded
                release_memory(self.device)

    def unload(self, model_id: str, version: str | None = None) -> bool:
        """Unload ``model_id`` (every version, or ``version``) where not in use.

        Returns whether an instance was unloaded.
        """
        with self._lock:
            dropped = [
                loaded
                for loaded in self._loaded.values()
                if loaded.id == model_id and version in (None, loaded.version) and not loaded.in_use
            ]
            for loaded in dropped:
                del self._loaded[loaded.key]
        if not dropped:
            return False
        dropped.clear()
        release_memory(self.device)
        log.info("unloaded model %s", model_id)
        return True

    def retire_stale(self) -> None:
        """Unload the instances the registry no longer serves; those in use, once done."""
        with self._lock:
            stale = [m for m in self._loaded.values() if not self.registry.is_current(m.key)]
            dropped = [m for m in stale if not m.in_use]
            for loaded in stale:
                loaded.retired = True
                self._setup_locks.pop(loaded.key, None)
            for loaded in dropped:
                del self._loaded[loaded.key]
        for loaded in dropped:
            log.info("unloaded model %s: it was replaced", _name(loaded))
        if dropped:
            dropped.clear()
            release_memory(self.device)

    def _acquire(self, entry: ModelEntry) -> LoadedModel:
        key = entry.key
        with self._lock:
            loaded = self._take(key)
            if loaded is not None:
                return loaded
            setup_lock = self._setup_locks.setdefault(key, threading.Lock())
        name = _name(entry)
        with setup_lock:  # one setup per model; other models keep running meanwhile
            with self._lock:
                loaded = self._take(key)
                if loaded is not None:
                    return loaded
                known = self._known_sizes.get(key[:2], 0)
                evicted = self._evict(known, keep=key)
            self._dropped(evicted, reason=f"to make room for model {name}")
            loaded = self._load(entry)
            with self._lock:
                loaded.in_use = 1
                # A model the registry replaced meanwhile serves the requests that hold it,
                # then goes (retire_stale may have run before it was here to be seen).
                loaded.retired = not self.registry.is_current(key)
                self._loaded[key] = loaded
                self._known_sizes[key[:2]] = loaded.size_bytes
                evicted = self._evict(0, keep=key)
                total = sum(m.size_bytes for m in self._loaded.values())
            self._dropped(evicted, reason=f"after loading model {name}")
            if self.budget_bytes is not None and total > self.budget_bytes:
                log.warning(
                    "loaded models hold %s, above the model memory budget of %s: the models "
                    "in use cannot be unloaded",
                    _mib(total),
                    _mib(self.budget_bytes),
                )
            return loaded

    def _take(self, key: Key) -> LoadedModel | None:
        """Mark ``key``'s instance in use and most recently used, if loaded (lock held)."""
        loaded = self._loaded.get(key)
        if loaded is not None:
            loaded.in_use += 1
            self._loaded.move_to_end(key)
        return loaded

    def _evict(self, needed: int, *, keep: Key) -> list[LoadedModel]:
        """Remove least recently used models not in use until ``needed`` more fits (lock held)."""
        if self.budget_bytes is None:
            return []
        evicted = []
        total = sum(m.size_bytes for m in self._loaded.values())
        for loaded in list(self._loaded.values()):
            if total + needed <= self.budget_bytes:
                break
            if loaded.in_use or loaded.key == keep:
                continue
            del self._loaded[loaded.key]
            total -= loaded.size_bytes
            evicted.append(loaded)
        return evicted

    def _evict_all_unused(self) -> list[LoadedModel]:
        with self._lock:
            evicted = [m for m in self._loaded.values() if not m.in_use]
            for loaded in evicted:
                del self._loaded[loaded.key]
        return evicted

    def _dropped(self, evicted: list[LoadedModel], *, reason: str) -> None:
        if not evicted:
            return
        for loaded in evicted:
            log.info(
                "unloaded model %s (%s) %s, within the model memory budget of %s",
                _name(loaded),
                _mib(loaded.size_bytes),
                reason,
                _mib(self.budget_bytes or 0),
            )
        evicted.clear()  # drop the last references before collecting
        release_memory(self.device)

    def _load(self, entry: ModelEntry) -> LoadedModel:
        name = _name(entry)
        for attempt in (1, 2):
            try:
                return self._set_up(entry, entry.model_class)
            except Exception as exc:
                retry = attempt == 1 and is_out_of_memory(exc)
                evicted = self._evict_all_unused() if retry else []
                if not evicted:
                    log.exception("model %s failed its setup", name)
                    raise ModelSetupError(
                        f"model {entry.id!r} failed to set up: {type(exc).__name__}: {exc}"
                    ) from exc
            log.warning(
                "model %s ran out of memory in its setup; unloading %d unused model(s) and "
                "trying once more",
                name,
                len(evicted),
            )
            self._dropped(evicted, reason=f"to make room for model {name}")
        raise AssertionError("unreachable")

    def _set_up(self, entry: ModelEntry, model_class: type[Model]) -> LoadedModel:
        name = _name(entry)
        log.info("setting up model %s on %s", name, self.device)
        before = allocated_bytes(self.device)
        loaded = LoadedModel(entry, model_class())
        with torch.inference_mode():
            loaded.model.setup(self.device)
            self._prepare(loaded)
        grown = allocated_bytes(self.device) - before
        loaded.size_bytes = max(model_tensor_bytes(loaded.model), grown)
        log.info("model %s is set up: %s", name, _mib(loaded.size_bytes))
        return loaded


def _name(model: ModelEntry | LoadedModel) -> str:
    """How logs name a model: its id, and its version when that is not 1."""
    return model.id if model.version == "1" else f"{model.id} (version {model.version})"


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
