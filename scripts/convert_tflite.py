"""Convert the BlazePose and BodyPix TFLite files into PyTorch state dicts and layer graphs.

Usage (from the repository root)::

    .venv/bin/python scripts/convert_tflite.py [--source /work/shared/weights] [--heavy]

Reads each ``.tflite`` flatbuffer with the PyPI ``tflite`` package (no TensorFlow, no LiteRT)
and writes, into ``src/frameserve/weights/<family>/``:

- ``<name>.pth``: the weights as a state dict in PyTorch's layout, keyed ``layers.<op>.weight``
  / ``layers.<op>.bias`` (``<op>`` is ``op`` and the operator's index in the file).
  Convolution kernels go from TFLite's ``(out, kh, kw, in)`` to ``(out, in, kh, kw)``,
  depthwise kernels from ``(1, kh, kw, channels)`` to ``(channels, 1, kh, kw)``. BlazePose's
  float16 weights stay float16 (the networks load them into float32; they come out equal);
  sparse ones (``DENSIFY``) are made dense. BodyPix's int8 weights and int32 biases are
  dequantised (``(q - zero_point) * scale``, per tensor or per output channel) to float32.
- ``<name>.graph.json``: the operators in order with their options (strides, padding,
  fused activation, resize flags, ...), which tensor feeds which, the input and output
  tensors, and for a quantised network the scale and zero point of every activation tensor.
  :class:`frameserve.networks.tflite_graph.TFLiteGraph` builds its PyTorch layers from it.

The LICENSE and NOTICE files are copied beside them. ``--heavy`` also converts
``pose_landmark_heavy`` (27.7 MB), which frameserve does not ship by default.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tflite
import torch

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "src" / "frameserve" / "weights"

#: family folder -> (.tflite file stem, name written) converted by default.
FILES = {
    "body-pose": [
        ("pose_detection", "pose_detection"),
        ("pose_landmark_lite", "pose_landmark_lite"),
        ("pose_landmark_full", "pose_landmark_full"),
    ],
    "body-parts": [
        # The per-channel quantised file (better weights than the per-tensor one); the network
        # is fully convolutional, so one file serves portrait and landscape frames.
        ("bodypix_mobilenet_v1_075_720_1280_16_quant", "bodypix_mobilenet_v1_075"),
    ],
}
HEAVY = ("pose_landmark_heavy", "pose_landmark_heavy")

OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
ACTIVATIONS = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}
PADDING = {0: "same", 1: "valid"}
DTYPES = {
    tflite.TensorType.FLOAT32: np.float32,
    tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32,
    tflite.TensorType.UINT8: np.uint8,
    tflite.TensorType.INT8: np.int8,
    tflite.TensorType.INT64: np.int64,
}


class Reader:
    """One ``.tflite`` file's first subgraph: tensors, constant buffers and operators."""

    def __init__(self, path: Path) -> None:
        self.buffer = path.read_bytes()
        self.model = tflite.Model.GetRootAsModel(self.buffer, 0)
        self.graph = self.model.Subgraphs(0)
        self.constants: dict[int, np.ndarray] = {}  # tensor index -> value (folded)

    def op_name(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        return OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]

    def shape(self, index: int) -> list[int]:
        tensor = self.graph.Tensors(index)
        return [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []

    def raw(self, index: int) -> np.ndarray | None:
        """The constant data of tensor ``index`` (dense), or ``None`` for an activation."""
        tensor = self.graph.Tensors(index)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            return None
        values = np.frombuffer(data.tobytes(), dtype=DTYPES[tensor.Type()])
        sparsity = tensor.Sparsity()
        if sparsity is not None:
            return densify(values, self.shape(index), sparsity)
        return values.reshape(self.shape(index))

    def value(self, index: int) -> np.ndarray | None:
        """Constant value of a tensor, following DEQUANTIZE / DENSIFY ops folded earlier."""
        if index in self.constants:
            return self.constants[index]
        return self.raw(index)

    def quantisation(self, index: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """Scale(s), zero point(s) and quantised axis of tensor ``index`` (``None``: float)."""
        q = self.graph.Tensors(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return (
            q.ScaleAsNumpy().astype(np.float64),
            q.ZeroPointAsNumpy().astype(np.int64),
            int(q.QuantizedDimension()),
        )


def densify(values: np.ndarray, shape: list[int], sparsity: Any) -> np.ndarray:
    """Expand a TFLite sparse tensor (dense leading dimensions, CSR last ones) to dense."""
    order = list(sparsity.TraversalOrderAsNumpy())
    if order != list(range(len(shape))) or sparsity.BlockMapLength():
        raise SystemExit(f"unsupported sparsity: traversal {order}, block map")
    dense = np.zeros(shape, dtype=values.dtype)
    flat = dense.reshape(-1, shape[-1])
    for dim in range(len(shape) - 1):
        if sparsity.DimMetadata(dim).Format() != 0:
            raise SystemExit("unsupported sparsity: only the last dimension may be sparse")
    meta = sparsity.DimMetadata(len(shape) - 1)
    segments = _index_vector(meta.ArraySegments(), meta.ArraySegmentsType())
    indices = _index_vector(meta.ArrayIndices(), meta.ArrayIndicesType())
    for row in range(flat.shape[0]):
        start, end = int(segments[row]), int(segments[row + 1])
        flat[row, indices[start:end]] = values[start:end]
    return dense


def _index_vector(table: Any, kind: int) -> np.ndarray:
    vector = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}[kind]()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy()


def options(op: Any, cls: Any) -> Any:
    table = op.BuiltinOptions()
    result = cls()
    result.Init(table.Bytes, table.Pos)
    return result


def dequantised(reader: Reader, index: int) -> np.ndarray:
    """A weight or bias tensor as float (int8/int32 dequantised per tensor or per channel)."""
    value = reader.value(index)
    if value is None:
        raise SystemExit(f"tensor {index} should be a constant")
    if value.dtype in (np.float32, np.float16):
        return value
    scale, zero, axis = reader.quantisation(index)  # type: ignore[misc]
    axis_shape = [1] * value.ndim
    if scale.size > 1:
        axis_shape[axis] = -1
    return (
        (value.astype(np.float64) - zero.reshape(axis_shape)) * scale.reshape(axis_shape)
    ).astype(np.float32)


def convert(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read one ``.tflite`` file; return its state dict and its layer graph."""
    reader = Reader(path)
    graph = reader.graph
    state: dict[str, torch.Tensor] = {}
    ops: list[dict[str, Any]] = []
    quantised = False
    for index in range(graph.OperatorsLength()):
        op = graph.Operators(index)
        name = reader.op_name(op)
        inputs = [int(i) for i in op.InputsAsNumpy()]
        outputs = [int(i) for i in op.OutputsAsNumpy()]
        layer = f"op{index}"
        entry: dict[str, Any] = {"name": layer, "in": [inputs[0]], "out": outputs[0]}
        if name in ("DEQUANTIZE", "DENSIFY"):
            # Constant weights: fold them (the state dict keeps float16 as float16).
            value = reader.value(inputs[0])
            if value is None:
                raise SystemExit(f"{name} of an activation is not supported")
            reader.constants[outputs[0]] = value
            continue
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = name == "DEPTHWISE_CONV_2D"
            o = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            weight = dequantised(reader, inputs[1])
            weight = weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2)
            state[f"layers.{layer}.weight"] = torch.from_numpy(weight.copy())
            if len(inputs) > 2 and inputs[2] >= 0:
                bias = dequantised(reader, inputs[2])
                state[f"layers.{layer}.bias"] = torch.from_numpy(bias.copy())
            entry.update(
                op="depthwise" if depthwise else "conv",
                stride=[o.StrideH(), o.StrideW()],
                dilation=[o.DilationHFactor(), o.DilationWFactor()],
                padding=PADDING[o.Padding()],
                act=ACTIVATIONS[o.FusedActivationFunction()],
                shape=list(weight.shape),
                bias=len(inputs) > 2 and inputs[2] >= 0,
            )
        elif name == "ADD":
            o = options(op, tflite.AddOptions)
            entry.update(op="add", act=ACTIVATIONS[o.FusedActivationFunction()])
            entry["in"] = inputs
        elif name == "CONCATENATION":
            o = options(op, tflite.ConcatenationOptions)
            entry.update(op="concat", axis=o.Axis(), act=ACTIVATIONS[o.FusedActivationFunction()])
            entry["in"] = inputs
        elif name == "PAD":
            pads = reader.value(inputs[1])
            assert pads is not None
            entry.update(op="pad", pads=pads.astype(int).tolist())
        elif name == "RESHAPE":
            entry.update(op="reshape", shape=reader.shape(outputs[0]))
        elif name == "DEPTH_TO_SPACE":
            o = options(op, tflite.DepthToSpaceOptions)
            entry.update(op="depth_to_space", block=o.BlockSize())
        elif name == "RESIZE_BILINEAR":
            o = options(op, tflite.ResizeBilinearOptions)
            before, after = reader.shape(inputs[0]), reader.shape(outputs[0])
            entry.update(
                op="resize_bilinear",
                scale=[after[1] // before[1], after[2] // before[2]],
                align_corners=bool(o.AlignCorners()),
                half_pixel_centers=bool(o.HalfPixelCenters()),
            )
            if after[1] % before[1] or after[2] % before[2]:
                raise SystemExit("only whole-number resize factors are supported")
        elif name == "MAX_POOL_2D":
            o = options(op, tflite.Pool2DOptions)
            entry.update(
                op="max_pool",
                kernel=[o.FilterHeight(), o.FilterWidth()],
                stride=[o.StrideH(), o.StrideW()],
                padding=PADDING[o.Padding()],
                act=ACTIVATIONS[o.FusedActivationFunction()],
            )
        elif name == "LOGISTIC":
            entry.update(op="logistic")
        elif name == "QUANTIZE":
            quantised = True
            entry.update(op="quantize")
        else:
            raise SystemExit(f"{path.name}: operator {name} is not supported")
        ops.append(entry)
    used = {t for entry in ops for t in [*entry["in"], entry["out"]]}
    quant: dict[str, list[float]] = {}
    if quantised:
        for tensor in sorted(used):
            q = reader.quantisation(tensor)
            kind = graph.Tensors(tensor).Type()
            if q is None or kind not in (tflite.TensorType.INT8, tflite.TensorType.UINT8):
                continue
            low, high = (-128, 127) if kind == tflite.TensorType.INT8 else (0, 255)
            quant[str(tensor)] = [float(q[0][0]), int(q[1][0]), low, high]
    inputs = [int(graph.Inputs(i)) for i in range(graph.InputsLength())]
    outputs = {
        graph.Tensors(graph.Outputs(i)).Name().decode(): int(graph.Outputs(i))
        for i in range(graph.OutputsLength())
    }
    description = {
        "source": path.name,
        "input": inputs[0],
        "input_shape": reader.shape(inputs[0]),
        "outputs": outputs,
        "output_shapes": {key: reader.shape(value) for key, value in outputs.items()},
        "ops": ops,
        "quantisation": quant,
    }
    return state, description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/shared/weights"))
    parser.add_argument("--target", type=Path, default=TARGET)
    parser.add_argument("--heavy", action="store_true", help="also convert the heavy model")
    args = parser.parse_args(argv)
    for family, files in FILES.items():
        folder = args.target / family
        folder.mkdir(parents=True, exist_ok=True)
        for extra in ("LICENSE", "NOTICE"):
            shutil.copyfile(args.source / family / extra, folder / extra)
        chosen = files + ([HEAVY] if args.heavy and family == "body-pose" else [])
        for stem, name in chosen:
            state, description = convert(args.source / family / f"{stem}.tflite")
            torch.save(state, folder / f"{name}.pth")
            (folder / f"{name}.graph.json").write_text(json.dumps(description, indent=0) + "\n")
            count = sum(t.numel() for t in state.values())
            print(f"{family}/{name}: {len(state)} tensors, {count} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
