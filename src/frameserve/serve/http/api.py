"""The Open Inference Protocol v2 endpoints: a :class:`Route` of the HTTP door.

Health, server and model metadata, the model repository, metrics and inference. This module
only translates: paths and JSON become calls to the :class:`~frameserve.engine.engine.Engine`,
tensors become frames (:mod:`frameserve.serve.http.tensors`) handed to
:func:`~frameserve.engine.request.build_request`, which checks the inputs and knobs exactly as
for the MLClient door, and results go back as JSON and tensors. ``docs/http-api.md`` is the
user's guide.

Every model path also exists under ``/v2/models/{name}/versions/{version}/...``: that version,
where the plain path means the newest. Requests are built from the exact registry entry, so a
model reloaded while one runs never mixes versions into it.

**Roles** (:meth:`InferenceApi.required_role`, checked by the router when the server has
tokens): an ``artist`` may ask everything about models and run them; ``GET /metrics`` needs
``td`` (it shows who uses what and how much, which is a TD's business, and changes nothing);
``POST /v2/repository/models/{name}/load`` needs ``admin`` (it changes what every user is
served): it loads the model folders that were added or changed since the last look, as the hot
reload does on its timer, clears the model's failed state if its worker died too often, and
answers the model's state.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from frameserve import __version__
from frameserve.catalogue.entries import ModelEntry
from frameserve.engine.engine import Engine
from frameserve.engine.limits import (
    DEFAULT_MAX_BATCH_FRAMES,
    DEFAULT_MAX_FRAME_PIXELS,
    request_bytes_limit,
)
from frameserve.engine.request import InferenceResult, Priority, build_request
from frameserve.errors import FrameError, FrameServeError, ProtocolError
from frameserve.plugin.licences import cleared_for_commercial_use, describe_weights
from frameserve.plugin.model import ModelSpec
from frameserve.serve.auth.users import Role
from frameserve.serve.http.routes import SMALL_BODY, Route, error_response, json_response, only
from frameserve.serve.http.status import status_for
from frameserve.serve.http.tensors import (
    OutputTensor,
    binary_header,
    frames_from_tensor,
    parse_infer_body,
    tensor_from_frames,
)
from frameserve.serve.http.wire import HttpRequest, HttpResponse
from frameserve.serve.net.sockets import wait_while_connected

__all__ = ["OBJECTS_OUTPUT", "InferenceApi"]

#: Name of the BYTES output that carries result objects as JSON documents.
OBJECTS_OUTPUT = "objects"
#: Request parameters that are not knobs.
RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "colourspace", "colorspace", "priority", "deadline_ms", "client_id"}
)
_DIGITS = re.compile(r"[0-9]+")
_MODEL_PATH = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/config|/infer)?"
)
_SERVER_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/v2", "/metrics"})
_REPOSITORY_INDEX = "/v2/repository/index"
_REPOSITORY_LOAD = re.compile(r"/v2/repository/models/(?P<name>[^/]+)/load")


class InferenceApi(Route):
    """Answers the OIP v2 paths from the engine.

    ``max_frame_bytes`` caps each input frame of an infer request (the body may hold that
    times the most inputs any model takes).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_frame_bytes: int,
        max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
    ) -> None:
        self.engine = engine
        self.max_frame_bytes = max_frame_bytes
        self.max_batch_frames = max_batch_frames
        self.max_frame_pixels = max_frame_pixels

    def matches(self, path: str) -> bool:
        """Whether ``path`` is a server path or a model path of the API."""
        path = path.rstrip("/") or "/"
        if path in _SERVER_PATHS or path == _REPOSITORY_INDEX:
            return True
        return (
            _MODEL_PATH.fullmatch(path) is not None or _REPOSITORY_LOAD.fullmatch(path) is not None
        )

    def required_role(self, method: str, path: str) -> Role:
        """``td`` for the metrics, ``admin`` to load models, ``artist`` for everything else."""
        path = path.rstrip("/") or "/"
        if path == "/metrics":
            return Role.TD
        if _REPOSITORY_LOAD.fullmatch(path):
            return Role.ADMIN
        return Role.ARTIST

    def body_limit(self, method: str, path: str) -> int:
        """Largest body accepted: frames for ``infer``, a little JSON for everything else."""
        if method == "POST" and path.endswith("/infer"):
            return request_bytes_limit(self.max_frame_bytes, self.engine.largest_input_count())
        return SMALL_BODY

    def model_of(self, path: str) -> str | None:
        """The model named in a model path."""
        match = _MODEL_PATH.fullmatch(path.rstrip("/"))
        return match["name"] if match else None

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        """Answer ``request``; every :class:`FrameServeError` becomes its JSON error answer."""
        try:
            return self._route(request, client)
        except FrameServeError as exc:
            response = error_response(status_for(exc), str(exc))
            if exc.worker is not None:
                response.worker = str(exc.worker)
            return response

    def _route(self, request: HttpRequest, client: str) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        simple: dict[str, Callable[[], HttpResponse]] = {
            "/v2/health/live": lambda: json_response(200, {"live": True}),
            "/v2/health/ready": self._server_ready,
            "/v2": self._server_metadata,
            "/metrics": self._metrics,
        }
        if path in simple:
            return only(request, "GET", simple[path])
        if path == _REPOSITORY_INDEX:
            return only(request, "POST", self._repository_index)
        load = _REPOSITORY_LOAD.fullmatch(path)
        if load is not None:
            return only(request, "POST", lambda: self._load_model(load["name"]))
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            return error_response(404, f"no such path {request.path!r}; see docs/http-api.md")
        name, version, action = match["name"], match["version"], match["action"] or ""
        if action == "/infer":
            return only(request, "POST", lambda: self._infer(name, version, request, client))
        handlers = {
            "": self._model_metadata,
            "/ready": self._model_ready,
            "/config": self._model_config,
        }
        return only(request, "GET", lambda: handlers[action](name, version))

    # -- server --------------------------------------------------------------------------------

    def _server_ready(self) -> HttpResponse:
        """Ready: started, not shutting down, and some model can serve (not all failed)."""
        ready = self.engine.is_ready() and self.engine.can_serve()
        return json_response(200 if ready else 503, {"ready": ready})

    def _server_metadata(self) -> HttpResponse:
        return json_response(
            200,
            {
                "name": "frameserve",
                "version": __version__,
                "extensions": ["binary_tensor_data", "model_repository", "frameserve_knobs"],
            },
        )

    def _repository_index(self) -> HttpResponse:
        index = []
        for entry in self.engine.catalogue():
            item = {"name": entry.id, "version": entry.version}
            item["state"] = "READY" if entry.ok else "UNAVAILABLE"
            item["reason"] = entry.error or ""
            index.append(item)
        return json_response(200, index)

    def _load_model(self, name: str) -> HttpResponse:
        """Load the changed model folders; answer model ``name``'s state (404, 503 if failed)."""
        changes = self.engine.reload_models(name)
        entry = self.engine.model(name)
        return json_response(
            200, {"name": entry.id, "version": entry.version, "ready": True, "changes": changes}
        )

    def _metrics(self) -> HttpResponse:
        text = self.engine.metrics_text().encode()
        return HttpResponse(200, [text], content_type="text/plain; version=0.0.4; charset=utf-8")

    # -- models: a failed model is a 503, a missing one a 404 (Engine.model) -------------------

    def _model_ready(self, name: str, version: str | None) -> HttpResponse:
        """200 when the model can serve now; 503 while its worker is loading or restarting
        (and, through ``Engine.model``, when it failed)."""
        entry = self.engine.model(name, version)
        status = self.engine.status(entry)
        answer: dict[str, Any] = {"name": name, "version": entry.version, "ready": status.ready}
        if not status.ready:
            answer["state"] = status.state.value
        return json_response(200 if status.ready else 503, answer)

    def _model_metadata(self, name: str, version: str | None) -> HttpResponse:
        entry = self.engine.model(name, version)
        spec = entry.spec
        versions = [e.version for e in self.engine.models() if e.id == name]
        return json_response(
            200,
            {
                "name": spec.id,
                "versions": versions or [entry.version],
                "platform": "frameserve",
                "inputs": [_tensor_metadata(i.name, i.channels) for i in spec.inputs],
                "outputs": [_tensor_metadata(o.name, o.channels) for o in spec.outputs],
                "weights": describe_weights(spec.weights),
                "commercial_use": cleared_for_commercial_use(spec.weights),
            },
        )

    def _model_config(self, name: str, version: str | None) -> HttpResponse:
        entry = self.engine.model(name, version)
        data = entry.spec.describe()
        data.update(name=entry.id, version=entry.version, layout="HWC")
        return json_response(200, data)

    # -- inference -----------------------------------------------------------------------------

    def _infer(
        self, name: str, version: str | None, request: HttpRequest, client: str
    ) -> HttpResponse:
        """Translate tensors to frames, one request per frame; ``build_request`` checks them."""
        entry = self.engine.model(name, version)
        body, inputs = parse_infer_body(
            request.body,
            _header_length(request),
            max_batch_frames=self.max_batch_frames,
            max_frame_pixels=self.max_frame_pixels,
        )
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolError("request 'parameters' must be a JSON object")
        knobs = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
        # The declared channels tell a [C, H, W] tensor from an [H, W, C] one; a tensor of an
        # input the model lacks is converted as it is and refused by build_request.
        channels = {declared.name: declared.channels for declared in entry.spec.inputs}
        allocate = self.engine.allocate_frame
        per_input = [
            frames_from_tensor(tensor, channels.get(tensor.name, 0), allocate=allocate)
            for tensor in inputs
        ]
        if len({len(frames) for frames in per_input}) > 1:
            raise FrameError("every input must hold the same number of frames")
        request.size = _frames_size(per_input)
        batched = any(tensor.array.ndim == 4 for tensor in inputs)
        colourspace = _text_parameter(parameters, "colourspace") or _text_parameter(
            parameters, "colorspace"
        )
        priority = Priority.parse(parameters.get("priority", "interactive"))
        requests = [
            build_request(
                entry,
                [(tensor.name, frame) for tensor, frame in zip(inputs, frames, strict=True)],
                knobs,
                colourspace=colourspace,
                priority=priority,
                client=client,
                group=_text_parameter(parameters, "client_id") or "",
                protocol="http",
                deadline=_deadline(parameters),
            )
            for frames in zip(*per_input, strict=True)
        ]
        del inputs, per_input  # the frames hold their own copies: free the body early
        futures: list[Future[InferenceResult]] = [self.engine.submit(r) for r in requests]
        try:
            results = [_wait(request, future) for future in futures]
        finally:
            for future in futures:  # the client left, or one frame failed: drop the rest
                future.cancel()
        outputs = _outputs(entry.spec, results, body, batched=batched)
        response = _infer_response(entry, body, outputs)
        workers = dict.fromkeys(str(r.worker) for r in results if r.worker is not None)
        response.worker = ",".join(workers) or "-"
        return response


