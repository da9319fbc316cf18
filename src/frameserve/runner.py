"""Running one request on a model: instances, setup on first use, device, output checks.

The runner decides *where* a request runs; the scheduler decides *when*. It keeps one instance
per model, runs ``setup`` once on first use (never at start-up), moves frames to the device,
calls ``predict`` under ``torch.inference_mode`` and checks that what came back is what the
model declares, so front doors can trust results as they trust requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import torch

from frameserve.colour import ColourManager, default_manager
from frameserve.errors import FrameError, FrameServeError, ModelRunError, ModelSetupError
from frameserve.frames import check_frame
from frameserve.model import Model, ModelSpec, Prediction
from frameserve.objects import ResultObject
from frameserve.registry import ModelRegistry
from frameserve.request import InferenceRequest, InferenceResult

__all__ = ["Runner"]

log = logging.getLogger(__name__)


class Runner:
    """Runs requests on the models of a registry, on one device.

    Frames are converted from the request's colourspace to the one the model declares, and its
    outputs back, with ``colour`` (the default OpenColorIO config unless given).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        device: str | torch.device = "cpu",
        colour: ColourManager | None = None,
    ) -> None:
        self.registry = registry
        self.device = torch.device(device)
        self._colour = colour
        self._instances: dict[str, Model] = {}
        self._lock = threading.Lock()
        self._setup_locks: dict[str, threading.Lock] = {}

    def run(self, request: InferenceRequest) -> InferenceResult:
        """Run ``request``; raise :class:`ModelError` subclasses when the model fails."""
        entry = self.registry.get(request.model_id)
        assert entry.spec is not None
        spec = entry.spec
        model = self._instance(entry.id)
        frames = {
            name: self._convert(t, request.colourspace, spec.colourspace_in).to(self.device)
            for name, t in request.frames.items()
        }
        try:
            with torch.inference_mode():
                raw = model.predict(frames, request.knobs)
        except FrameServeError:
            raise
        except Exception as exc:
            log.exception("model %s raised while predicting", entry.id)
            raise ModelRunError(f"model {entry.id!r} failed: {type(exc).__name__}: {exc}") from exc
        result = _checked_result(spec, raw)
        converted = {
            name: self._convert(frame, spec.colourspace_out, request.colourspace)
            for name, frame in result.frames.items()
        }
        return InferenceResult(frames=converted, objects=result.objects)

    @property
    def colour(self) -> ColourManager:
        """The colour configuration conversions use (the default one, loaded on first use)."""
        if self._colour is None:
            self._colour = default_manager()
        return self._colour

    def _convert(self, frame: torch.Tensor, source: str, target: str) -> torch.Tensor:
        if source == target:
            return frame  # the common case needs no colour configuration at all
        return self.colour.convert(frame, source, target)

    def loaded_models(self) -> list[str]:
        """Return the ids of the models whose setup has run."""
        with self._lock:
            return list(self._instances)

    def _instance(self, model_id: str) -> Model:
        with self._lock:
            model = self._instances.get(model_id)
            if model is not None:
                return model
            setup_lock = self._setup_locks.setdefault(model_id, threading.Lock())
        with setup_lock:  # one setup per model; other models keep running meanwhile
            with self._lock:
                model = self._instances.get(model_id)
            if model is not None:
                return model
            model = self._set_up(model_id)
            with self._lock:
                self._instances[model_id] = model
            return model

    def _set_up(self, model_id: str) -> Model:
        entry = self.registry.get(model_id)
        assert entry.model_class is not None
        log.info("setting up model %s on %s", model_id, self.device)
        try:
            model = entry.model_class()
            with torch.inference_mode():
                model.setup(self.device)
        except Exception as exc:
            log.exception("model %s failed its setup", model_id)
            raise ModelSetupError(
                f"model {model_id!r} failed to set up: {type(exc).__name__}: {exc}"
            ) from exc
        return model


def _checked_result(spec: ModelSpec, raw: object) -> InferenceResult:
    """Normalise what ``predict`` returned and check it against the declared outputs."""
    objects: tuple[ResultObject, ...] = ()
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
    declared = {o.name: o for o in spec.outputs}
    unknown = [name for name in frames_out if name not in declared]
    if unknown:
        raise ModelRunError(
            f"model {spec.id!r} returned an undeclared output {unknown[0]!r}; "
            f"declared: {', '.join(declared)}"
        )
    frames: dict[str, torch.Tensor] = {}
    for output in spec.outputs:
        if output.name not in frames_out:
            continue
        what = f"output {output.name!r} of model {spec.id!r}"
        tensor = frames_out[output.name]
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            tensor = tensor.to("cpu", torch.float32)
        try:
            tensor = check_frame(tensor, what=what)
        except FrameError as exc:  # the model's fault, not the client's
            raise ModelRunError(str(exc)) from None
        if tensor.shape[0] != output.channels:
            raise ModelRunError(
                f"{what} has {tensor.shape[0]} channel(s); the model declares {output.channels}"
            )
        frames[output.name] = tensor
    if spec.outputs[0].name not in frames:
        raise ModelRunError(f"model {spec.id!r} returned no {spec.outputs[0].name!r} output")
    for obj in objects:
        if not isinstance(obj, ResultObject):
            raise ModelRunError(f"model {spec.id!r} returned an object that is not a ResultObject")
    return InferenceResult(frames=frames, objects=objects)
