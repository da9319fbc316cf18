"""Loading and running a package's network file: TorchScript, torch.export or ONNX.

Every runtime takes the network's inputs by name, as tensors on the model's device, and gives
its outputs back in order, as tensors on that device:

- **TorchScript** (``.pt``): ``torch.jit.load(path, map_location=device)``, called with keyword
  arguments named after ``forward``'s parameters (PyTorch deprecates TorchScript in favour of
  ``torch.export``; its deprecation warning on load is silenced here, and ``.pt2`` is the
  format to choose for new networks). A parameter typed ``float``, ``int`` or
  ``bool`` gets a Python number; its other parameters get tensors. Module attributes can be read
  and set (``feed = "attribute"``; the model holds a lock around set-and-run).
- **torch.export** (``.pt2``): ``torch.export.load(path).module()`` moved to the device, called
  with positional arguments in the order of its signature.
- **ONNX** (``.onnx``): an ``onnxruntime.InferenceSession`` (imported on first load, never
  at listing time) with the CUDA provider when the device is a CUDA GPU and the installed
  onnxruntime has it, else the CPU provider (a WARNING says so). Inputs cross to the CPU as
  numpy arrays of the types the graph declares, and outputs come back to the device: two
  copies per call on a GPU, none of the frame on the CPU. Weights in a separate
  ``.onnx.data`` file are found next to the ``.onnx`` file.

Loading a network is the generated model's ``setup``; nothing here runs at import.
"""

from __future__ import annotations

import abc
import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from frameserve.errors import ModelRunError

__all__ = [
    "ExportedNetwork",
    "Network",
    "OnnxNetwork",
    "TorchScriptNetwork",
    "load_network",
    "onnx_external_files",
]

log = logging.getLogger(__name__)

#: Scalar parameter types of a TorchScript ``forward`` that take a Python value, not a tensor.
_PYTHON_SCALARS = {"float": float, "int": int, "bool": bool}

