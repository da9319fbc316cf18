"""What a model returned: split per request, checked against its declaration, stitched.

``predict`` may return a tensor (the first output), a mapping of output name to tensor or a
:class:`~frameserve.plugin.model.Prediction`; ``predict_batch`` a sequence of N of those, one
``(N, C, H, W)`` tensor or a mapping of ``(N, ...)`` tensors. The runner turns each request's
share into :class:`ModelOutputs`: float32 ``(C, H, W)`` CPU frames of the declared channels, in
declared order, and checked result objects. A model's mistake is a
:class:`~frameserve.errors.ModelRunError` naming the model and what was expected; never a
:class:`~frameserve.errors.FrameError`, which is the client's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from frameserve.engine.tiling import Tile, TileGrid
from frameserve.errors import FrameError, ModelRunError
from frameserve.plugin.frames import check_frame
from frameserve.plugin.model import ModelSpec, Prediction
from frameserve.plugin.results import ResultObject

__all__ = [
    "ModelOutputs",
    "StitchedOutputs",
    "checked_output",
    "normalise_prediction",
    "split_batch",
    "whole_outputs",
]


@dataclass(frozen=True)
class ModelOutputs:
    """One request's checked output frames (CPU, float32) and result objects."""

    frames: dict[str, torch.Tensor]
    objects: tuple[ResultObject, ...]


class StitchedOutputs:
    """One request's outputs being blended together tile by tile."""

    def __init__(self) -> None:
        self.frames: dict[str, torch.Tensor] = {}
        self.objects: list[ResultObject] = []

    def add(self, spec: ModelSpec, grid: TileGrid, tile: Tile, raw: object) -> None:
        """Check what ``predict`` returned for ``tile`` and blend it in; objects are kept once.

        Raises:
            ModelRunError: a wrong output, or one whose size is not the tile's.
        """
        frames, objects = normalise_prediction(spec, raw)
        scale = spec.output_scale
        for name, value in frames.items():
            output = checked_output(spec, name, value, contiguous=False)
            channels, height, width = output.shape
            if (height, width) != (tile.height * scale, tile.width * scale):
                times = "" if scale == 1 else f" times its output_scale {scale}"
                raise ModelRunError(
                    f"output {name!r} of model {spec.id!r} is {width}x{height} for a "
                    f"{tile.width}x{tile.height} tile; tiling needs outputs of the size of "
                    f"their inputs{times}"
                )
            canvas = self.frames.get(name)
            if canvas is None:
                canvas = self.frames[name] = torch.zeros(
                    channels, grid.height * scale, grid.width * scale
                )
            grid.blend_into(canvas, tile, output, scale)
        self.objects += [obj for obj in objects if obj not in self.objects]

    def outputs(self) -> ModelOutputs:
        """Return the stitched frames and the objects gathered from every tile."""
        return ModelOutputs(frames=self.frames, objects=tuple(self.objects))


def split_batch(spec: ModelSpec, raw: object, count: int) -> list[object]:
    """Split what ``predict_batch`` returned into ``count`` per-request results."""
    forms = (
        f"a sequence of {count} results, an (N, C, H, W) tensor or a mapping of output name to "
        "(N, ...) tensors"
    )
    if isinstance(raw, torch.Tensor):
        if raw.dim() != 4 or raw.shape[0] != count:
            raise ModelRunError(
                f"model {spec.id!r}: predict_batch returned a tensor of shape "
                f"{tuple(raw.shape)} for a batch of {count}; expected ({count}, C, H, W)"
            )
        return list(raw.unbind(0))
    if isinstance(raw, Mapping) and not isinstance(raw, Prediction):
        for name, value in raw.items():
            if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[0] != count:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ModelRunError(
                    f"model {spec.id!r}: predict_batch returned {name!r} as {shape} for a batch "
                    f"of {count}; expected a tensor of shape ({count}, ...)"
                )
        return [{name: value[index] for name, value in raw.items()} for index in range(count)]
    if isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        if len(raw) != count:
            raise ModelRunError(
                f"model {spec.id!r}: predict_batch returned {len(raw)} result(s) for a batch of "
                f"{count}"
            )
        return list(raw)
    raise ModelRunError(
        f"model {spec.id!r}: predict_batch returned {type(raw).__name__}; expected {forms}"
    )


