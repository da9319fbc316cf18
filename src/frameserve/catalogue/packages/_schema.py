"""What a model package declares: the checked form of its manifest (``model.toml``).

:func:`~frameserve.catalogue.packages.read_manifest` turns the file into a :class:`Manifest`; the
generated model class (:mod:`frameserve.catalogue.packages._model`) runs the network as it says. The
schema is documented, with a full example, in ``docs/packages.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frameserve.plugin.knobs import KnobSpec
from frameserve.plugin.model import SpatialNeeds

__all__ = [
    "FEEDS",
    "MANIFEST_FILE",
    "NETWORK_FORMATS",
    "SCHEMA",
    "InputDecl",
    "KnobDecl",
    "Manifest",
    "OutputDecl",
]

#: The file that makes a folder a model package.
MANIFEST_FILE = "model.toml"
#: The manifest schema this frameserve reads (``schema = 1``; optional in the file).
SCHEMA = 1
#: Network file extensions and the runtime each is run with.
NETWORK_FORMATS: Mapping[str, str] = {
    ".pt": "torchscript",
    ".pt2": "torch.export",
    ".onnx": "onnx",
}
#: How a knob's value reaches the network (see :class:`KnobDecl`).
FEEDS = ("input", "attribute", "gain", "offset")


@dataclass(frozen=True, kw_only=True)
class InputDecl:
    """One image input: what clients send, and which of its channels feed the network.

    Attributes:
        name: the input's name on the wire (and in Nuke).
        channels: how many channels clients send.
        use: the channels (indices into ``channels``) the network gets, in this order.
        range: the value range the network expects (``None``: not declared).
        normalise: map the frame's nominal 0..1 linearly onto ``range`` before the network.
        tensor: the network input this image is passed as.
    """

    name: str
    channels: int
    use: tuple[int, ...]
    range: tuple[float, float] | None = None
    normalise: bool = False
    tensor: str = ""


@dataclass(frozen=True, kw_only=True)
class OutputDecl:
    """One image output: which channels of the network's tensor it is made of.

    Attributes:
        name: the output's name.
        channels: how many channels it has.
        use: the channels of the network's tensor that form it (``None``: all of them; the
            tensor must then have exactly ``channels``).
        range: the value range the network gives (``None``: not declared).
        normalise: map ``range`` linearly back onto 0..1 after the network.
    """

    name: str
    channels: int
    use: tuple[int, ...] | None = None
    range: tuple[float, float] | None = None
    normalise: bool = False


@dataclass(frozen=True, kw_only=True)
class KnobDecl:
    """A knob and how its value reaches the network.

    Attributes:
        spec: the knob as artists see it (type, default, bounds, help).
        feed: ``"input"`` (a scalar network input named ``target``), ``"attribute"`` (a
            TorchScript module attribute named ``target``, set for each call under a lock),
            ``"gain"`` (image input ``target`` is multiplied by the value before the network)
            or ``"offset"`` (the value is added to image input ``target``).
        target: what the knob feeds (see ``feed``).
    """

    spec: KnobSpec
    feed: str
    target: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A checked ``model.toml``: the package's declaration and where its network is."""

    path: Path
    id: str
    label: str
    version: str
    description: str
    author: str
    licence: str
    commercial_use: bool | None
    network: Path
    network_format: str
    colourspace_in: str
    colourspace_out: str
    half_precision: bool
    cacheable: bool
    max_batch_size: int
    batch_window_ms: float
    timeout_s: float | None
    memory_limit_mb: int | None
    output_scale: int
    temporal_window: tuple[int, int]
    spatial: SpatialNeeds
    inputs: tuple[InputDecl, ...]
    outputs: tuple[OutputDecl, ...]
    knobs: tuple[KnobDecl, ...]

    @property
    def folder(self) -> Path:
        """The package folder (the manifest's folder)."""
        return self.path.parent

    def feeds(self, feed: str) -> tuple[KnobDecl, ...]:
        """Return the knobs fed as ``feed``, in manifest order."""
        return tuple(knob for knob in self.knobs if knob.feed == feed)

    def describe(self) -> dict[str, Any]:
        """Return the package's declaration as plain data (``frameserve check --json``)."""
        return {
            "id": self.id,
            "label": self.label,
            "version": self.version,
            "description": self.description,
            "author": self.author,
            "licence": self.licence,
            "commercial_use": self.commercial_use,
            "manifest": str(self.path),
            "network": str(self.network),
            "network_format": self.network_format,
            "colourspace_in": self.colourspace_in,
            "colourspace_out": self.colourspace_out,
            "output_scale": self.output_scale,
            "timeout_s": self.timeout_s,
            "memory_limit_mb": self.memory_limit_mb,
            "temporal_window": list(self.temporal_window),
            "inputs": [
                {
                    "name": i.name,
                    "channels": i.channels,
                    "use": list(i.use),
                    "range": None if i.range is None else list(i.range),
                    "normalise": i.normalise,
                    "tensor": i.tensor,
                }
                for i in self.inputs
            ],
            "outputs": [
                {
                    "name": o.name,
                    "channels": o.channels,
                    "use": None if o.use is None else list(o.use),
                    "range": None if o.range is None else list(o.range),
                    "normalise": o.normalise,
                }
                for o in self.outputs
            ],
            "knobs": [
                {**k.spec.describe(), "feed": k.feed, "target": k.target} for k in self.knobs
            ],
        }