_ONNX_TYPES: Mapping[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class Network(abc.ABC):
    """A loaded network: named tensors in, tensors out, on one device.

    Attributes:
        input_names: the network's inputs, in its own order.
        optional_inputs: inputs that may be left out (TorchScript parameters with defaults).
        module: the ``torch.nn.Module`` for PyTorch formats (``None`` for ONNX); the model
            keeps it as an attribute, so the engine converts it for half precision and
            counts its memory.
    """

    format: ClassVar[str] = ""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path = path
        self.device = device
        self.input_names: tuple[str, ...] = ()
        self.optional_inputs: frozenset[str] = frozenset()
        self.module: torch.nn.Module | None = None

    def input_shape(self, name: str) -> tuple[int | None, ...] | None:
        """Return the shape the network declares for input ``name`` (``None``: a free size).

        Only ONNX graphs declare shapes; other formats return ``None``.
        """
        return None

    def input_type(self, name: str) -> str:
        """Return how input ``name`` is declared, for messages (``"Tensor"``, ``"float"``...)."""
        return "Tensor"

    @abc.abstractmethod
    def run(self, arguments: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run the network on ``arguments`` (by input name); return its outputs in order."""


class TorchScriptNetwork(Network):
    """A TorchScript module (``.pt``), from ``torch.jit.script`` or ``torch.jit.trace``."""

    format = "torchscript"

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__(path, device)
        with warnings.catch_warnings():
            # Recent PyTorch deprecates TorchScript in favour of torch.export (.pt2); packages
            # keep taking .pt files, the format most studio networks are still saved in.
            warnings.filterwarnings(
                "ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning
            )
            module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        module.eval()
        self.module = module
        self._script = module
        arguments = list(module.forward.schema.arguments)[1:]  # after self
        self.input_names = tuple(a.name for a in arguments)
        self.optional_inputs = frozenset(a.name for a in arguments if a.has_default_value())
        self._types = {a.name: str(a.type) for a in arguments}

    def input_type(self, name: str) -> str:
        """Return the parameter's TorchScript type (``"Tensor"``, ``"float"``...)."""
        return self._types.get(name, "Tensor")

    def attribute_type(self, name: str) -> type | None:
        """Return the Python type of module attribute ``name`` (``None``: there is none)."""
        if not hasattr(self._script, name) or name in dict(self._script.named_children()):
            return None
        return type(getattr(self._script, name))

    def set_attribute(self, name: str, value: object) -> None:
        """Set module attribute ``name`` to ``value`` (the caller holds the model's lock)."""
        setattr(self._script, name, value)

    def run(self, arguments: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Call ``forward`` with keyword arguments; Python scalars where it wants them."""
        values: dict[str, Any] = {}
        for name, value in arguments.items():
            scalar = _PYTHON_SCALARS.get(self._types.get(name, ""))
            values[name] = scalar(value.item()) if scalar is not None else value
        return as_tensor_list(self._script(**values), self.format)


class ExportedNetwork(Network):
    """A ``torch.export`` program (``.pt2``), run as its unlifted module."""

    format = "torch.export"

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__(path, device)
        program = torch.export.load(str(path))
        module = program.module()
        module.to(device)
        self.module = module
        self._module = module
        self.input_names = tuple(inspect.signature(module.forward).parameters)

    def run(self, arguments: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Call the module with positional arguments, in its signature's order."""
        return as_tensor_list(
            self._module(*(arguments[name] for name in self.input_names)), self.format
        )


class OnnxNetwork(Network):
    """An ONNX graph (``.onnx``), run with onnxruntime."""

    format = "onnx"

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__(path, device)
        import onnxruntime  # type: ignore[import-untyped]

        available = onnxruntime.get_available_providers()
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in available:
                cuda = ("CUDAExecutionProvider", {"device_id": device.index or 0})
                providers = [cuda, "CPUExecutionProvider"]
            else:
                log.warning(
                    "%s: this onnxruntime has no CUDA provider (it has %s); the network runs "
                    "on the CPU (install onnxruntime-gpu to run it on %s)",
                    path,
                    ", ".join(available),
                    device,
                )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings go to stderr, not logging
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=providers
        )
        inputs = self._session.get_inputs()
        self.input_names = tuple(i.name for i in inputs)
        self._shapes = {
            i.name: tuple(d if isinstance(d, int) and d > 0 else None for d in i.shape)
            for i in inputs
        }
        self._types = {i.name: str(i.type) for i in inputs}

    def input_shape(self, name: str) -> tuple[int | None, ...] | None:
        """Return the graph's declared shape of ``name``; ``None`` marks a free dimension."""
        return self._shapes.get(name)

    def input_type(self, name: str) -> str:
        """Return the graph's declared type of ``name`` (``"tensor(float)"``...)."""
        return self._types.get(name, "tensor(float)")

    def run(self, arguments: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run the session; inputs as numpy arrays of the declared types and ranks."""
        feed: dict[str, np.ndarray[Any, Any]] = {}
        for name, tensor in arguments.items():
            array = tensor.detach().to("cpu").contiguous().numpy()
            dtype = _ONNX_TYPES.get(self._types.get(name, ""))
            if dtype is not None and array.dtype != dtype:
                array = array.astype(dtype)
            rank = len(self._shapes.get(name, ()))
            if array.ndim == 0 and rank == 1:
                array = array.reshape(1)
            feed[name] = array
        outputs = self._session.run(None, feed)
        return [torch.from_numpy(np.ascontiguousarray(o)).to(self.device) for o in outputs]


_RUNTIMES: Mapping[str, type[Network]] = {
    "torchscript": TorchScriptNetwork,
    "torch.export": ExportedNetwork,
    "onnx": OnnxNetwork,
}


def load_network(path: Path, network_format: str, device: torch.device) -> Network:
    """Load the network at ``path`` (a format of :data:`NETWORK_FORMATS`) onto ``device``.

    Raises:
        whatever the runtime raises for a file it cannot load (the caller words it).
    """
    return _RUNTIMES[network_format](path, device)


def as_tensor_list(raw: object, network_format: str) -> list[torch.Tensor]:
    """Return what a PyTorch network returned as a list of tensors (one, or several in order).

    Raises:
        ModelRunError: it returned something other than a tensor or a tuple/list of tensors.
    """
    if isinstance(raw, torch.Tensor):
        return [raw]
    if isinstance(raw, Sequence) and all(isinstance(t, torch.Tensor) for t in raw):
        return list(raw)
    raise ModelRunError(
        f"the {network_format} network returned {type(raw).__name__}; expected a tensor or a "
        "tuple of tensors, one per output"
    )


def onnx_external_files(path: Path) -> list[str]:
    """Return the files (relative to ``path``'s folder) holding an ONNX graph's outside weights.

    ``torch.onnx.export`` writes big weights to ``NAME.onnx.data``; packaging copies these too.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found: list[str] = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                tensors += (
                    [attribute.t, *attribute.tensors]
                    if attribute.HasField("t")
                    else [*attribute.tensors]
                )
                graphs += (
                    [attribute.g, *attribute.graphs]
                    if attribute.HasField("g")
                    else [*attribute.graphs]
                )
        for tensor in tensors:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location and location not in found:
                found.append(location)
    return found
