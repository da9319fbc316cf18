"""Running a group's stacked frames on one loaded model: tiles, memory, precision, the call.

The runner (:mod:`frameserve.engine.runner`) groups requests, converts their frames into the
model's colourspace and stacks them; :class:`Executor` takes it from there, on one device:

1. it pads the ``(N, C, H, W)`` frames to the model's ``size_multiple`` by mirroring, and cuts
   frames larger than ``max_size`` into overlapping tiles when the model is fully
   convolutional (:class:`~frameserve.engine.tiling.TileGrid`); each tile goes to the device,
   through the model under ``torch.inference_mode``, and is blended back into a frame on the
   CPU;
2. it checks what came back against the declared outputs (:mod:`frameserve.engine.outputs`)
   and crops the padding off, giving each request its outputs or its own error.

**Running out of memory** (``torch.OutOfMemoryError``, ``MemoryError``, an allocator's "out of
memory" ``RuntimeError``): a batch is run again one request at a time; a fully convolutional
model is run again in tiles of half the size, down to
:func:`~frameserve.engine.tiling.min_tile_size`, with a WARNING each time. The tile size that
worked is remembered for that model while it stays loaded. Other models fail with
:class:`~frameserve.errors.ModelRunError`.

**Precision and memory order.** On CUDA, a model that declares ``half_precision`` runs in
float16 (see :class:`~frameserve.plugin.model.Model` for the rule model code follows): its
``torch.nn.Module`` attributes are converted with ``.half()`` after setup
(:meth:`Executor.prepare`), frames are cast to float16 on the device, ``predict`` runs under
``torch.autocast(float16)`` (so stray float32 tensors still work) and outputs are cast back to
float32. A model that writes its own ``predict_batch`` gets every request there, a single one
as a batch of one, so that a model holding a convolution (``Conv2d`` or ``ConvTranspose2d``
among its module attributes) can be given its ``(N, C, H, W)`` frames in channels-last memory
order, on CUDA and on the CPU (measured on the CPU: 2.9x faster for a 7-layer conv net at
1080p, ``benchmarks/memory_format.py``). ``(C, H, W)`` frames for ``predict`` stay contiguous:
a channels-last ``(C, H, W)`` view gains nothing (``image[None]`` loses the layout for the
convolution; measured). If the first prediction on channels-last frames raises, the executor
tries again with contiguous frames and, if that works, keeps giving that model contiguous
frames (a WARNING says so).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from frameserve.engine.devices import is_out_of_memory, release_memory
from frameserve.engine.outputs import ModelOutputs, StitchedOutputs, split_batch, whole_outputs
from frameserve.engine.pool import LoadedModel, model_modules
from frameserve.engine.tiling import TileGrid, smaller_tile_size
from frameserve.errors import FrameServeError, ModelRunError
from frameserve.plugin.knobs import KnobValues
from frameserve.plugin.model import Model, ModelSpec

__all__ = ["CHANNELS_LAST_ON_CPU", "Executor"]

log = logging.getLogger(__name__)

#: Whether convolutional models get channels-last frames on the CPU too (measured faster).
CHANNELS_LAST_ON_CPU = True

_CONVOLUTIONS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
_CONVOLUTION_NAMES = frozenset({"Conv2d", "ConvTranspose2d"})  # inside TorchScript modules


class Executor:
    """Runs stacked frames on loaded models on one device (see the module docstring).

    Args:
        device: where the models run.
        half_precision: run models that declare ``half_precision`` in float16.

    ::

        executor = Executor(torch.device("cuda"), half_precision=True)
        pool = ModelPool(registry, device, budget_bytes=budget, prepare=executor.prepare)
        with pool.use(entry) as loaded:
            outputs = executor.run(loaded, {"image": frames}, knobs, (1080, 1920),
                                   single=False, count=len(frames))
    """

    def __init__(self, device: torch.device, *, half_precision: bool) -> None:
        self.device = device
        self.half_precision = half_precision

    def prepare(self, loaded: LoadedModel) -> None:
        """Convert a freshly set-up model for this device (the pool calls it after setup).

        Sets :attr:`LoadedModel.half` (and converts its modules), :attr:`LoadedModel.batched`
        and :attr:`LoadedModel.channels_last` (see the module docstring).
        """
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

    def run(
        self,
        loaded: LoadedModel,
        inputs: dict[str, torch.Tensor],
        knobs: KnobValues,
        size: tuple[int, int] | None,
        *,
        single: bool,
        count: int,
    ) -> list[ModelOutputs | FrameServeError]:
        """Run ``count`` requests' frames on ``loaded``; return each one's outputs or error.

        Args:
            loaded: the model, taken from the pool for the length of the call.
            inputs: ``(count, C, H, W)`` CPU frames per input, in the model's colourspace.
            knobs: the knob values the requests share.
            size: the ``(height, width)`` every input shares, or ``None`` when they differ
                (then frames are neither padded nor tiled).
            single: one request that runs with ``predict`` unless the model batches itself.
            count: how many requests the frames hold.

        Raises:
            ModelRunError: the model raised, ran out of memory beyond every fallback, or
                returned something that is not per-request outputs (a request whose own
                output is wrong gets its own error in the list instead).
        """
        spec = loaded.spec
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
                    for item in self.run(
                        loaded,
                        {name: x[index : index + 1] for name, x in inputs.items()},
                        knobs,
                        size,
                        single=single,
                        count=1,
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


def _smallest(*limits: int | None) -> int | None:
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"
