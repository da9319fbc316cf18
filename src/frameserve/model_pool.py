"""Loaded model instances: setup on first use, a memory budget, least-recently-used unloading.

The pool keeps one instance per model. A model is set up the first time a request needs it
(never at start-up), by one thread while requests for other models keep running. While a
request uses a model it is *in use* and is never unloaded.

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

from frameserve.devices import allocated_bytes, is_out_of_memory, release_memory
from frameserve.errors import ModelSetupError
from frameserve.model import Model
from frameserve.registry import ModelRegistry

__all__ = ["LoadedModel", "ModelPool", "model_modules", "model_tensor_bytes"]

log = logging.getLogger(__name__)


class LoadedModel:
    """A model instance whose setup has run, and what the runner learnt about it.

    Attributes:
        id: the model's id.
        model: the instance.
        size_bytes: its measured size (see the module docstring).
        in_use: how many requests are running on it now.
        half: whether it runs in float16.
        batched: whether it writes its own ``predict_batch`` (then every request goes there).
        channels_last: whether its 4-D frames are handed over in channels-last memory order.
        channels_last_proven: whether a prediction on channels-last frames has succeeded.
        tile_limit: the tile size (pixels) that worked after running out of memory, if any.
    """

    def __init__(self, model_id: str, model: Model) -> None:
        self.id = model_id
        self.model = model
        self.size_bytes = 0
        self.in_use = 0
        self.half = False
        self.batched = False
        self.channels_last = False
        self.channels_last_proven = False
        self.tile_limit: int | None = None

    def __repr__(self) -> str:
        return f"LoadedModel({self.id!r}, {self.size_bytes} bytes, in use {self.in_use})"


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


class ModelPool:
    """One instance per model of ``registry`` on ``device``, within ``budget_bytes`` (None: any).

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
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # least recent first
        self._setup_locks: dict[str, threading.Lock] = {}
        self._known_sizes: dict[str, int] = {}

    def loaded(self) -> list[str]:
        """Return the ids of the loaded models, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def bytes_in_use(self) -> int:
        """Return the sum of the sizes of the loaded models."""
        with self._lock:
            return sum(loaded.size_bytes for loaded in self._loaded.values())

    @contextmanager
    def use(self, model_id: str) -> Iterator[LoadedModel]:
        """Hold ``model_id`` loaded (setting it up if needed) and in use inside the block.

        Raises:
            ModelSetupError: its setup raised.
        """
        loaded = self._acquire(model_id)
        try:
            yield loaded
        finally:
            with self._lock:
                loaded.in_use -= 1

    def unload(self, model_id: str) -> bool:
        """Unload ``model_id`` unless it is in use; return whether it was unloaded."""
        with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is None or loaded.in_use:
                return False
            del self._loaded[model_id]
        del loaded
        release_memory(self.device)
        log.info("unloaded model %s", model_id)
        return True

    def _acquire(self, model_id: str) -> LoadedModel:
        with self._lock:
            loaded = self._take(model_id)
            if loaded is not None:
                return loaded
            setup_lock = self._setup_locks.setdefault(model_id, threading.Lock())
        with setup_lock:  # one setup per model; other models keep running meanwhile
            with self._lock:
                loaded = self._take(model_id)
                if loaded is not None:
                    return loaded
                evicted = self._evict(self._known_sizes.get(model_id, 0), keep=model_id)
            self._dropped(evicted, reason=f"to make room for model {model_id}")
            loaded = self._load(model_id)
            with self._lock:
                loaded.in_use = 1
                self._loaded[model_id] = loaded
                self._known_sizes[model_id] = loaded.size_bytes
                evicted = self._evict(0, keep=model_id)
                total = sum(m.size_bytes for m in self._loaded.values())
            self._dropped(evicted, reason=f"after loading model {model_id}")
            if self.budget_bytes is not None and total > self.budget_bytes:
                log.warning(
                    "loaded models hold %s, above the model memory budget of %s: the models "
                    "in use cannot be unloaded",
                    _mib(total),
                    _mib(self.budget_bytes),
                )
            return loaded

    def _take(self, model_id: str) -> LoadedModel | None:
        """Mark ``model_id`` in use and most recently used, if loaded (lock held)."""
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            loaded.in_use += 1
            self._loaded.move_to_end(model_id)
        return loaded

    def _evict(self, needed: int, *, keep: str) -> list[LoadedModel]:
        """Remove least recently used models not in use until ``needed`` more fits (lock held)."""
        if self.budget_bytes is None:
            return []
        evicted = []
        total = sum(m.size_bytes for m in self._loaded.values())
        for loaded in list(self._loaded.values()):
            if total + needed <= self.budget_bytes:
                break
            if loaded.in_use or loaded.id == keep:
                continue
            del self._loaded[loaded.id]
            total -= loaded.size_bytes
            evicted.append(loaded)
        return evicted

    def _evict_all_unused(self) -> list[LoadedModel]:
        with self._lock:
            evicted = [m for m in self._loaded.values() if not m.in_use]
            for loaded in evicted:
                del self._loaded[loaded.id]
        return evicted

    def _dropped(self, evicted: list[LoadedModel], *, reason: str) -> None:
        if not evicted:
            return
        for loaded in evicted:
            log.info(
                "unloaded model %s (%s) %s, within the model memory budget of %s",
                loaded.id,
                _mib(loaded.size_bytes),
                reason,
                _mib(self.budget_bytes or 0),
            )
        evicted.clear()  # drop the last references before collecting
        release_memory(self.device)

    def _load(self, model_id: str) -> LoadedModel:
        entry = self.registry.get(model_id)
        assert entry.model_class is not None  # get() returns loaded plug-ins only
        for attempt in (1, 2):
            try:
                return self._set_up(model_id, entry.model_class)
            except Exception as exc:
                retry = attempt == 1 and is_out_of_memory(exc)
                evicted = self._evict_all_unused() if retry else []
                if not evicted:
                    log.exception("model %s failed its setup", model_id)
                    raise ModelSetupError(
                        f"model {model_id!r} failed to set up: {type(exc).__name__}: {exc}"
                    ) from exc
            log.warning(
                "model %s ran out of memory in its setup; unloading %d unused model(s) and "
                "trying once more",
                model_id,
                len(evicted),
            )
            self._dropped(evicted, reason=f"to make room for model {model_id}")
        raise AssertionError("unreachable")

    def _set_up(self, model_id: str, model_class: type[Model]) -> LoadedModel:
        log.info("setting up model %s on %s", model_id, self.device)
        before = allocated_bytes(self.device)
        loaded = LoadedModel(model_id, model_class())
        with torch.inference_mode():
            loaded.model.setup(self.device)
            self._prepare(loaded)
        grown = allocated_bytes(self.device) - before
        loaded.size_bytes = max(model_tensor_bytes(loaded.model), grown)
        log.info("model %s is set up: %s", model_id, _mib(loaded.size_bytes))
        return loaded


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
