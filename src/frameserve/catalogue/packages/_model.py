"""The model class generated for each package: the engine runs it like any Python plug-in.

:func:`load_package_classes` reads a package's manifest and returns one :class:`Model`
subclass whose class attributes are the manifest's declarations, so the whole engine — knob
checks, colour, padding and tiles, batches, half precision, the cache, memory budgets —
applies unchanged. The network loads in ``setup(device)``, never at listing time.

What ``predict_batch`` does with one batch of ``(N, C, H, W)`` frames, in this order:

1. each image input keeps the channels its ``use`` lists; with a ``temporal_window`` the
   neighbouring frames are stacked along the channels, oldest first
   (``image@-1, image, image@+1``);
2. knobs fed as ``gain`` multiply, and knobs fed as ``offset`` are added to, their image input,
   in manifest order (skipped at 1 and 0; never in place: frames may be shared);
3. inputs with ``normalise = true`` are mapped linearly from 0..1 onto their ``range``;
4. inputs with a ``range`` are compared with it: the first time a loaded model gets values
   outside it, a WARNING names the input and the values; values are never clipped;
5. the network runs, with knobs fed as ``input`` as scalar tensors (``float32`` for float
   knobs, ``int64`` for int knobs and for the index of a choice, ``bool`` for bool knobs and
   buttons) and knobs fed as ``attribute`` set on the TorchScript module first, under a lock
   held until the network returns, so that concurrent requests never see each other's values
   (requests to such a model run one at a time);
6. each output is checked: ``(N, channels, H x output_scale, W x output_scale)`` (a
   :class:`~frameserve.errors.ModelRunError` gives the expected and the actual shape), keeps
   the channels its ``use`` lists and, with ``normalise = true``, is mapped from its ``range``
   back onto 0..1.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import torch

from frameserve.catalogue.packages._manifest import read_manifest
from frameserve.catalogue.packages._networks import Network, TorchScriptNetwork, load_network
from frameserve.catalogue.packages._schema import MANIFEST_FILE, InputDecl, KnobDecl, Manifest
from frameserve.errors import ConfigError, ModelLoadError, ModelRunError
from frameserve.plugin.knobs import KnobValue, KnobValues
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, Prediction

__all__ = ["PackageModel", "load_package_classes", "model_class"]

log = logging.getLogger(__name__)

#: The dtype of the scalar tensor a network input gets for a knob's number form.
_SCALAR_DTYPES: Mapping[type, torch.dtype] = {
    bool: torch.bool,
    int: torch.int64,
    float: torch.float32,
}


def load_package_classes(folder: Path) -> list[type[Model]]:
    """Return the model classes of the package in ``folder`` (one: the folder's ``model.toml``).

    Cheap enough for listing and reloading: it reads the manifest and checks that the network
    file exists; the network loads in the class's ``setup``.

    ::

        [cls] = load_package_classes(Path("studio_models/soften"))
        cls.spec().id, cls.version          # ("soften", "1.0.0")

    Raises:
        ModelLoadError: the manifest is missing or wrong (the message names the file, the key
            and what is allowed), or the network file is missing.
    """
    manifest = read_manifest(Path(folder) / MANIFEST_FILE)
    cls = model_class(manifest)
    try:
        cls.spec()
    except ConfigError as exc:
        raise ModelLoadError(f"{manifest.path}: {exc}") from None
    return [cls]


def model_class(manifest: Manifest) -> type[PackageModel]:
    """Return a new :class:`PackageModel` subclass declaring what ``manifest`` declares."""
    name = "Package_" + re.sub(r"\W", "_", manifest.id)
    attributes: dict[str, Any] = {
        "__doc__": manifest.description
        or f"{manifest.label}: a model package ({manifest.network.name}).",
        "__module__": __name__,
        "__qualname__": name,
        "id": manifest.id,
        "label": manifest.label,
        "description": manifest.description,
        "inputs": tuple(ImageSpec(i.name, i.channels) for i in manifest.inputs),
        "outputs": tuple(ImageSpec(o.name, o.channels) for o in manifest.outputs),
        "knobs": tuple(k.spec for k in manifest.knobs),
        "colourspace_in": manifest.colourspace_in,
        "colourspace_out": manifest.colourspace_out,
        "spatial": manifest.spatial,
        "max_batch_size": manifest.max_batch_size,
        "batch_window_ms": manifest.batch_window_ms,
        "timeout_s": manifest.timeout_s,
        "memory_limit_mb": manifest.memory_limit_mb,
        "weights": _weights(manifest),
        "half_precision": manifest.half_precision,
        "cacheable": manifest.cacheable,
        "temporal_window": manifest.temporal_window,
        "manifest": manifest,
        "version": manifest.version,
        "output_scale": manifest.output_scale,
    }
    return cast("type[PackageModel]", type(name, (PackageModel,), attributes))


def _weights(manifest: Manifest) -> tuple[WeightsLicence, ...] | None:
    """The package's weights declaration: undeclared unless it says ``commercial_use``."""
    if manifest.commercial_use is None:
        return None
    return (
        WeightsLicence(
            name=f"{manifest.label} ({manifest.network.name})",
            licence=manifest.licence or "not stated",
            source=manifest.author or str(manifest.path),
            commercial=manifest.commercial_use,
        ),
    )


class PackageModel(Model):
    """A model declared by a package's manifest; ``predict_batch`` runs its network file.

    Class attributes (besides those of :class:`~frameserve.plugin.model.Model`):
        manifest: the checked manifest.
        version: the package's version.
        output_scale: outputs are this many times the input's width and height.
    """

    manifest: ClassVar[Manifest]
    version: ClassVar[str] = "1"
    output_scale: ClassVar[int] = 1

    def setup(self, device: torch.device) -> None:
        """Load the network onto ``device`` and check it takes what the manifest feeds it.

        Raises:
            ModelLoadError: the file cannot be loaded, or its inputs or attributes do not
                match the manifest (the message lists the network's inputs).
        """
        manifest = self.manifest
        try:
            runtime = load_network(manifest.network, manifest.network_format, device)
        except Exception as exc:
            raise ModelLoadError(
                f"{manifest.path}: cannot load network {manifest.network.name!r} "
                f"({manifest.network_format}): {type(exc).__name__}: {exc}"
            ) from exc
        _check_inputs(manifest, runtime)
        self._attribute_types = _check_attributes(manifest, runtime)
        self.runtime = runtime
        if runtime.module is not None:
            self.network = runtime.module  # the engine converts (half) and measures modules
        self.device = device
        self._attribute_lock = threading.Lock()
        self._warned_ranges: set[str] = set()

    def predict(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> torch.Tensor | Mapping[str, torch.Tensor] | Prediction:
        """Run one request (the engine calls :meth:`predict_batch`; this is for direct use)."""
        [result] = self.predict_batch({name: f[None] for name, f in frames.items()}, knobs)
        return result

    def predict_batch(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> Sequence[torch.Tensor | Mapping[str, torch.Tensor] | Prediction]:
        """Run the network once on ``(N, C, H, W)`` frames; return N results (see the module).

        Raises:
            ModelRunError: the network returned the wrong number of tensors, or a tensor of
                the wrong shape (expected and actual shapes in the message).
        """
        manifest = self.manifest
        first = frames[manifest.inputs[0].name]
        count, height, width = int(first.shape[0]), int(first.shape[-2]), int(first.shape[-1])
        arguments = self.network_arguments(frames, knobs)
        attributes = manifest.feeds("attribute")
        lock = self._attribute_lock if attributes else contextlib.nullcontext()
        with lock:
            if attributes:
                assert isinstance(self.runtime, TorchScriptNetwork)
                for knob in attributes:
                    kind = self._attribute_types[knob.target]
                    self.runtime.set_attribute(knob.target, kind(knobs[knob.spec.name]))
            raw = self.runtime.run(arguments)
        outputs = self.model_outputs(raw, count, height, width)
        return [{name: tensor[index] for name, tensor in outputs.items()} for index in range(count)]

    def network_arguments(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> dict[str, torch.Tensor]:
        """Return the network's inputs by name for ``frames`` and ``knobs`` (steps 1-4)."""
        manifest = self.manifest
        images = {
            decl.name: _image_input(decl, frames, manifest.temporal_window)
            for decl in manifest.inputs
        }
        for knob in manifest.knobs:
            value = knobs[knob.spec.name]
            if knob.feed == "gain" and value != 1:
                images[knob.target] = images[knob.target] * float(value)
            elif knob.feed == "offset" and value != 0:
                images[knob.target] = images[knob.target] + float(value)
        arguments: dict[str, torch.Tensor] = {}
        for decl in manifest.inputs:
            image = images[decl.name]
            if decl.normalise and decl.range is not None and decl.range != (0.0, 1.0):
                low, high = decl.range
                image = image * (high - low) + low
            if decl.range is not None and decl.name not in self._warned_ranges:
                self._check_range(decl, image)
            arguments[decl.tensor] = image
        for knob in manifest.feeds("input"):
            arguments[knob.target] = _scalar(knob, knobs[knob.spec.name], _first_device(frames))
        return arguments

    def model_outputs(
        self, raw: list[torch.Tensor], count: int, height: int, width: int
    ) -> dict[str, torch.Tensor]:
        """Check the network's tensors against the declared outputs; keep channels, map ranges.

        Raises:
            ModelRunError: a wrong number of tensors, or a tensor of the wrong shape or type.
        """
        manifest = self.manifest
        declared = manifest.outputs
        if len(raw) != len(declared):
            names = ", ".join(repr(o.name) for o in declared)
            raise ModelRunError(
                f"model {manifest.id!r}: the network returned {len(raw)} tensor(s); the "
                f"manifest declares {len(declared)} output(s) ({names}), one tensor each, in order"
            )
        scale = manifest.output_scale
        outputs: dict[str, torch.Tensor] = {}
        for index, (decl, tensor) in enumerate(zip(declared, raw, strict=True)):
            need = decl.channels if decl.use is None else max(decl.use) + 1
            got = tuple(int(n) for n in tensor.shape)
            size = (height * scale, width * scale)
            fits = len(got) == 4 and got[0] == count and got[2:] == size
            fits = fits and (got[1] == need if decl.use is None else got[1] >= need)
            if not fits:
                channels = str(need) if decl.use is None else f">={need}"
                scaled = "" if scale == 1 else f" (output_scale {scale})"
                raise ModelRunError(
                    f"model {manifest.id!r}: output {decl.name!r} (network output {index}): "
                    f"expected shape ({count}, {channels}, {size[0]}, {size[1]}){scaled} for "
                    f"inputs of {height}x{width} pixels, got {got}"
                )
            if not tensor.is_floating_point():
                raise ModelRunError(
                    f"model {manifest.id!r}: output {decl.name!r} is {tensor.dtype}; expected "
                    "floating-point values"
                )
            if decl.use is not None:
                tensor = _channels(tensor, decl.use, got[1])
            if decl.normalise and decl.range is not None and decl.range != (0.0, 1.0):
                low, high = decl.range
                tensor = (tensor - low) / (high - low)
            outputs[decl.name] = tensor
        return outputs

    def _check_range(self, decl: InputDecl, image: torch.Tensor) -> None:
        assert decl.range is not None
        if image.numel() == 0:
            return
        smallest, largest = (float(v) for v in torch.aminmax(image))
        low, high = decl.range
        if smallest < low or largest > high:
            self._warned_ranges.add(decl.name)
            log.warning(
                "model %s: input %r reaches %.4g..%.4g, outside the range %g..%g its network "
                "expects; the values are passed on unchanged (never clipped). This warning is "
                "given once per loaded model.",
                self.manifest.id,
                decl.name,
                smallest,
                largest,
                low,
                high,
            )


def _first_device(frames: Mapping[str, torch.Tensor]) -> torch.device:
    """Return the device the frames are on."""
    return next(iter(frames.values())).device


def _image_input(
    decl: InputDecl, frames: Mapping[str, torch.Tensor], window: tuple[int, int]
) -> torch.Tensor:
    """Return what the network gets for image input ``decl``: its used channels, stacked."""
    before, after = window
    names = [
        f"{decl.name}@{offset:+d}" if offset else decl.name for offset in range(-before, after + 1)
    ]
    parts = [_channels(frames[name], decl.use, decl.channels) for name in names]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _channels(frames: torch.Tensor, use: Sequence[int], channels: int) -> torch.Tensor:
    """Return channels ``use`` of ``(N, C, H, W)`` frames: the frames, a view or a copy."""
    first = use[0]
    if list(use) == list(range(first, first + len(use))):
        return frames if len(use) == channels else frames[:, first : first + len(use)]
    return frames.index_select(1, torch.tensor(list(use), device=frames.device))


def _scalar(knob: KnobDecl, value: KnobValue, device: torch.device) -> torch.Tensor:
    """Return a knob value as the scalar tensor a network input gets (its number form)."""
    number = knob.spec.as_number(value)
    return torch.tensor(number, dtype=_SCALAR_DTYPES[type(number)], device=device)


def _check_inputs(manifest: Manifest, runtime: Network) -> None:
    """Each network input is fed by the manifest, and everything fed is a network input."""
    fed: dict[str, str] = {}
    for index, image in enumerate(manifest.inputs):
        fed[image.tensor] = f"inputs[{index}] ({image.name!r}; set its tensor key)"
    for index, knob in enumerate(manifest.knobs):
        if knob.feed == "input":
            fed[knob.target] = f"knobs[{index}] ({knob.spec.name!r}; set its target key)"
    known = ", ".join(repr(n) for n in runtime.input_names) or "none"
    for tensor, where in fed.items():
        if tensor not in runtime.input_names:
            raise ModelLoadError(
                f"{manifest.path}: {where} feeds network input {tensor!r}, which "
                f"{manifest.network.name!r} does not have; its inputs are: {known}"
            )
    for name in runtime.input_names:
        if name not in fed and name not in runtime.optional_inputs:
            raise ModelLoadError(
                f"{manifest.path}: network input {name!r} of {manifest.network.name!r} is fed "
                f"by nothing; expected an [[inputs]] item with tensor = {name!r} or a knob with "
                f"feed = 'input' and target = {name!r}"
            )
    window = sum(manifest.temporal_window) + 1
    for index, image in enumerate(manifest.inputs):
        declared = runtime.input_shape(image.tensor)
        channels = len(image.use) * window
        if declared is None:
            continue
        shape = "[" + ", ".join("?" if d is None else str(d) for d in declared) + "]"
        if len(declared) != 4 or declared[1] not in (None, channels):
            raise ModelLoadError(
                f"{manifest.path}: inputs[{index}] ({image.name!r}) feeds network input "
                f"{image.tensor!r} (N, {channels}, H, W) frames; the network expects {shape}"
            )
        if declared[0] not in (None, 1) or (declared[0] == 1 and manifest.max_batch_size > 1):
            raise ModelLoadError(
                f"{manifest.path}: network input {image.tensor!r} has a fixed batch size "
                f"({shape}); expected a free batch dimension, or max_batch_size = 1 and a "
                "batch dimension of 1"
            )


def _check_attributes(manifest: Manifest, runtime: Network) -> dict[str, type]:
    """Return the Python type of each module attribute a knob sets; check that it can."""
    types: dict[str, type] = {}
    for knob in manifest.feeds("attribute"):
        assert isinstance(runtime, TorchScriptNetwork)  # the manifest allows no other
        found = runtime.attribute_type(knob.target)
        accepted = knob.spec.value_types
        if found is None or found not in accepted:
            what = "has no such attribute" if found is None else f"holds a {found.__name__}"
            allowed = " or ".join(t.__name__ for t in accepted)
            raise ModelLoadError(
                f"{manifest.path}: knob {knob.spec.name!r} (feed = 'attribute') sets module "
                f"attribute {knob.target!r}, but the module {what}; a {knob.spec.kind} knob "
                f"sets a {allowed} attribute of a scripted module"
            )
        types[knob.target] = found
    return types
