"""A TFLite network rebuilt in plain PyTorch from its layer graph (BlazePose, BodyPix).

``scripts/convert_tflite.py`` reads a ``.tflite`` file with the ``tflite`` package and writes
two files: a state dict (``layers.op<N>.weight`` / ``.bias``, PyTorch's layout) and a layer
graph (``<name>.graph.json``: each operator with its options and which tensors it reads and
writes). :class:`TFLiteGraph` builds one ``nn.Conv2d`` per convolution from the graph, loads
the state dict with ``strict=True`` (:mod:`frameserve.networks.state_dicts`) and runs the
operators in order with ``torch.nn.functional``; no TFLite runtime is involved::

    net = TFLiteGraph.from_files(graph_path, weights_path, "BlazePose detector", device)
    outputs = net(image)            # image: float32 (N, C, H, W), the network's own range

What TFLite does differently, and how it is matched here:

- **Layout**: activations are NHWC in TFLite and NCHW here. Four-dimensional tensors are NCHW
  throughout; ``RESHAPE`` permutes to NHWC first (so flattened vectors keep TFLite's order)
  and ``CONCATENATION`` maps its axis. Four-dimensional outputs are returned NCHW.
- **SAME padding** is asymmetric in TFLite: the extra row or column goes at the bottom or
  right. Convolutions and pools pad explicitly (``F.pad``) by TFLite's rule for the actual
  input size, so the network runs at any input size.
- **Depthwise convolutions** are grouped convolutions, one group per input channel.
- **DEPTH_TO_SPACE** is TensorFlow's depth-column-row order, not ``pixel_shuffle``'s.
- **Quantised networks** (BodyPix's int8 graph) run in float32 with the dequantised weights;
  with ``fake_quant=True`` (the default for them) every activation is rounded to its int8 or
  uint8 grid (the scale and zero point the graph records), which reproduces the interpreter's
  results to within a grid step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.errors import ModelSetupError
from frameserve.networks.state_dicts import load_strict_file

__all__ = ["TFLiteGraph", "read_graph"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "none": None,
    "relu": F.relu,
    "relu6": F.relu6,
    "relu_n1_to_1": lambda x: x.clamp(-1.0, 1.0),
    "tanh": torch.tanh,
}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def read_graph(path: Path, what: str) -> dict[str, Any]:
    """Return the layer graph written by ``scripts/convert_tflite.py``.

    Raises:
        ModelSetupError: the file is missing or not such a graph.
    """
    try:
        graph = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSetupError(f"cannot read {what} layer graph {str(path)!r}: {exc}") from exc
    if not isinstance(graph, dict) or not {"ops", "input", "outputs"} <= graph.keys():
        raise ModelSetupError(f"{what} layer graph {str(path)!r} lacks ops, input or outputs")
    return graph


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding of one dimension: ``(before, after)``, the extra one after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class TFLiteGraph(nn.Module):
    """A TFLite graph of convolutions, adds, pads, resizes and reshapes, run in PyTorch.

    Args:
        graph: the layer graph (:func:`read_graph`).
        fake_quant: round activations to their quantisation grid where the graph records one
            (``None``: whenever it does).
    """

    def __init__(self, graph: dict[str, Any], *, fake_quant: bool | None = None) -> None:
        super().__init__()
        self.graph_ops: list[dict[str, Any]] = list(graph["ops"])
        self.input_tensor = int(graph["input"])
        self.outputs = {str(k): int(v) for k, v in graph["outputs"].items()}
        quant = graph.get("quantisation") or {}
        self.fake_quant = bool(quant) if fake_quant is None else fake_quant
        self.quant = {
            int(k): (float(s), int(z), int(lo), int(hi)) for k, (s, z, lo, hi) in quant.items()
        }
        self.layers = nn.ModuleDict()
        known = {self.input_tensor}
        for op in self.graph_ops:
            missing = [t for t in op["in"] if t not in known]
            if missing:
                raise ModelSetupError(f"layer {op['name']} reads tensors {missing} nobody writes")
            known.add(op["out"])
            if op["op"] in ("conv", "depthwise"):
                out_channels, in_channels, kh, kw = op["shape"]
                groups = out_channels if op["op"] == "depthwise" else 1
                if op["op"] == "depthwise":
                    in_channels = out_channels
                self.layers[op["name"]] = nn.Conv2d(
                    in_channels,
                    out_channels,
                    (kh, kw),
                    stride=tuple(op["stride"]),
                    dilation=tuple(op["dilation"]),
                    groups=groups,
                    bias=bool(op["bias"]),
                )
        unknown = [name for name, t in self.outputs.items() if t not in known]
        if unknown:
            raise ModelSetupError(f"outputs {unknown} are never written")
        # Channels-last kernels and activations: 2-3x faster for these depthwise-separable
        # networks on the CPU (measured), and what GPUs prefer too.
        self.memory_format = torch.channels_last
        for conv in self.layers.values():
            assert isinstance(conv, nn.Conv2d)
            conv.weight.data = conv.weight.data.contiguous(memory_format=self.memory_format)

    @classmethod
    def from_files(
        cls,
        graph_path: Path,
        weights_path: Path,
        what: str,
        device: torch.device | str = "cpu",
        *,
        fake_quant: bool | None = None,
    ) -> TFLiteGraph:
        """Build the network from its layer graph and load its weights strictly."""
        net = cls(read_graph(graph_path, what), fake_quant=fake_quant)
        return load_strict_file(net, weights_path, what, device)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the graph on float32 ``(N, C, H, W)`` input; return its outputs by name.

        Four-dimensional outputs are ``(N, C, H, W)``; others keep TFLite's shape with the
        batch first.
        """
        image = image.contiguous(memory_format=self.memory_format)
        values: dict[int, torch.Tensor] = {
            self.input_tensor: self._quantise(self.input_tensor, image)
        }
        for op in self.graph_ops:
            out = self._run(op, [values[t] for t in op["in"]])
            values[op["out"]] = self._quantise(op["out"], out)
        return {name: values[t] for name, t in self.outputs.items()}

    def _quantise(self, tensor: int, value: torch.Tensor) -> torch.Tensor:
        if not self.fake_quant or tensor not in self.quant:
            return value
        scale, zero, low, high = self.quant[tensor]
        return (torch.round(value / scale) + zero).clamp(low, high).sub(zero).mul(scale)

    def _run(self, op: dict[str, Any], args: list[torch.Tensor]) -> torch.Tensor:
        kind = op["op"]
        x = args[0]
        if kind in ("conv", "depthwise"):
            conv = self.layers[op["name"]]
            assert isinstance(conv, nn.Conv2d)
            if op["padding"] == "same":
                x = _pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
            return _activate(conv(x), op["act"])
        if kind == "add":
            return _activate(args[0] + args[1], op["act"])
        if kind == "concat":
            axis = op["axis"] % x.dim()
            if x.dim() == 4:
                axis = _NHWC_TO_NCHW_AXIS[axis]
            return _activate(torch.cat(args, dim=axis), op["act"])
        if kind == "pad":
            (_, _), (top, bottom), (left, right), (front, back) = op["pads"]
            return F.pad(x, (left, right, top, bottom, front, back))
        if kind == "reshape":
            shape = op["shape"]
            if x.dim() == 4:
                x = x.permute(0, 2, 3, 1)
            x = x.reshape([x.shape[0], -1, *shape[2:]] if len(shape) > 1 else [-1])
            return x.permute(0, 3, 1, 2) if x.dim() == 4 else x
        if kind == "depth_to_space":
            block = int(op["block"])
            n, c, h, w = x.shape
            x = x.reshape(n, block, block, c // block**2, h, w)
            return x.permute(0, 3, 4, 1, 5, 2).reshape(n, c // block**2, h * block, w * block)
        if kind == "resize_bilinear":
            return _resize_bilinear(x, op)
        if kind == "max_pool":
            kernel, stride = tuple(op["kernel"]), tuple(op["stride"])
            if op["padding"] == "same":
                x = _pad_same(x, kernel, stride, (1, 1), value=-math.inf)
            return _activate(F.max_pool2d(x, kernel, stride), op["act"])
        if kind == "logistic":
            return torch.sigmoid(x)
        if kind == "quantize":
            return x  # the output's grid is applied by _quantise
        raise ModelSetupError(f"layer {op['name']}: operator {kind!r} is not supported")


def _activate(x: torch.Tensor, name: str) -> torch.Tensor:
    function = _ACTIVATIONS[name]
    return x if function is None else function(x)


def _pad_same(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    value: float = 0.0,
) -> torch.Tensor:
    top, bottom = same_padding(x.shape[2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[3], kernel[1], stride[1], dilation[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _resize_bilinear(x: torch.Tensor, op: dict[str, Any]) -> torch.Tensor:
    """TFLite's RESIZE_BILINEAR by a whole-number factor, with its corner conventions."""
    size = (x.shape[2] * op["scale"][0], x.shape[3] * op["scale"][1])
    if op["align_corners"]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    if op["half_pixel_centers"]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    # TensorFlow's legacy rule: source = destination * in / out, no half-pixel shift.
    for dim, factor in ((2, op["scale"][0]), (3, op["scale"][1])):
        length = x.shape[dim]
        source = torch.arange(length * factor, device=x.device, dtype=x.dtype) / factor
        low = source.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        weight_shape = [1, 1, 1, 1]
        weight_shape[dim] = -1
        weight = (source - low.to(x.dtype)).reshape(weight_shape)
        x = torch.lerp(x.index_select(dim, low), x.index_select(dim, high), weight)
    return x
