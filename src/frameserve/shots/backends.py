"""Where a model runs: in this process or on a frameserve server, behind one protocol.

A :class:`Backend` describes a model (its :class:`~frameserve.plugin.model.ModelSpec`) and runs it
on one frame per input. :class:`LocalBackend` runs the registry's models in this process with
one shared :class:`~frameserve.engine.runner.Runner`; :class:`ServerBackend` sends each frame to a
frameserve HTTP server. ``frameserve run`` uses them, and so can any other command that needs
a model locally or on a server::

    backend = LocalBackend(ModelRegistry(), device="cuda")
    spec = backend.describe("blur")
    outputs, objects = backend.infer("blur", {"image": frame}, {"size": 4.0}, colourspace=None)

Frames here are numpy arrays in the internal form (:data:`Frame`). Only
:class:`ServerBackend` imports the HTTP client, and only when one is made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ConfigError, ModelLoadError
from frameserve.plugin.knobs import (
    BoolKnob,
    ButtonKnob,
    ChoiceKnob,
    FloatKnob,
    IntKnob,
    KnobSpec,
    KnobValue,
    StringKnob,
)
from frameserve.plugin.model import ImageSpec, ModelSpec

__all__ = [
    "Backend",
    "Frame",
    "LocalBackend",
    "ServerBackend",
    "knob_spec_from_config",
]

log = logging.getLogger(__name__)

Frame = npt.NDArray[np.float32]
"""A frame in the internal form, as numpy: float32 ``(C, H, W)``, top row first."""


class Backend(Protocol):
    """Where a run's frames are computed; the run loop is the same for every backend."""

    def describe(self, model: str) -> ModelSpec:
        """Return the declaration of ``model`` (inputs, outputs and knob specs)."""
        ...

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` on one frame per input (float32 ``(C, H, W)``, by input name).

        Returns the output frames by name (float32 ``(C, H, W)``) and the result objects as
        JSON-friendly dicts (``{"name": ..., "records": [...]}``).
        """
        ...


class LocalBackend:
    """Runs models in this process: the registry's models, one shared :class:`Runner`.

    ::

        backend = LocalBackend(ModelRegistry(), device="cuda")
        outputs, objects = backend.infer("blur", {"image": frame}, {"size": 4.0},
                                         colourspace=None)
    """

    def __init__(self, registry: ModelRegistry, *, device: str = "cpu") -> None:
        self.registry = registry
        self.runner = Runner(registry, device=device)  # thread-safe: shared by every job

    def describe(self, model: str) -> ModelSpec:
        """Return the declaration of ``model``; raise :class:`ModelNotFoundError`."""
        return self.registry.get(model).spec

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` in-process; see :meth:`Backend.infer`."""
        spec = self.describe(model)
        tensors = {
            declared.name: torch.from_numpy(frames[declared.name])
            for declared in spec.inputs
            if declared.name in frames
        }
        request = build_request(
            spec, tensors, knobs, colourspace=colourspace, client="frameserve run", protocol="run"
        )
        result = self.runner.run(request)
        outputs = {name: tensor.numpy() for name, tensor in result.frames.items()}
        return outputs, [obj.to_data() for obj in result.objects]


class ServerBackend:
    """Sends each frame to a frameserve HTTP server with :class:`frameserve.client.Client`.

    Frames cross the wire as ``(H, W, C)``; they are converted from and to the internal
    ``(C, H, W)`` form here, at the boundary.

    ::

        backend = ServerBackend("http://render7:8000", timeout=600.0)
    """

    def __init__(self, url: str, *, timeout: float = 600.0, retries: int = 2) -> None:
        from frameserve.client import Client  # only a server run needs the HTTP client

        self.url = url
        self._client = Client(url, timeout=timeout, retries=retries)

    def describe(self, model: str) -> ModelSpec:
        """Ask the server for the declaration of ``model``."""
        info = self._client.model(model)
        if not info.ready:
            raise ModelLoadError(f"model {model!r} failed to load on {self.url}: {info.reason}")
        return ModelSpec(
            id=info.name,
            label=info.label,
            description="",
            inputs=tuple(ImageSpec(name, channels) for name, channels in info.inputs),
            outputs=tuple(ImageSpec(name, channels) for name, channels in info.outputs),
            knobs=tuple(knob_spec_from_config(config) for config in info.knobs),
        )

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` on the server; see :meth:`Backend.infer`."""
        hwc = {
            name: np.ascontiguousarray(frame.transpose(1, 2, 0)) for name, frame in frames.items()
        }
        values = cast("Mapping[str, KnobValue]", knobs)  # checked by the knob specs
        result = self._client.infer(model, hwc, knobs=values, colourspace=colourspace)
        outputs = {
            name: np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32)
            for name, frame in result.frames.items()
        }
        return outputs, [dict(obj) for obj in result.objects]

    def close(self) -> None:
        """Close the client's connections."""
        close = getattr(self._client, "close", None)
        if close is not None:
            close()


_KNOB_TYPES: dict[str, type[KnobSpec]] = {
    "bool": BoolKnob,
    "button": ButtonKnob,
    "int": IntKnob,
    "float": FloatKnob,
    "string": StringKnob,
    "choice": ChoiceKnob,
}


def knob_spec_from_config(config: Mapping[str, Any]) -> KnobSpec:
    """Return the knob spec a server describes as ``config`` (``KnobSpec.describe()`` data).

    A knob type this version does not know becomes a :class:`StringKnob`: its ``--knob`` text
    is sent as it is and the server validates it.

    Raises:
        ConfigError: the description lacks a name, or its values do not make a valid spec.
    """
    name = config.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"the server described a knob without a name: {dict(config)!r}")
    kind = str(config.get("type", ""))
    options: dict[str, Any] = {"help": str(config.get("help") or "")}
    options["label"] = str(config.get("label") or "")
    cls = _KNOB_TYPES.get(kind)
    if cls is None:
        log.warning("knob %r has type %r, unknown here; its value is sent as text", name, kind)
        return StringKnob(name, default="", **options)
    if "default" in config and config["default"] is not None:
        options["default"] = config["default"]
    if cls in (IntKnob, FloatKnob):
        options["min"] = config.get("min")
        options["max"] = config.get("max")
    if cls is ChoiceKnob:
        options["choices"] = tuple(config.get("choices") or ())
    return cls(name, **options)
