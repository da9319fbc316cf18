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

**Frames**, in and out, are in frameserve's one internal frame form, defined in
:mod:`frameserve.plugin.frames`. The server converts every wire format to it and back; a model
never sees protobuf, byte order or Nuke's bottom-up rows.

**Colour**: a model declares the colourspace it wants its inputs in and gives its outputs in
(``colourspace_in`` / ``colourspace_out``, names from the OpenColorIO config; scene-linear by
default). Networks trained on photographs usually want ``"srgb"``: sRGB-encoded values. The
runner converts from the request's colourspace and back (see ``docs/colour.md``).

**Knobs** arrive as a read-only mapping holding exactly this request's values (defaults for the
rest). Never store them on ``self``: one instance serves every artist at once.

``predict`` returns one tensor (for the first output), a mapping of output name to tensor, or a
:class:`Prediction` with frames and :class:`~frameserve.plugin.results.ResultObject` items.

**Big frames, batches and precision** are declared, not coded: with ``spatial``
(:class:`SpatialNeeds`) the engine pads frames to a size multiple and cuts big frames into
overlapping tiles, so ``predict`` only sees frames it can take; with ``max_batch_size`` it
calls ``predict_batch`` with several requests at once. Two rules for model code:

- A model that writes ``predict_batch`` gets every request there (a single one as a batch of
  one), and if it holds a ``torch.nn.Conv2d`` its ``(N, C, H, W)`` frames may have
  channels-last strides (much faster). Use ``.reshape``, not ``.view``, on them, or
  ``.contiguous()`` first. (If the first batch on such frames raises, the model gets
  contiguous frames from then on.) ``predict`` always gets contiguous ``(C, H, W)`` frames.
- ``half_precision = True`` means, on a GPU: after ``setup``, every ``torch.nn.Module`` that is
  an attribute of the instance (``self.net = ...``; keep modules that live in lists or dicts in
  an ``nn.ModuleList`` or ``nn.ModuleDict``) is converted with ``.half()``; frames arrive as
  float16; ``predict`` runs under ``torch.autocast(float16)``, so float32 tensors kept
  elsewhere still mix in; outputs may be float16 or float32 and leave as float32. Make plain
  tensors follow the frame with ``.to(image)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from frameserve.errors import ConfigError
from frameserve.plugin.knobs import KnobSpec, KnobValues, check_knob_specs
from frameserve.plugin.licences import (
    WeightsLicence,
    check_weights,
    cleared_for_commercial_use,
    describe_weights,
)
from frameserve.plugin.results import ResultObject

__all__ = ["SCENE_LINEAR", "ImageSpec", "Model", "ModelSpec", "Prediction", "SpatialNeeds"]

#: The OpenColorIO role of the working space: what Nuke sends, and the default everywhere.
SCENE_LINEAR = "scene_linear"

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
MAX_CHANNELS = 64


@dataclass(frozen=True)
class ImageSpec:
    """A named image input or output with a fixed channel count.

    Attributes:
        name: the input's or output's name (HTTP tensor name, ``--input NAME=``, file suffix).
        channels: how many channels it holds.
        channel_names: what ``frameserve run`` calls the channels when it writes an EXR, e.g.
            ``("forward.u", "forward.v", "backward.u", "backward.v")`` for motion vectors
            (default: ``R, G, B, A`` by count); listed in the model's description.
        optional: an input that requests may leave out (an artist's hints, a garbage matte);
            ``predict`` then finds no entry for it in ``frames``. Optional inputs come after
            every required one, so a client that sends images by position can drop them.

    ::

        ImageSpec("motion", channels=4,
                  channel_names=("forward.u", "forward.v", "backward.u", "backward.v"))
        ImageSpec("hints", channels=2, optional=True)
    """

    name: str
    channels: int = 3
    channel_names: tuple[str, ...] | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"image name {self.name!r} must be a non-empty string")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int):
            raise ConfigError(f"image {self.name!r}: channels must be a whole number")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ConfigError(
                f"image {self.name!r}: channels {self.channels} is outside 1..{MAX_CHANNELS}"
            )
        if self.channel_names is not None:
            names = self.channel_names
            if (
                not isinstance(names, tuple | list)
                or len(names) != self.channels
                or not all(isinstance(n, str) and n and n.strip() == n for n in names)
                or len(set(names)) != len(names)
            ):
                raise ConfigError(
                    f"image {self.name!r}: channel_names must be {self.channels} distinct "
                    f"non-empty names, got {names!r}"
                )
            object.__setattr__(self, "channel_names", tuple(names))
        if not isinstance(self.optional, bool):
            raise ConfigError(f"image {self.name!r}: optional must be True or False")