def normalise_prediction(
    spec: ModelSpec, raw: object
) -> tuple[dict[str, object], tuple[ResultObject, ...]]:
    """Return the output frames (declared order) and objects of what ``predict`` returned."""
    objects: tuple[object, ...] = ()
    if isinstance(raw, Prediction):
        frames_out: Mapping[str, object] = raw.frames
        objects = tuple(raw.objects)
    elif isinstance(raw, torch.Tensor):
        frames_out = {spec.outputs[0].name: raw}
    elif isinstance(raw, Mapping):
        frames_out = raw
    else:
        raise ModelRunError(
            f"model {spec.id!r} returned {type(raw).__name__}; expected a tensor, a mapping of "
            "output name to tensor, or a Prediction"
        )
    declared = [output.name for output in spec.outputs]
    unknown = [name for name in frames_out if name not in declared]
    if unknown:
        raise ModelRunError(
            f"model {spec.id!r} returned an undeclared output {unknown[0]!r}; "
            f"declared: {', '.join(declared)}"
        )
    checked: list[ResultObject] = []
    for obj in objects:
        if not isinstance(obj, ResultObject):
            raise ModelRunError(f"model {spec.id!r} returned an object that is not a ResultObject")
        checked.append(obj)
    return {name: frames_out[name] for name in declared if name in frames_out}, tuple(checked)


def checked_output(spec: ModelSpec, name: str, value: object, *, contiguous: bool) -> torch.Tensor:
    """Return output ``name`` as a checked float32 ``(C, H, W)`` CPU tensor."""
    what = f"output {name!r} of model {spec.id!r}"
    tensor = value
    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
        tensor = tensor.to("cpu", torch.float32)
        if contiguous:  # the one internal form (a copy only after channels-last or a view)
            tensor = tensor.contiguous()
    try:
        tensor = check_frame(tensor, what=what)
    except FrameError as exc:  # the model's fault, not the client's
        raise ModelRunError(str(exc)) from None
    declared = next(output for output in spec.outputs if output.name == name)
    if tensor.shape[0] != declared.channels:
        raise ModelRunError(
            f"{what} has {tensor.shape[0]} channel(s); the model declares {declared.channels}"
        )
    return tensor


def whole_outputs(
    spec: ModelSpec, raw: object, grid: TileGrid | None, size: tuple[int, int] | None = None
) -> ModelOutputs:
    """Check the outputs of a frame run in one piece; crop off the padding.

    ``size`` is the (padded) input's height and width: a model that declares an
    ``output_scale`` above 1 must return outputs exactly that many times as large.
    """
    frames, objects = normalise_prediction(spec, raw)
    checked = {}
    scale = spec.output_scale
    for name, value in frames.items():
        output = checked_output(spec, name, value, contiguous=True)
        if scale > 1 and size is not None:
            expected = (size[0] * scale, size[1] * scale)
            if tuple(output.shape[-2:]) != expected:
                raise ModelRunError(
                    f"output {name!r} of model {spec.id!r} is {_wxh(output.shape[-2:])} for an "
                    f"input of {_wxh(size)}; it declares output_scale {scale}, so "
                    f"{_wxh(expected)} was expected"
                )
        if grid is not None and grid.is_padded:
            height, width = output.shape[-2:]
            found = grid.output_scale(height, width)
            if found is None:
                padded = (grid.padded_height, grid.padded_width)
                raise ModelRunError(
                    f"output {name!r} of model {spec.id!r} is {_wxh((height, width))} for an "
                    f"input padded to {_wxh(padded)}; to crop the padding off, outputs must be "
                    "the padded size or a whole multiple of it"
                )
            output = grid.crop(output, found).contiguous()
        checked[name] = output
    return ModelOutputs(frames=checked, objects=objects)


def _wxh(size: Sequence[int]) -> str:
    return f"{size[1]}x{size[0]}"
