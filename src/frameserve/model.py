"""The model plug-in contract: what a model declares and the two hooks it writes.

A model is a Python class in its own folder (``my_models/sharpen/model.py``)::

    import torch
    from frameserve import FloatKnob, ImageSpec, Model

    class Sharpen(Model):
        id = "sharpen"
        label = "Sharpen"
        inputs = [ImageSpec("image", channels=3)]
        outputs = [ImageSpec("image", channels=3)]
        knobs = [FloatKnob("amount", default=0.5, min=0.0, max=4.0, help="Strength.")]

        def setup(self, device):
            # Load weights here: it runs once, on first use, never at import or start-up.
            self.kernel = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], device=device)

        def predict(self, frames, knobs):
            image = frames["image"]                                  # (C, H, W) float32
            edges = torch.nn.functional.conv2d(
                image[:, None], self.kernel[None, None].to(image), padding=1
            )[:, 0]
            return image + knobs["amount"] * edges

**Frames**, in and out, are float32 ``torch.Tensor`` of shape ``(C, H, W)``: channels first,
top row first, scene-linear values (never clipped: values above 1 and below 0 are normal). The
server converts every wire format to this form and back; a model never sees protobuf, byte
order or Nuke's bottom-up rows.

**Colour**: a model declares the colourspace it wants its inputs in and gives its outputs in
(``colourspace_in`` / ``colourspace_out``, names from the OpenColorIO config; scene-linear by
default). Networks trained on photographs usually want ``"srgb"``: sRGB-encoded values. The
runner converts from the request's colourspace and back (see ``docs/colour.md``).

**Knobs** arrive as a read-only mapping holding exactly this request's values (defaults for the
rest). Never store them on ``self``: one instance serves every artist at once.

``predict`` returns one tensor (for the first output), a mapping of output name to tensor, or a
:class:`Prediction` with frames and :class:`~frameserve.objects.ResultObject` items.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from frameserve.errors import ConfigError
from frameserve.knobs import KnobSpec, KnobValues, check_knob_specs
from frameserve.objects import ResultObject

__all__ = ["SCENE_LINEAR", "ImageSpec", "Model", "ModelSpec", "Prediction"]

#: The OpenColorIO role of the working space: what Nuke sends, and the default everywhere.
SCENE_LINEAR = "scene_linear"

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
MAX_CHANNELS = 64


@dataclass(frozen=True)
class ImageSpec:
    """A named image input or output with a fixed channel count."""

    name: str
    channels: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"image name {self.name!r} must be a non-empty string")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ConfigError(f"image {self.name!r}: channels must be a whole number")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ConfigError(
                f"image {self.name!r}: channels {self.channels} is outside 1..{MAX_CHANNELS}"
            )


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """What ``predict`` may return: output frames by name, and result objects."""

    frames: Mapping[str, torch.Tensor] = field(default_factory=dict)
    objects: Sequence[ResultObject] = ()


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything a model declares, checked; read by the front doors and the runner."""

    id: str
    label: str
    description: str
    inputs: tuple[ImageSpec, ...]
    outputs: tuple[ImageSpec, ...]
    knobs: tuple[KnobSpec, ...]
    colourspace_in: str = SCENE_LINEAR
    colourspace_out: str = SCENE_LINEAR

    def knob(self, name: str) -> KnobSpec | None:
        """Return the knob spec called ``name``, or ``None``."""
        return next((spec for spec in self.knobs if spec.name == name), None)

    def describe(self) -> dict[str, Any]:
        """Return the declaration as plain data (``frameserve models --json``)."""
        return {
            "id": self.id,
            "label": self.label,
            "description": self.description,
            "inputs": [{"name": i.name, "channels": i.channels} for i in self.inputs],
            "outputs": [{"name": o.name, "channels": o.channels} for o in self.outputs],
            "knobs": [knob.describe() for knob in self.knobs],
            "colourspace_in": self.colourspace_in,
            "colourspace_out": self.colourspace_out,
        }


class Model:
    """Base class of every model: declare the class attributes, write ``predict``.

    Class attributes:
        id: unique name used on the wire (letters, digits, ``_ . -``).
        label: what artists see in the node's model menu (defaults to ``id``).
        description: one paragraph for TDs (shown by ``frameserve models``).
        inputs / outputs: :class:`ImageSpec` list; frames arrive and leave in this order.
        knobs: knob specs (:mod:`frameserve.knobs`).
        colourspace_in / colourspace_out: the colourspace inputs arrive in and outputs are
            given in (OpenColorIO names or aliases such as ``"srgb"``; scene-linear by default).
    """

    id: ClassVar[str] = ""
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    inputs: ClassVar[Sequence[ImageSpec]] = (ImageSpec("image", 3),)
    outputs: ClassVar[Sequence[ImageSpec]] = (ImageSpec("image", 3),)
    knobs: ClassVar[Sequence[KnobSpec]] = ()
    colourspace_in: ClassVar[str] = SCENE_LINEAR
    colourspace_out: ClassVar[str] = SCENE_LINEAR

    def setup(self, device: torch.device) -> None:
        """Load weights and build networks on ``device``; runs once, on first use."""

    def predict(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> torch.Tensor | Mapping[str, torch.Tensor] | Prediction:
        """Compute the outputs of one request.

        Args:
            frames: one float32 ``(C, H, W)`` tensor per declared input, by input name, on the
                model's device; top row first, scene-linear, not clipped.
            knobs: this request's knob values.

        Returns:
            A tensor for the first output, a mapping of output name to tensor, or a
            :class:`Prediction` that also carries result objects.
        """
        raise NotImplementedError(f"model {type(self).id!r} does not implement predict")

    @classmethod
    def spec(cls) -> ModelSpec:
        """Return the checked declaration of this class; raise :class:`ConfigError` if wrong."""
        owner = f"model class {cls.__qualname__}"
        if not isinstance(cls.id, str) or not _MODEL_ID.match(cls.id):
            raise ConfigError(
                f"{owner}: id {cls.id!r} must be letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if cls.predict is Model.predict:
            raise ConfigError(f"{owner}: it must implement predict(frames, knobs)")
        inputs = _image_specs(cls.inputs, owner=owner, what="inputs")
        outputs = _image_specs(cls.outputs, owner=owner, what="outputs")
        if not outputs:
            raise ConfigError(f"{owner}: it must declare at least one output")
        for name in ("colourspace_in", "colourspace_out"):
            if not isinstance(getattr(cls, name), str) or not getattr(cls, name):
                raise ConfigError(f"{owner}: {name} must be a colourspace name")
        return ModelSpec(
            id=cls.id,
            label=str(cls.label or cls.id),
            description=str(cls.description or (cls.__doc__ or "").strip()),
            inputs=inputs,
            outputs=outputs,
            knobs=check_knob_specs(_as_tuple(cls.knobs, owner=owner, what="knobs"), owner=owner),
            colourspace_in=cls.colourspace_in,
            colourspace_out=cls.colourspace_out,
        )


def _image_specs(specs: Sequence[ImageSpec], *, owner: str, what: str) -> tuple[ImageSpec, ...]:
    result = _as_tuple(specs, owner=owner, what=what)
    if not all(isinstance(spec, ImageSpec) for spec in result):
        raise ConfigError(f"{owner}: {what} must be ImageSpec(name, channels) items")
    names = [spec.name for spec in result]
    if len(set(names)) != len(names):
        raise ConfigError(f"{owner}: two {what} share a name: {names}")
    return result


def _as_tuple(items: object, *, owner: str, what: str) -> tuple[Any, ...]:
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{owner}: {what} must be a list, got {type(items).__name__}")
    return tuple(items)
