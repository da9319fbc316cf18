"""Running requests on models: where (device), how (batches, tiles, precision), colour, checks.

The runner decides *where* and *how* a request runs; the scheduler decides *when*. For each
request, or each batch of requests the scheduler grouped, it:

1. checks the frame size against the model's :class:`~frameserve.plugin.model.SpatialNeeds` (a model
   that cannot be tiled gets no frame above its ``max_size``: :class:`FrameError`);
2. converts the frames from the request's colourspace to the model's (on the CPU) and stacks
   them into one ``(N, C, H, W)`` tensor per input;
3. takes the model from its :class:`~frameserve.engine.pool.ModelPool` (``setup`` on first use,
   within the memory budget; a model in use is never unloaded): the exact version the request
   holds (:attr:`InferenceRequest.entry`, pinned by the front door or the scheduler), else the
   registry's newest, so a model reloaded meanwhile never mixes into a request;
4. pads the frames to the model's ``size_multiple`` by mirroring, and cuts frames larger than
   ``max_size`` into overlapping tiles when the model is fully convolutional
   (:class:`~frameserve.engine.tiling.TileGrid`); each tile goes to the device, through the model
   under ``torch.inference_mode``, and is blended back into a frame on the CPU;
5. checks what came back against the declared outputs (:mod:`frameserve.engine.outputs`), crops the
   padding off, and converts it back to the request's colourspace.

**Running out of memory** (``torch.OutOfMemoryError``, ``MemoryError``, an allocator's "out of
memory" ``RuntimeError``): a batch is run again one request at a time; a fully convolutional
model is run again in tiles of half the size, down to
:func:`~frameserve.engine.tiling.min_tile_size`, with a WARNING each time. The tile size that worked
is remembered for that model while it stays loaded. Other models fail with :class:`ModelRunError`.

**Precision and memory order.** On CUDA, a model that declares ``half_precision`` runs in
float16 (see :class:`~frameserve.plugin.model.Model` for the rule model code follows): its
``torch.nn.Module`` attributes are converted with ``.half()`` after setup, frames are cast to
float16 on the device, ``predict`` runs under ``torch.autocast(float16)`` (so stray float32
tensors still work) and outputs are cast back to float32. A model that writes its own
``predict_batch`` gets every request there, a single one as a batch of one, so that a model
holding a convolution (``Conv2d`` or ``ConvTranspose2d`` among its module attributes) can be
given its ``(N, C, H, W)`` frames in channels-last memory order, on CUDA and on the CPU
(measured on the CPU: 2.9x faster for a 7-layer conv net at 1080p,
``benchmarks/memory_format.py``). ``(C, H, W)`` frames for ``predict`` stay contiguous: a
channels-last ``(C, H, W)`` view gains nothing (``image[None]`` loses the layout for the
convolution; measured). If the first prediction on channels-last frames raises, the runner
tries again with contiguous frames and, if that works, keeps giving that model contiguous
frames (a WARNING says so).

**Batches** (:meth:`Runner.run_batch`): requests with the same model, knob values, frame sizes
and colourspace run in one call to ``predict_batch`` (at most the model's
``max_batch_size``). ``predict_batch`` may return N per-request results, one ``(N, C, H, W)``
tensor for the first output, or a mapping of output name to ``(N, ...)`` tensors. A failure of
the call fails every request of the batch; a request whose own output is wrong gets its own
error.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence

import torch

from frameserve.catalogue.registry import ModelEntry, ModelRegistry
from frameserve.engine.colour import ColourManager, default_manager
from frameserve.engine.devices import (
    default_memory_budget,
    is_out_of_memory,
    release_memory,
    resolve_device,
)
from frameserve.engine.outputs import ModelOutputs, StitchedOutputs, split_batch, whole_outputs
from frameserve.engine.pool import LoadedModel, ModelPool, model_modules
from frameserve.engine.request import InferenceRequest, InferenceResult
from frameserve.engine.tiling import TileGrid, smaller_tile_size
from frameserve.errors import FrameError, FrameServeError, ModelRunError
from frameserve.plugin.knobs import KnobValues
from frameserve.plugin.model import Model, ModelSpec

__all__ = ["CHANNELS_LAST_ON_CPU", "Runner"]

log = logging.getLogger(__name__)

#: Whether convolutional models get channels-last frames on the CPU too (measured faster).
CHANNELS_LAST_ON_CPU = True

_CONVOLUTIONS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
_CONVOLUTION_NAMES = frozenset({"Conv2d", "ConvTranspose2d"})  # inside TorchScript modules

Outcome = InferenceResult | FrameServeError


class Runner:
    """Runs requests on the models of a registry, on one device.

    Args:
        registry: the models.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (CUDA when there is one).
        colour: the colour configuration conversions use (the default one unless given).
        memory_budget_bytes: what loaded models may hold before the least recently used are
            unloaded; ``None``: 80% of the GPU's memory on CUDA, half the RAM on the CPU.
        half_precision: run models that declare ``half_precision`` in float16; ``None``: on
            CUDA only.

    ::

        runner = Runner(ModelRegistry(), device="auto")
        result = runner.run(request)
        results = runner.run_batch([request_a, request_b])   # results or errors, in order

    Raises:
        ConfigError: an unknown device, or CUDA where there is none.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        device: str | torch.device = "cpu",
        colour: ColourManager | None = None,
        memory_budget_bytes: int | None = None,
        half_precision: bool | None = None,
    ) -> None:
        self.registry = registry
        self.device = resolve_device(device)
        self._colour = colour
        self.half_precision = (
            self.device.type == "cuda" if half_precision is None else half_precision
        )
        if memory_budget_bytes is None:
            memory_budget_bytes = default_memory_budget(self.device)
        self._pool = ModelPool(
            registry, self.device, budget_bytes=memory_budget_bytes, prepare=self._prepare
        )
        registry.add_listener(self._pool.retire_stale)  # drop replaced models once idle

    @property
    def memory_budget_bytes(self) -> int | None:
        """What loaded models may hold, in bytes (None: no limit)."""
        return self._pool.budget_bytes

    @property
    def colour(self) -> ColourManager:
        """The colour configuration conversions use (the default one, loaded on first use)."""
        if self._colour is None:
            self._colour = default_manager()
        return self._colour

    def run(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request`` with the model's ``predict``.

        Raises:
            FrameError: a frame too large for a model that cannot be tiled, or inputs of
                different sizes for a model that pads or tiles.
            ColourError: a colourspace the configuration cannot convert.
            ModelError: the model failed to set up, raised, ran out of memory or returned
                something other than it declares.
        """
        outcome = self._run_group([request], single=True)[0]
        if isinstance(outcome, FrameServeError):
            raise outcome
        return outcome

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[Outcome]:
        """Run ``requests`` in batches through ``predict_batch``; return results or errors.

        The scheduler groups requests with equal :attr:`InferenceRequest.batch_key`; any
        others are grouped here, and groups are cut at the model's ``max_batch_size``. A group
        of one runs with ``predict``, like :meth:`run`. The list answers ``requests`` in order.
        """
        outcomes: list[Outcome | None] = [None] * len(requests)
        for indices in self._batches(requests):
            group = [requests[index] for index in indices]
            try:
                results = self._run_group(group, single=len(group) == 1)
            except FrameServeError as exc:
                results = [exc] * len(group)
            for index, result in zip(indices, results, strict=True):
                outcomes[index] = result
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def loaded_models(self) -> list[str]:
        """Return the ids of the models whose setup has run, least recently used first."""
        return self._pool.loaded()

    def memory_in_use(self) -> int:
        """Return the bytes the loaded models hold (see :mod:`frameserve.engine.pool`)."""
        return self._pool.bytes_in_use()

    def unload(self, model_id: str, version: str | None = None) -> bool:
        """Unload ``model_id`` (every version, or ``version``) now where it is not running.

        Returns whether an instance was unloaded.
        """
        return self._pool.unload(model_id, version)

    # -- one group of compatible requests ------------------------------------------------------

    def _batches(self, requests: Sequence[InferenceRequest]) -> list[list[int]]:
        groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[request.batch_key].append(index)
        batches = []
        for indices in groups.values():
            size = self._max_batch_size(requests[indices[0]])
            batches += [indices[i : i + size] for i in range(0, len(indices), size)]
        return batches

    def _max_batch_size(self, request: InferenceRequest) -> int:
        try:
            spec = self._entry(request).spec
        except FrameServeError:
            return 1  # the group fails with the registry's error when it runs
        return spec.max_batch_size if spec.inputs else 1

    def _entry(self, request: InferenceRequest) -> ModelEntry:
        """The model version ``request`` runs on: the one it holds, else the newest."""
        return request.entry or self.registry.get(request.model_id)

    def _run_group(self, requests: list[InferenceRequest], *, single: bool) -> list[Outcome]:
        first = requests[0]
        entry = self._entry(first)
        spec = entry.spec
        size = _frame_size(spec, first)
        # Requests in one group send the same inputs (optional ones may be absent from all).
        names = [declared.name for declared in spec.inputs if declared.name in first.frames]
        inputs = {
            name: _stack(
                [
                    self._convert(r.frames[name], r.colourspace, spec.colourspace_in)
                    for r in requests
                ]
            )
            for name in names
        }
        with self._pool.use(entry) as loaded:
            items = self._execute(loaded, spec, inputs, first.knobs, size, single, len(requests))
        return [
            self._finish(spec, item, request) for item, request in zip(items, requests, strict=True)
        ]

    def _finish(
        self, spec: ModelSpec, item: ModelOutputs | FrameServeError, request: InferenceRequest
    ) -> Outcome:
        if isinstance(item, FrameServeError):
            return item
        first = spec.outputs[0].name
        if first not in item.frames:
            return ModelRunError(f"model {spec.id!r} returned no {first!r} output")
        try:
            frames = {
                name: self._convert(frame, spec.colourspace_out, request.colourspace)
                for name, frame in item.frames.items()
            }
        except FrameServeError as exc:
            return exc
        return InferenceResult(frames=frames, objects=item.objects)

    def _convert(self, frame: torch.Tensor, source: str, target: str) -> torch.Tensor:
        if source == target:
            return frame  # the common case needs no colour configuration at all
        return self.colour.convert(frame, source, target)

    # -- padding, tiles and running out of memory ----------------------------------------------

    def _execute(
        self,
        loaded: LoadedModel,
        spec: ModelSpec,
        inputs: dict[str, torch.Tensor],
        knobs: KnobValues,
        size: tuple[int, int] | None,
        single: bool,
        count: int,
    ) -> list[ModelOutputs | FrameServeError]:
        needs = spec.spatial
        tried: int | None = None  # the tile size this call fell back to (only ever smaller)
        while True:
            grid = None
            limit = _smallest(needs.max_size, loaded.tile_limit, tried)
            if size is not None:
                grid = TileGrid(
                    *size,
                    multiple=needs.size_multiple,
                    overlap=needs.overlap,
                    max_tile=limit if needs.fully_convolutional else None,
                )
                if not grid.is_whole:
                    log.debug("model %s: %s", spec.id, grid)
            try:
                return self._run_grid(loaded, spec, inputs, knobs, grid, single, count)
            except Exception as exc:
                if not isinstance(exc, _OutOfMemory) and not is_out_of_memory(exc):
                    raise
                reason = str(exc)  # keep no reference to the frames of the failed attempt
            release_memory(self.device)
            where = f"{count} frame(s)" if size is None else f"{count} frame(s) of {_wxh(size)}"
            if count > 1:
                log.warning(
                    "model %s ran out of memory on %s with a batch of %s; running them one by "
                    "one (%s)",
                    spec.id,
                    self.device,
                    where,
                    reason,
                )
                return [
                    item
                    for index in range(count)
                    for item in self._execute(
                        loaded,
                        spec,
                        {name: x[index : index + 1] for name, x in inputs.items()},
                        knobs,
                        size,
                        single,
                        1,
                    )
                ]
            tile = None
            if grid is not None:  # the size limit that failed
                whole = grid.is_whole or limit is None
                tile = max(grid.tile_height, grid.tile_width) if whole else limit
            if not needs.fully_convolutional or tile is None:
                why = (
                    "it does not declare itself fully convolutional"
                    if not needs.fully_convolutional
                    else "its inputs differ in size"
                )
                raise ModelRunError(
                    f"model {spec.id!r} ran out of memory on {self.device} with {where} and "
                    f"cannot be tiled ({why}): {reason}"
                )
            smaller = smaller_tile_size(tile, multiple=needs.size_multiple, overlap=needs.overlap)
            if smaller is None:
                raise ModelRunError(
                    f"model {spec.id!r} ran out of memory on {self.device} even in tiles of "
                    f"at most {tile}x{tile} pixels: {reason}"
                )
            log.warning(
                "model %s ran out of memory on %s with %s in pieces of up to %dx%d pixels; "
                "trying tiles of at most %dx%d (%s)",
                spec.id,
                self.device,
                where,
                tile,
                tile,
                smaller,
                smaller,
                reason,
            )
            tried = smaller
            loaded.tile_limit = _smallest(loaded.tile_limit, smaller)

    def _run_grid(
        self,
        loaded: LoadedModel,
        spec: ModelSpec,
        inputs: dict[str, torch.Tensor],
        knobs: KnobValues,
        grid: TileGrid | None,
        single: bool,
        count: int,
    ) -> list[ModelOutputs | FrameServeError]:
        if grid is None or grid.is_whole:
            frames = inputs if grid is None else {n: grid.pad(x) for n, x in inputs.items()}
            raws = self._predict(loaded, spec, frames, knobs, single, count)
            first = next(iter(frames.values()), None)
            size = None if first is None else (int(first.shape[-2]), int(first.shape[-1]))
            items: list[ModelOutputs | FrameServeError] = []
            for raw in raws:
                try:
                    items.append(whole_outputs(spec, raw, grid, size))
                except ModelRunError as exc:
                    items.append(exc)
            return items
        padded = {name: grid.pad(x) for name, x in inputs.items()}
        stitched: list[StitchedOutputs | FrameServeError] = [
            StitchedOutputs() for _ in range(count)
        ]
        for tile in grid.tiles:
            window = (..., *tile.window)
            raws = self._predict(
                loaded, spec, {n: x[window] for n, x in padded.items()}, knobs, single, count
            )
            for index, raw in enumerate(raws):
                target = stitched[index]
                if isinstance(target, StitchedOutputs):
                    try:
                        target.add(spec, grid, tile, raw)
                    except ModelRunError as exc:
                        stitched[index] = exc
            if all(isinstance(s, FrameServeError) for s in stitched):
                break
        return [s if isinstance(s, FrameServeError) else s.outputs() for s in stitched]

    # -- the call into model code --------------------------------------------------------------

    def _prepare(self, loaded: LoadedModel) -> None:
        """Convert a freshly set-up model for this device (the pool calls it after setup)."""
        spec = loaded.spec
        modules = model_modules(loaded.model)
        loaded.half = self.half_precision and spec.half_precision
        if loaded.half:
            for module in modules:
                module.half()
        convolutional = any(
            isinstance(m, _CONVOLUTIONS) or getattr(m, "original_name", None) in _CONVOLUTION_NAMES
            for module in modules
            for m in module.modules()
        )
        loaded.batched = type(loaded.model).predict_batch is not Model.predict_batch
        on_cpu = self.device.type == "cpu"
        channels_last_here = CHANNELS_LAST_ON_CPU or not on_cpu
        loaded.channels_last = convolutional and loaded.batched and channels_last_here

    def _predict(
        self,
        loaded: LoadedModel,
        spec: ModelSpec,
        frames: dict[str, torch.Tensor],
        knobs: KnobValues,
        single: bool,
        count: int,
    ) -> list[object]:
        """Run the model on ``frames`` (``(N, C, H, W)``, CPU); return N raw results."""
        try:
            if not loaded.channels_last or loaded.channels_last_proven:
                return self._call(loaded, spec, frames, knobs, single, count, loaded.channels_last)
            try:
                raws = self._call(loaded, spec, frames, knobs, single, count, True)
            except ModelRunError as first:
                raws = self._call(loaded, spec, frames, knobs, single, count, False)
                loaded.channels_last = False
                log.warning(
                    "model %s failed on channels-last frames (%s); it gets contiguous frames "
                    "from now on",
                    spec.id,
                    first,
                )
                return raws
            loaded.channels_last_proven = True
            return raws
        except ModelRunError as exc:
            log.error("model %s failed while predicting", spec.id, exc_info=exc.__cause__ or exc)
            raise

    def _call(
        self,
        loaded: LoadedModel,
        spec: ModelSpec,
        frames: dict[str, torch.Tensor],
        knobs: KnobValues,
        single: bool,
        count: int,
        channels_last: bool,
    ) -> list[object]:
        try:
            on_device = {
                n: self._to_device(x, loaded.half, channels_last) for n, x in frames.items()
            }
            autocast = (
                torch.autocast(self.device.type, dtype=torch.float16)
                if loaded.half
                else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                if single and not loaded.batched:
                    return [loaded.model.predict({n: x[0] for n, x in on_device.items()}, knobs)]
                raw = loaded.model.predict_batch(on_device, knobs)
        except FrameServeError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise _OutOfMemory(f"{type(exc).__name__}: {exc}") from None
            raise ModelRunError(f"model {spec.id!r} failed: {type(exc).__name__}: {exc}") from exc
        return split_batch(spec, raw, count)

    def _to_device(self, frames: torch.Tensor, half: bool, channels_last: bool) -> torch.Tensor:
        moved = frames.to(self.device, torch.float16 if half else torch.float32)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return moved.contiguous(memory_format=layout)


class _OutOfMemory(Exception):
    """The model, or the runner around it, ran out of memory (internal: it is retried)."""


def _frame_size(spec: ModelSpec, request: InferenceRequest) -> tuple[int, int] | None:
    """Return the (height, width) the request's inputs share, or None; check ``max_size``."""
    needs = spec.spatial
    sizes = {name: (int(t.shape[-2]), int(t.shape[-1])) for name, t in request.frames.items()}
    if not sizes:
        return None
    if len(set(sizes.values())) > 1:
        if needs.size_multiple == 1 and needs.max_size is None:
            return None
        listed = ", ".join(f"{name!r} {_wxh(size)}" for name, size in sizes.items())
        raise FrameError(
            f"the inputs of model {spec.id!r} must all have one size, for it to be padded or "
            f"tiled; got {listed}"
        )
    height, width = next(iter(sizes.values()))
    if needs.max_size is not None and not needs.fully_convolutional:
        multiple = needs.size_multiple
        padded = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
        if max(padded) > needs.max_size:
            extra = "" if padded == (height, width) else f", {_wxh(padded)} once padded"
            raise FrameError(
                f"model {spec.id!r} takes frames of at most {needs.max_size} pixels wide and "
                f"high (max_size) and cannot be tiled; this one is {_wxh((height, width))}"
                f"{extra}"
            )
    return height, width


def _stack(frames: list[torch.Tensor]) -> torch.Tensor:
    """Return ``frames`` (``(C, H, W)`` each) as one ``(N, C, H, W)`` tensor; a view for one."""
    return frames[0][None] if len(frames) == 1 else torch.stack(frames)


def _smallest(*limits: int | None) -> int | None:
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"