@dataclass(frozen=True, kw_only=True)
class SpatialNeeds:
    """How a model copes with frame sizes; the engine pads and tiles so the model never has to.

    Attributes:
        fully_convolutional: each output pixel depends only on a neighbourhood of input pixels,
            so a big frame may be cut into overlapping tiles and stitched back.
        size_multiple: height and width must be multiples of this; the engine pads the frame
            (mirroring its edges) and crops the outputs back.
        overlap: how far, in pixels, an output pixel sees (its receptive field radius); each
            tile reaches this far past the part of it that is kept, and neighbouring tiles are
            blended over a band as wide (see :mod:`frameserve.engine.tiling`).
        max_size: the largest height or width the model takes in one piece (``None``: any);
            fully convolutional models get tiles no larger, others an error. For a fully
            convolutional model it must leave room for a tile: at least
            ``2 * overlap + size_multiple``, once rounded down to a multiple of
            ``size_multiple``.

    ::

        spatial = SpatialNeeds(fully_convolutional=True, size_multiple=8, overlap=16,
                               max_size=1024)
    """

    fully_convolutional: bool = False
    size_multiple: int = 1
    overlap: int = 0
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.size_multiple < 1:
            raise ConfigError(f"size_multiple must be at least 1, got {self.size_multiple}")
        if self.overlap < 0:
            raise ConfigError(f"overlap must be 0 or more pixels, got {self.overlap}")
        if self.max_size is not None and self.max_size <= 2 * self.overlap:
            raise ConfigError(
                f"max_size {self.max_size} leaves no room inside an overlap of {self.overlap}"
            )
        if self.max_size is not None and self.max_size < self.size_multiple:
            raise ConfigError(
                f"max_size {self.max_size} is below size_multiple {self.size_multiple}"
            )
        if self.max_size is not None and self.fully_convolutional:
            tile = self.max_size // self.size_multiple * self.size_multiple
            smallest = 2 * self.overlap + self.size_multiple
            if tile < smallest:
                raise ConfigError(
                    f"max_size {self.max_size} leaves no room for tiles: a tile ({tile} pixels, "
                    f"a multiple of size_multiple) must be at least 2 x overlap + size_multiple "
                    f"= {smallest} pixels"
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
    spatial: SpatialNeeds = SpatialNeeds()
    max_batch_size: int = 1
    batch_window_ms: float = 2.0
    half_precision: bool = False
    cacheable: bool = True
    temporal_window: tuple[int, int] = (0, 0)
    output_scale: int = 1
    timeout_s: float | None = None
    memory_limit_mb: int | None = None
    weights: tuple[WeightsLicence, ...] | None = None

    @property
    def required_inputs(self) -> tuple[ImageSpec, ...]:
        """The inputs every request must send (all but the optional ones)."""
        return tuple(image for image in self.inputs if not image.optional)

    def input_source(self, name: str) -> tuple[str, int]:
        """Return the declared input and frame offset an (expanded) input name stands for.

        ``"image@-1"`` is input ``image`` one frame before the current one; ``"image"`` is the
        current frame.
        """
        base, sep, offset = name.rpartition("@")
        if sep and base and offset[:1] in "+-" and offset[1:].isdigit():
            return base, int(offset)
        return name, 0

    def knob(self, name: str) -> KnobSpec | None:
        """Return the knob spec called ``name``, or ``None``."""
        return next((spec for spec in self.knobs if spec.name == name), None)

    def describe(self) -> dict[str, Any]:
        """Return the declaration as plain data (``frameserve models --json``)."""
        return {
            "id": self.id,
            "label": self.label,
            "description": self.description,
            "inputs": [_describe_image(i) for i in self.inputs],
            "outputs": [_describe_image(o) for o in self.outputs],
            "knobs": [knob.describe() for knob in self.knobs],
            "colourspace_in": self.colourspace_in,
            "colourspace_out": self.colourspace_out,
            "spatial": {
                "fully_convolutional": self.spatial.fully_convolutional,
                "size_multiple": self.spatial.size_multiple,
                "overlap": self.spatial.overlap,
                "max_size": self.spatial.max_size,
            },
            "max_batch_size": self.max_batch_size,
            "half_precision": self.half_precision,
            "cacheable": self.cacheable,
            "temporal_window": list(self.temporal_window),
            "output_scale": self.output_scale,
            "timeout_s": self.timeout_s,
            "memory_limit_mb": self.memory_limit_mb,
            "weights": describe_weights(self.weights),
            "commercial_use": cleared_for_commercial_use(self.weights),
        }


def _describe_image(image: ImageSpec) -> dict[str, Any]:
    described: dict[str, Any] = {"name": image.name, "channels": image.channels}
    if image.channel_names is not None:
        described["channel_names"] = list(image.channel_names)
    if image.optional:
        described["optional"] = True
    return described


class Model:
    """Base class of every model: declare the class attributes, write ``predict``.

    Class attributes:
        id: unique name used on the wire (letters, digits, ``_ . -``).
        label: what artists see in the node's model menu (defaults to ``id``).
        version: which version of the model this is (``"1"`` by default; letters, digits,
            ``. _ + -``); in a numbered version folder (``models/NAME/2/``) the folder's
            number is the version instead (see :mod:`frameserve.catalogue.registry`).
        description: one paragraph for TDs (shown by ``frameserve models``).
        inputs / outputs: :class:`ImageSpec` list; frames arrive and leave in this order.
        knobs: knob specs (:mod:`frameserve.plugin.knobs`).
        colourspace_in / colourspace_out: the colourspace inputs arrive in and outputs are
            given in (OpenColorIO names or aliases such as ``"srgb"``; scene-linear by default).
        spatial: :class:`SpatialNeeds`: size multiple, receptive field, largest frame; the
            engine pads and tiles accordingly.
        max_batch_size / batch_window_ms: a model that can run several requests at once
            (``predict_batch``) declares how many, and how long the engine may wait to gather
            requests with the same knobs and frame size.
        half_precision: whether float16 is safe for this model on a GPU.
        cacheable: whether identical requests may be answered from the result cache (set it
            to ``False`` for models whose answer changes between calls, such as live training).
        temporal_window: ``(before, after)``: how many neighbouring frames of every input the
            model needs. Each neighbour becomes an input of its own named ``NAME@-1``,
            ``NAME@+1``…, after the current frame's ``NAME``; ``frameserve run`` reads them
            from the sequence, HTTP clients send them, MLClient artists connect them.
        output_scale: outputs are this many times the inputs' width and height (an upscaler);
            the engine pads and tiles on the input grid and scales tiles up to match.
        timeout_s: the longest one request (or batch) may run in the model, in seconds; past
            it the request fails with :class:`~frameserve.errors.ModelTimeoutError` and the
            model's worker process is stopped and started again. ``None``: the server's
            ``--model-timeout`` (10 minutes unless the TD says otherwise).
        memory_limit_mb: the most private memory (MiB) the model's worker process may hold,
            the Python interpreter and torch included (about 150-250 MiB before any model);
            past it the worker is stopped and its requests fail with
            :class:`~frameserve.errors.ModelCrashedError`. ``None``: the server's
            ``--worker-memory-mb``; a TD's explicit ``--worker-memory-mb`` also caps it.
        weights: the learned weights the model runs and their licences
            (:mod:`frameserve.plugin.licences`); ``()`` for none, ``None``: undeclared.
    """

    id: ClassVar[str] = ""
    label: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    inputs: ClassVar[Sequence[ImageSpec]] = (ImageSpec("image", 3),)
    outputs: ClassVar[Sequence[ImageSpec]] = (ImageSpec("image", 3),)
    knobs: ClassVar[Sequence[KnobSpec]] = ()
    colourspace_in: ClassVar[str] = SCENE_LINEAR
    colourspace_out: ClassVar[str] = SCENE_LINEAR
    spatial: ClassVar[SpatialNeeds] = SpatialNeeds()
    max_batch_size: ClassVar[int] = 1
    batch_window_ms: ClassVar[float] = 2.0
    half_precision: ClassVar[bool] = False
    cacheable: ClassVar[bool] = True
    temporal_window: ClassVar[tuple[int, int]] = (0, 0)
    output_scale: ClassVar[int] = 1
    timeout_s: ClassVar[float | None] = None
    memory_limit_mb: ClassVar[int | None] = None
    weights: ClassVar[Sequence[WeightsLicence] | None] = None

    def setup(self, device: torch.device) -> None:
        """Load weights and build networks on ``device``; runs once, on first use."""

    def predict(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> torch.Tensor | Mapping[str, torch.Tensor] | Prediction:
        """Compute the outputs of one request.

        Args:
            frames: one frame per declared input, by input name, in the internal form
                (:mod:`frameserve.plugin.frames`), on the model's device, in the model's
                ``colourspace_in``.
            knobs: this request's knob values.

        Returns:
            A tensor for the first output, a mapping of output name to tensor, or a
            :class:`Prediction` that also carries result objects.
        """
        raise NotImplementedError(f"model {type(self).id!r} does not implement predict")

    def predict_batch(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> Sequence[torch.Tensor | Mapping[str, torch.Tensor] | Prediction]:
        """Compute several requests that share knob values and frame size, at once.

        Args:
            frames: one ``(N, C, H, W)`` batch of frames per input, by input name.
            knobs: the knob values all N requests share.

        Returns:
            N results, each of a form ``predict`` may return. The default runs ``predict`` on
            each request in turn; a model that declares ``max_batch_size`` above 1 overrides it
            to run the network once on the whole batch.
        """
        count = next(iter(frames.values())).shape[0] if frames else 0
        return [
            self.predict({name: batch[index] for name, batch in frames.items()}, knobs)
            for index in range(count)
        ]

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
        declared = _image_specs(cls.inputs, owner=owner, what="inputs")
        if any("@" in image.name for image in declared):
            raise ConfigError(f"{owner}: input names may not hold '@' (it marks neighbour frames)")
        optional = [image.name for image in declared if image.optional]
        trailing = declared[len(declared) - len(optional) :]
        if optional and not all(image.optional for image in trailing):
            raise ConfigError(
                f"{owner}: optional inputs ({', '.join(optional)}) must come after every "
                "required one"
            )
        window = _temporal_window(cls.temporal_window, owner=owner)
        inputs = _with_neighbours(declared, window)
        outputs = _image_specs(cls.outputs, owner=owner, what="outputs")
        if not outputs:
            raise ConfigError(f"{owner}: it must declare at least one output")
        for name in ("colourspace_in", "colourspace_out"):
            if not isinstance(getattr(cls, name), str) or not getattr(cls, name):
                raise ConfigError(f"{owner}: {name} must be a colourspace name")
        if not isinstance(cls.spatial, SpatialNeeds):
            raise ConfigError(f"{owner}: spatial must be a SpatialNeeds(...)")
        if not isinstance(cls.max_batch_size, int) or cls.max_batch_size < 1:
            raise ConfigError(f"{owner}: max_batch_size must be a whole number of at least 1")
        if not cls.batch_window_ms >= 0:
            raise ConfigError(f"{owner}: batch_window_ms must be 0 or more")
        scale = cls.output_scale
        if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 16:
            raise ConfigError(f"{owner}: output_scale must be a whole number in 1..16")
        timeout = cls.timeout_s
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise ConfigError(f"{owner}: timeout_s must be a number of seconds above 0 (or None)")
        memory = cls.memory_limit_mb
        if memory is not None and (
            isinstance(memory, bool) or not isinstance(memory, int) or memory < 1
        ):
            raise ConfigError(f"{owner}: memory_limit_mb must be a whole number of MiB (or None)")
        return ModelSpec(
            id=cls.id,
            label=str(cls.label or cls.id),
            description=str(cls.description or (cls.__doc__ or "").strip()),
            inputs=inputs,
            outputs=outputs,
            knobs=check_knob_specs(_as_tuple(cls.knobs, owner=owner, what="knobs"), owner=owner),
            colourspace_in=cls.colourspace_in,
            colourspace_out=cls.colourspace_out,
            spatial=cls.spatial,
            max_batch_size=cls.max_batch_size,
            batch_window_ms=float(cls.batch_window_ms),
            half_precision=bool(cls.half_precision),
            cacheable=bool(cls.cacheable),
            temporal_window=window,
            output_scale=scale,
            timeout_s=None if timeout is None else float(timeout),
            memory_limit_mb=memory,
            weights=check_weights(cls.weights, owner=owner),
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


def _temporal_window(window: object, *, owner: str) -> tuple[int, int]:
    if (
        not isinstance(window, tuple | list)
        or len(window) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 16 for n in window)
    ):
        raise ConfigError(
            f"{owner}: temporal_window must be (before, after), two whole numbers in 0..16"
        )
    return int(window[0]), int(window[1])


def _with_neighbours(
    inputs: tuple[ImageSpec, ...], window: tuple[int, int]
) -> tuple[ImageSpec, ...]:
    """Each declared input, then one input per neighbouring frame: ``NAME@-1``, ``NAME@+1``…"""
    before, after = window
    expanded: list[ImageSpec] = []
    for image in inputs:
        expanded.append(image)
        for offset in (*range(-before, 0), *range(1, after + 1)):
            expanded.append(
                ImageSpec(f"{image.name}@{offset:+d}", image.channels, optional=image.optional)
            )
    return tuple(expanded)
