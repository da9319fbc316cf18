"""Running requests on models: where (device), in which groups, in which colourspace.

The runner decides *where* and *how* a request runs; the scheduler decides *when*. For each
request, or each batch of requests the scheduler grouped, it:

1. checks the frame size against the model's :class:`~frameserve.plugin.model.SpatialNeeds` (a
   model that cannot be tiled gets no frame above its ``max_size``: :class:`FrameError`);
2. converts the frames from the request's colourspace to the model's (on the CPU) and stacks
   them into one ``(N, C, H, W)`` tensor per input;
3. takes the model from its :class:`~frameserve.engine.pool.ModelPool` (``setup`` on first use,
   within the memory budget; a model in use is never unloaded): the exact version the request
   holds (:attr:`InferenceRequest.entry`, pinned by the front door or the scheduler), else the
   registry's newest, so a model reloaded meanwhile never mixes into a request;
4. hands the stacked frames to its :class:`~frameserve.engine.execution.Executor`, which pads
   and tiles them, runs the model on the device (half precision, channels-last memory order)
   and falls back to smaller batches and tiles when memory runs out
   (:mod:`frameserve.engine.execution`);
5. converts each request's checked outputs back to the request's colourspace — except an
   output whose RGB is an input's RGB as the model got it, which gets the request's own pixels
   back; a frame converted before (the same plate, other knobs) is not converted again
   (:mod:`frameserve.engine.conversions`).

**Batches** (:meth:`Runner.run_batch`): requests with the same model, knob values, frame sizes
and colourspace run in one call to ``predict_batch`` (at most the model's
``max_batch_size``). ``predict_batch`` may return N per-request results, one ``(N, C, H, W)``
tensor for the first output, or a mapping of output name to ``(N, ...)`` tensors. A failure of
the call fails every request of the batch; a request whose own output is wrong gets its own
error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from frameserve.catalogue.registry import ModelEntry, ModelRegistry
from frameserve.engine.colour import ColourManager, default_manager
from frameserve.engine.conversions import ConvertedFrames, passed_through
from frameserve.engine.devices import default_memory_budget, resolve_device
from frameserve.engine.execution import CHANNELS_LAST_ON_CPU, Executor
from frameserve.engine.outputs import ModelOutputs
from frameserve.engine.pool import ModelPool
from frameserve.engine.request import InferenceRequest, InferenceResult
from frameserve.errors import FrameError, FrameServeError, ModelRunError
from frameserve.plugin.model import ModelSpec

__all__ = ["CHANNELS_LAST_ON_CPU", "Runner"]

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
        if half_precision is None:
            half_precision = self.device.type == "cuda"
        self._executor = Executor(self.device, half_precision=half_precision)
        if memory_budget_bytes is None:
            memory_budget_bytes = default_memory_budget(self.device)
        self._pool = ModelPool(
            registry, self.device, budget_bytes=memory_budget_bytes, prepare=self._executor.prepare
        )
        registry.add_listener(self._pool.retire_stale)  # drop replaced models once idle
        #: Input conversions kept by frame content (see :mod:`frameserve.engine.conversions`).
        self.conversions = ConvertedFrames()

    @property
    def half_precision(self) -> bool:
        """Whether models that declare ``half_precision`` run in float16."""
        return self._executor.half_precision

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

    def model_bytes(self, entry: ModelEntry) -> int | None:
        """Return the measured size of ``entry``'s set-up model; ``None``: it is not set up."""
        return self._pool.size_of(entry.key)

    def set_up(self, entry: ModelEntry) -> int:
        """Set ``entry``'s model up now, unless it is loaded; return its size in bytes.

        Raises:
            ModelSetupError: its setup raised.
        """
        with self._pool.use(entry) as loaded:
            return loaded.size_bytes

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
        # each request's inputs as the model gets them (the same tensors when no conversion)
        given = [
            {name: self._convert_input(r.frames[name], r.colourspace, spec) for name in names}
            for r in requests
        ]
        inputs = {name: _stack([frames[name] for frames in given]) for name in names}
        with self._pool.use(entry) as loaded:
            items = self._executor.run(
                loaded, inputs, first.knobs, size, single=single, count=len(requests)
            )
        return [
            self._finish(spec, item, request, frames)
            for item, request, frames in zip(items, requests, given, strict=True)
        ]

    def _convert_input(
        self, frame: torch.Tensor, colourspace: str, spec: ModelSpec
    ) -> torch.Tensor:
        if colourspace == spec.colourspace_in:
            return frame
        return self.conversions.get(frame, colourspace, spec.colourspace_in, self.colour.convert)

    def _finish(
        self,
        spec: ModelSpec,
        item: ModelOutputs | FrameServeError,
        request: InferenceRequest,
        given: dict[str, torch.Tensor],
    ) -> Outcome:
        if isinstance(item, FrameServeError):
            return item
        first = spec.outputs[0].name
        if first not in item.frames:
            return ModelRunError(f"model {spec.id!r} returned no {first!r} output")
        try:
            frames = {
                name: self._output(frame, spec, request, given)
                for name, frame in item.frames.items()
            }
        except FrameServeError as exc:
            return exc
        return InferenceResult(frames=frames, objects=item.objects)

    def _output(
        self,
        frame: torch.Tensor,
        spec: ModelSpec,
        request: InferenceRequest,
        given: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """``frame`` in the request's colourspace: the request's own RGB where the model
        passed an input's RGB through unchanged, else converted."""
        if spec.colourspace_out == request.colourspace:
            return frame
        for name, model_input in given.items():
            original = request.frames[name]
            if model_input is not original and passed_through(frame, model_input):
                restored = frame.clone()
                restored[:3] = original[:3].to(frame.device)
                return restored
        return self._convert(frame, spec.colourspace_out, request.colourspace)

    def _convert(self, frame: torch.Tensor, source: str, target: str) -> torch.Tensor:
        if source == target:
            return frame  # the common case needs no colour configuration at all
        return self.colour.convert(frame, source, target)


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


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"
