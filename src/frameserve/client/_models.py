"""What the client returns: a model's description and an inference result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from frameserve.client._exceptions import ProtocolViolation

__all__ = ["InferResult", "ModelInfo", "model_info_from"]


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """One model the server knows, as its config and the repository index describe it.

    ::

        info = client.model("blur")
        info.inputs   # (("image", 3),)
        [k["name"] for k in info.knobs]  # ['size', 'edges', 'brightest']

    Attributes:
        name: the model's name in URLs.
        label: its human name ("" if the model did not load).
        description: one paragraph on what it does.
        version: its version ("1").
        state: ``"READY"``, or ``"UNAVAILABLE"`` when it failed to load (see ``reason``).
        reason: why it is unavailable ("" when ready).
        inputs: ``(name, channels)`` of each input frame, in order.
        outputs: ``(name, channels)`` of each output frame, in order.
        knobs: the knob specs as the config endpoint gives them (``name``, ``type``,
            ``default``, and ``min``, ``max``, ``choices``, ``help`` where they apply).
        colourspace_in, colourspace_out: the colourspaces the model works in (``"data"``
            out: its outputs are values such as vectors, never colour-converted).
    """

    name: str
    label: str = ""
    description: str = ""
    version: str = "1"
    state: str = "READY"
    reason: str = ""
    inputs: tuple[tuple[str, int], ...] = ()
    outputs: tuple[tuple[str, int], ...] = ()
    knobs: tuple[dict[str, Any], ...] = ()
    colourspace_in: str = "scene_linear"
    colourspace_out: str = "scene_linear"

    @property
    def ready(self) -> bool:
        """Whether the model loaded and can serve."""
        return self.state == "READY"

    @property
    def input_names(self) -> tuple[str, ...]:
        """The names of the inputs, in order."""
        return tuple(name for name, _ in self.inputs)


@dataclass(frozen=True, kw_only=True, eq=False)
class InferResult:
    """What one inference returned.

    ::

        result = client.infer("blur", frame, knobs={"size": 4.0, "brightest": True})
        result.frames["image"]     # (H, W, 3) float32, top row first
        result.objects[0]["name"]  # 'PythonScript'

    Attributes:
        frames: every output frame by name, ``(H, W, C)`` (``(N, H, W, C)`` for a batch),
            float32 unless another output datatype was asked for. Binary answers give views
            of the one buffer the answer was read into (writable, no copy).
        objects: the result objects (``{"name": ..., "records": [...]}``) from the ``BYTES``
            output named ``objects``; empty when the model reported none.
        model_name: the model that answered.
        model_version: its version.
        id: the request id the server echoed ("" if none was sent).
    """

    frames: dict[str, npt.NDArray[Any]]
    objects: list[dict[str, Any]] = field(default_factory=list)
    model_name: str = ""
    model_version: str = ""
    id: str = ""

    @property
    def frame(self) -> npt.NDArray[Any]:
        """The only output frame (for single-output models).

        Raises:
            ValueError: the model returned another number of frames.
        """
        if len(self.frames) != 1:
            names = ", ".join(self.frames) or "none"
            raise ValueError(f"the result has {len(self.frames)} frames ({names}), not one")
        return next(iter(self.frames.values()))


def model_info_from(
    name: str,
    *,
    config: Mapping[str, Any] | None = None,
    index_entry: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Build a :class:`ModelInfo` from a config answer and/or a repository index entry.

    Raises:
        ProtocolViolation: a field has the wrong type.
    """
    config = config or {}
    entry = index_entry or {}
    try:
        inputs = _frames(config.get("inputs", ()))
        outputs = _frames(config.get("outputs", ()))
        knobs = tuple(dict(k) for k in config.get("knobs", ()))
    except (TypeError, ValueError, KeyError) as exc:
        raise ProtocolViolation(f"model {name!r}: its config cannot be read: {exc}") from exc
    state = str(entry.get("state") or config.get("state") or "READY")
    return ModelInfo(
        name=str(config.get("name") or entry.get("name") or name),
        label=str(config.get("label") or ""),
        description=str(config.get("description") or ""),
        version=str(entry.get("version") or config.get("version") or "1"),
        state=state,
        reason=str(entry.get("reason") or config.get("reason") or ""),
        inputs=inputs,
        outputs=outputs,
        knobs=knobs,
        colourspace_in=str(config.get("colourspace_in") or "scene_linear"),
        colourspace_out=str(config.get("colourspace_out") or "scene_linear"),
    )


def _frames(items: object) -> tuple[tuple[str, int], ...]:
    """``(name, channels)`` of each ``{"name": ..., "channels": C}`` or ``shape [-1, -1, C]``."""
    if not isinstance(items, list | tuple):
        raise TypeError(f"expected a list of inputs or outputs, got {items!r:.100}")
    found = []
    for item in items:
        channels = item["channels"] if "channels" in item else item["shape"][-1]
        found.append((str(item["name"]), int(channels)))
    return tuple(found)
