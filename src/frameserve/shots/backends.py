"""Where a model runs: in this process or on a frameserve server, behind one protocol.

A :class:`Backend` describes a model (its :class:`~frameserve.plugin.model.ModelSpec`) and runs it
on one frame per input. :class:`LocalBackend` runs the registry's models in this process with
one shared :class:`~frameserve.engine.runner.Runner`; :class:`ServerBackend` sends each frame to a
frameserve HTTP server. ``frameserve run`` uses them, and so can any other command that needs
a model locally or on a server::

    backend = LocalBackend(ModelRegistry(), device="cuda")
    spec = backend.describe("blur")
    image = read_image("plate.1001.exr")
    outputs, objects = backend.infer("blur", {"image": image.hwc}, {"size": 4.0},
                                     colourspace=None)
    write_image("soft.1001.exr", outputs["image"], layout="HWC")

**Frames here are interleaved** (:data:`Frame`, ``(H, W, C)``): the order image files and the
HTTP wire use, so that the pixels cross from a file to a model and back with as few copies as
possible. Where bytes are copied:

- :class:`ServerBackend`: none on this side. The frame read from a file is sent from its own
  memory, the answer's frames are views of the response body, written as they are. (The
  server makes the one copy each way between the wire and the internal ``(C, H, W)`` form.)
- :class:`LocalBackend`: the frame goes to the runner as a ``(C, H, W)`` view
  (``torch.permute``, no copy); the runner makes it contiguous on its way to the model (the
  one copy in, none for a channels-last model), and the ``(C, H, W)`` outputs come back as
  ``(H, W, C)`` views that the writer makes interleaved (the one copy out).

Only :class:`ServerBackend` imports the HTTP client, and only when one is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ModelLoadError
from frameserve.plugin.knobs import KnobSpec, KnobValue, knob_from_description
from frameserve.plugin.model import ImageSpec, ModelSpec

__all__ = [
    "DEFAULT_SERVER_TIMEOUT",
    "DEFAULT_SERVER_WAIT",
    "Backend",
    "Frame",
    "LocalBackend",
    "ServerBackend",
    "knob_spec_from_config",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a :class:`ServerBackend` waits for one frame's answer unless told otherwise.
DEFAULT_SERVER_TIMEOUT = 600.0
#: Seconds a :class:`ServerBackend` waits for a server that went away (a restart) to come back.
DEFAULT_SERVER_WAIT = 120.0
#: First pause between two tries while the server is away; it doubles up to the last.
_WAIT_PAUSES = (0.5, 1.0, 2.0, 4.0, 5.0)

Frame = npt.NDArray[np.float32]
"""A frame as a backend takes and gives it: float32 ``(H, W, C)``, top row first (interleaved,
as files and the HTTP wire store it; possibly a view that is not C-contiguous)."""


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
        """Run ``model`` on one frame per input (float32 ``(H, W, C)``, by input name).

        Returns the output frames by name (float32 ``(H, W, C)``, maybe views that are not
        C-contiguous) and the result objects as JSON-friendly dicts
        (``{"name": ..., "records": [...]}``).
        """
        ...


class LocalBackend:
    """Runs models in this process: the registry's models, one shared :class:`Runner`.

    ::

        backend = LocalBackend(ModelRegistry(), device="cuda")
        outputs, objects = backend.infer("blur", {"image": hwc}, {"size": 4.0},
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
        """Run ``model`` in-process; see :meth:`Backend.infer`.

        The frames reach the runner as ``(C, H, W)`` views of the arrays given, without a
        copy; outputs come back as ``(H, W, C)`` views of the model's ``(C, H, W)`` results.
        """
        spec = self.describe(model)
        tensors = {
            declared.name: _planar_view(frames[declared.name])
            for declared in spec.inputs
            if declared.name in frames
        }
        request = build_request(
            spec, tensors, knobs, colourspace=colourspace, client="frameserve run", protocol="run"
        )
        result = self.runner.run(request)
        outputs = {
            name: tensor.numpy().transpose(1, 2, 0) for name, tensor in result.frames.items()
        }
        return outputs, [obj.to_data() for obj in result.objects]


class ServerBackend:
    """Sends each frame to a frameserve HTTP server with :class:`frameserve.client.Client`.

    Frames cross the wire as ``(H, W, C)``, the order a backend takes and gives them: no
    layout change on this side.

    ::

        backend = ServerBackend("http://render7:8000", timeout=600.0, token="fs_...")

    ``token``: the server's bearer token (``None``: ``$FRAMESERVE_TOKEN``, if set).

    **Riding out a restart.** When the server cannot be reached (connection refused or
    dropped), drops a request before answering it, or answers 503 (shutting down, a model's
    worker restarting), a frame is tried again, with pauses from 0.5 s up to 5 s, for up to
    ``wait`` seconds from the first failure; the backend logs once that it is waiting and once
    that the server is back. Inference is repeatable, so trying a frame again is safe. A
    frame that times out (``timeout``: the server is there but slow) is not tried again.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_SERVER_TIMEOUT,
        retries: int = 2,
        token: str | None = None,
        wait: float = DEFAULT_SERVER_WAIT,
    ) -> None:
        from frameserve.client import Client  # only a server run needs the HTTP client

        self.url = url
        self.wait = wait
        self._client = Client(url, timeout=timeout, retries=retries, token=token)
        self._away_since: float | None = None  # when the server went away, while it is away
        self._lock = threading.Lock()

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
            colourspace_in=info.colourspace_in,
            colourspace_out=info.colourspace_out,
        )

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` on the server; see :meth:`Backend.infer`.

        A C-contiguous float32 frame is sent from its own memory; the output frames are views
        of the answer's body.
        """
        from frameserve.client import InferResult

        values = cast("Mapping[str, KnobValue]", knobs)  # checked by the knob specs

        def call() -> InferResult:
            return self._client.infer(model, dict(frames), knobs=values, colourspace=colourspace)

        result = self._riding_out(call)
        outputs = {name: _float32(frame) for name, frame in result.frames.items()}
        return outputs, [dict(obj) for obj in result.objects]

    def _riding_out(self, call: Callable[[], T]) -> T:
        """Return ``call()``, trying again while the server is away, up to ``wait`` seconds."""
        from frameserve.client import RequestTimeout, ServiceUnavailableError, TransportError

        pauses = iter(_WAIT_PAUSES)
        pause = next(pauses)
        while True:
            try:
                answer = call()
            except (TransportError, ServiceUnavailableError) as exc:
                if isinstance(exc, RequestTimeout):
                    raise
                away = self._went_away(exc)
                left = away + self.wait - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(pause, left))
                pause = next(pauses, pause)
                continue
            self._came_back()
            return answer

    def _went_away(self, exc: Exception) -> float:
        with self._lock:
            if self._away_since is None:
                self._away_since = time.monotonic()
                log.warning(
                    "server %s is away (%s); waiting up to %g s for it to come back (--wait)",
                    self.url,
                    exc,
                    self.wait,
                )
            return self._away_since

    def _came_back(self) -> None:
        with self._lock:
            if self._away_since is not None:
                log.warning(
                    "server %s is back after %.1f s; carrying on",
                    self.url,
                    time.monotonic() - self._away_since,
                )
                self._away_since = None

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


def _planar_view(frame: Frame) -> torch.Tensor:
    """A ``(C, H, W)`` tensor viewing an ``(H, W, C)`` frame: no copy, unless the array is
    not float32, is read-only or runs backwards (torch shares none of those)."""
    array = np.asarray(frame, dtype=np.float32)
    if not array.flags.writeable or any(stride < 0 for stride in array.strides):
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


def _float32(frame: npt.NDArray[Any]) -> Frame:
    """An answer's frame as float32 ``(H, W, C)``: the same array when it already is one."""
    array = frame[:, :, np.newaxis] if frame.ndim == 2 else frame
    return array if array.dtype == np.float32 else array.astype(np.float32)


def knob_spec_from_config(config: Mapping[str, Any]) -> KnobSpec:
    """Return the knob spec a server describes as ``config`` (``KnobSpec.describe()`` data).

    See :func:`~frameserve.plugin.knobs.knob_from_description`: a knob type this version does
    not know becomes a :class:`~frameserve.plugin.knobs.StringKnob`.
    """
    return knob_from_description(config)