def _frames_size(per_input: list[list[torch.Tensor]]) -> str:
    """The first input's frame size, ``"1920x1080"`` (``"1920x1080 (4 frames)"`` for a batch);
    ``"-"`` for no frames."""
    if not per_input or not per_input[0]:
        return "-"
    frames = per_input[0]
    _, height, width = frames[0].shape
    return f"{width}x{height}" + (f" ({len(frames)} frames)" if len(frames) > 1 else "")


def _wait(request: HttpRequest, future: Future[InferenceResult]) -> InferenceResult:
    if request.sock is None:
        return future.result()
    return wait_while_connected(request.sock, future)


def _text_parameter(parameters: dict[str, Any], name: str) -> str | None:
    value = parameters.get(name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ProtocolError(f"parameter {name!r} must be a non-empty string")
    return value


def _deadline(parameters: dict[str, Any]) -> float | None:
    """The monotonic time a request's ``deadline_ms`` parameter ends at."""
    value = parameters.get("deadline_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ProtocolError(f"parameter 'deadline_ms' must be a positive number, got {value!r}")
    return time.monotonic() + value / 1000.0


def _tensor_metadata(name: str, channels: int) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": [-1, -1, channels]}


def _header_length(request: HttpRequest) -> int | None:
    text = request.headers.get("inference-header-content-length")
    if text is None:
        return None
    if not _DIGITS.fullmatch(text.strip()):
        raise ProtocolError(f"Inference-Header-Content-Length must be a number, got {text[:40]!r}")
    return int(text)


def _requested_outputs(spec: ModelSpec, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    raw = body.get("outputs")
    if raw is None:
        return [(o.name, {}) for o in spec.outputs]
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list")
    declared = {o.name for o in spec.outputs} | {OBJECTS_OUTPUT}
    requested = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("each of 'outputs' must be an object with a 'name'")
        if item["name"] not in declared:
            raise FrameError(
                f"model {spec.id!r} has no output {item['name']!r}; "
                f"outputs: {', '.join(sorted(declared))}"
            )
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolError(f"output {item['name']!r}: 'parameters' must be an object")
        requested.append((item["name"], parameters))
    return requested


def _outputs(
    spec: ModelSpec, results: list[InferenceResult], body: dict[str, Any], *, batched: bool
) -> list[tuple[OutputTensor, bool]]:
    """The tensors to send, each with whether it goes as binary data."""
    binary_default = bool((body.get("parameters") or {}).get("binary_data_output", False))
    outputs: list[tuple[OutputTensor, bool]] = []
    for name, parameters in _requested_outputs(spec, body):
        if name == OBJECTS_OUTPUT:
            continue
        frames = [result.frames[name] for result in results if name in result.frames]
        if len(frames) != len(results):
            continue  # the model did not produce this optional output
        datatype = parameters.get("datatype", "FP32")
        binary = bool(parameters.get("binary_data", binary_default))
        outputs.append((tensor_from_frames(name, frames, datatype, batched=batched), binary))
    documents = [json.dumps(obj.to_data()) for result in results for obj in result.objects]
    if documents:
        objects = OutputTensor(OBJECTS_OUTPUT, "BYTES", [len(documents)], strings=documents)
        outputs.append((objects, False))
    return outputs


def _infer_response(
    entry: ModelEntry, body: dict[str, Any], outputs: list[tuple[OutputTensor, bool]]
) -> HttpResponse:
    described = []
    binary_parts: list[Any] = []
    for tensor, binary in outputs:
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if tensor.strings is not None:
            item["data"] = tensor.strings
        elif binary:
            assert tensor.array is not None
            item["parameters"] = {"binary_data_size": tensor.array.nbytes}
            binary_parts.append(tensor.array.reshape(-1).view("u1").data)
        else:
            assert tensor.array is not None
            item["data"] = tensor.array.reshape(-1).tolist()
        described.append(item)
    header: dict[str, Any] = {
        "model_name": entry.id,
        "model_version": entry.version,
        "outputs": described,
    }
    if "id" in body:
        header["id"] = body["id"]
    header_bytes = json.dumps(header).encode()
    if not binary_parts:
        return HttpResponse(200, [header_bytes])
    header_bytes = binary_header(header)  # padded: the tensors start aligned at the client
    return HttpResponse(
        200,
        [header_bytes, *binary_parts],
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header_bytes))},
    )
