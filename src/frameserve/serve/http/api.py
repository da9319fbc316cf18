"""The Open Inference Protocol v2 endpoints: routing, and each endpoint's answer.

Protocol-neutral work happens elsewhere: requests are built by :func:`build_request` and run by
the scheduler, exactly as for the MLClient door. This module only maps paths and JSON to those
calls and their results back to JSON and tensors. ``docs/http-api.md`` is the user's guide.

Every model path also exists under ``/v2/models/{name}/versions/{version}/...``: that version,
where the plain path means the newest. Requests are built from the exact registry entry, so a
model reloaded while one runs never mixes versions into it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from frameserve import __version__
from frameserve.catalogue.registry import ModelEntry, ModelRegistry
from frameserve.engine.request import InferenceResult, Priority, build_request
from frameserve.engine.scheduler import Scheduler
from frameserve.errors import (
    DeadlineExceededError,
    FrameError,
    FrameServeError,
    ModelLoadError,
    ModelNotFoundError,
    ProtocolError,
    RequestError,
    RequestTooLargeError,
    ServerBusyError,
)
from frameserve.plugin.model import ModelSpec
from frameserve.serve.http.tensors import (
    OutputTensor,
    frames_from_tensor,
    parse_infer_body,
    tensor_from_frames,
)
from frameserve.serve.http.wire import HttpRequest, HttpResponse
from frameserve.serve.net.sockets import wait_while_connected
from frameserve.serve.settings import ServerSettings

__all__ = ["OBJECTS_OUTPUT", "HttpApi", "error_response", "json_response", "status_for"]

log = logging.getLogger(__name__)

#: Name of the BYTES output that carries result objects as JSON documents.
OBJECTS_OUTPUT = "objects"
#: Request parameters that are not knobs.
RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "colourspace", "colorspace", "priority", "deadline_ms", "client_id"}
)
_SMALL_BODY = 1 << 20
_DIGITS = re.compile(r"[0-9]+")
_MODEL_PATH = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/config|/infer)?"
)


def json_response(status: int, data: object) -> HttpResponse:
    """Return a JSON response."""
    return HttpResponse(status, [json.dumps(data).encode()])


def error_response(status: int, message: str) -> HttpResponse:
    """Return the ``{"error": ...}`` answer every failure gets."""
    return json_response(status, {"error": message})


class HttpApi:
    """Answers OIP v2 requests from the registry and the scheduler."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        scheduler: Scheduler,
        settings: ServerSettings,
        is_ready: Callable[[], bool],
    ) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.settings = settings
        self.is_ready = is_ready
        #: Extra endpoints (``frameserve.serve.http.training_api``): each returns its
        #: answer, or ``None`` for a path it does not serve.
        self.extensions: list[Callable[[HttpRequest], HttpResponse | None]] = []
        #: Body limits of extension paths: each returns the largest body of a request's
        #: ``(method, path)``, or ``None`` for the requests it does not serve.
        self.body_limits: list[Callable[[str, str], int | None]] = []

    def body_limit(self, method: str, path: str) -> int:
        """Largest body accepted: frames for ``infer``, what an extension says for its paths
        (uploads), a little JSON for everything else."""
        if method == "POST" and path.endswith("/infer"):
            return self.settings.max_request_bytes(self.registry.largest_input_count())
        for limit in self.body_limits:
            found = limit(method, path)
            if found is not None:
                return found
        return _SMALL_BODY

    def handle(self, request: HttpRequest, client: str) -> tuple[HttpResponse, str]:
        """Answer ``request``; also return the model it concerned (for the log line).

        Every :class:`FrameServeError` becomes its JSON error answer here.
        """
        match = _MODEL_PATH.fullmatch(request.path.rstrip("/"))
        model = match["name"] if match else "-"
        try:
            return self._route(request, client), model
        except FrameServeError as exc:
            return error_response(status_for(exc), str(exc)), model

    def _route(self, request: HttpRequest, client: str) -> HttpResponse:
        path = request.path.rstrip("/") or "/"
        simple: dict[str, Callable[[], HttpResponse]] = {
            "/v2/health/live": lambda: json_response(200, {"live": True}),
            "/v2/health/ready": self._server_ready,
            "/v2": self._server_metadata,
            "/metrics": self._metrics,
        }
        if path in simple:
            return _only(request, "GET", simple[path])
        if path == "/v2/repository/index":
            return _only(request, "POST", self._repository_index)
        for extension in self.extensions:
            answer = extension(request)
            if answer is not None:
                return answer
        match = _MODEL_PATH.fullmatch(path)
        if match is None:
            return error_response(404, f"no such path {request.path!r}; see docs/http-api.md")
        name, version, action = match["name"], match["version"], match["action"] or ""
        if action == "/infer":
            return _only(request, "POST", lambda: self._infer(name, version, request, client))
        handlers = {
            "": self._model_metadata,
            "/ready": self._model_ready,
            "/config": self._model_config,
        }
        return _only(request, "GET", lambda: handlers[action](name, version))

    # -- server --------------------------------------------------------------------------------

    def _server_ready(self) -> HttpResponse:
        ready = self.is_ready()
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
        for entry in self.registry.entries():
            item = {"name": entry.id, "version": entry.version}
            item["state"] = "READY" if entry.ok else "UNAVAILABLE"
            item["reason"] = entry.error or ""
            index.append(item)
        return json_response(200, index)

    # -- models --------------------------------------------------------------------------------

    def _entry(self, name: str, version: str | None) -> ModelEntry:
        """Model ``name`` in ``version`` (default: the newest).

        A model (or version) that failed to load is a 503, one that does not exist a 404 that
        lists the versions there are.
        """
        try:
            return self.registry.get(name, version)
        except ModelNotFoundError as exc:
            if self.registry.failure(name, version) is not None:
                raise ModelLoadError(str(exc)) from None
            raise

    def _model_ready(self, name: str, version: str | None) -> HttpResponse:
        entry = self._entry(name, version)
        return json_response(200, {"name": name, "version": entry.version, "ready": True})

    def _model_metadata(self, name: str, version: str | None) -> HttpResponse:
        entry = self._entry(name, version)
        spec = entry.spec
        versions = [e.version for e in self.registry.available() if e.id == name]
        return json_response(
            200,
            {
                "name": spec.id,
                "versions": versions or [entry.version],
                "platform": "frameserve",
                "inputs": [_tensor_metadata(i.name, i.channels) for i in spec.inputs],
                "outputs": [_tensor_metadata(o.name, o.channels) for o in spec.outputs],
            },
        )

    def _model_config(self, name: str, version: str | None) -> HttpResponse:
        entry = self._entry(name, version)
        data = entry.spec.describe()
        data.update(name=entry.id, version=entry.version, layout="HWC")
        return json_response(200, data)

    # -- inference -----------------------------------------------------------------------------

    def _infer(
        self, name: str, version: str | None, request: HttpRequest, client: str
    ) -> HttpResponse:
        entry = self._entry(name, version)
        spec = entry.spec
        header_length = _header_length(request)
        body, inputs = parse_infer_body(request.body, header_length)
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ProtocolError("request 'parameters' must be a JSON object")
        knobs = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
        by_name = {tensor.name: tensor for tensor in inputs}
        if len(by_name) != len(inputs):
            raise FrameError("an input is sent twice")
        unknown = [n for n in by_name if n not in {i.name for i in spec.inputs}]
        if unknown:
            declared = ", ".join(repr(i.name) for i in spec.inputs)
            raise FrameError(f"model {spec.id!r} has no input {unknown[0]!r}; inputs: {declared}")
        missing = [i.name for i in spec.required_inputs if i.name not in by_name]
        if missing:
            raise FrameError(f"model {spec.id!r} also needs input {missing[0]!r}")
        sent = [i for i in spec.inputs if i.name in by_name]  # optional inputs may be left out
        per_input = [frames_from_tensor(by_name[i.name], i.channels) for i in sent]
        counts = {len(frames) for frames in per_input}
        if len(counts) > 1:
            raise FrameError("every input must hold the same number of frames")
        batched = any(by_name[i.name].array.ndim == 4 for i in sent)
        colourspace = _text_parameter(parameters, "colourspace") or _text_parameter(
            parameters, "colorspace"
        )
        priority = Priority.parse(parameters.get("priority", "interactive"))
        requests = [
            build_request(
                entry,
                {image.name: frame for image, frame in zip(sent, frames, strict=True)},
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
        del inputs, by_name, per_input  # the frames hold their own copies: free the body early
        futures: list[Future[InferenceResult]] = [self.scheduler.submit(r) for r in requests]
        try:
            results = [self._wait(request, future) for future in futures]
        finally:
            for future in futures:  # the client left, or one frame failed: drop the rest
                future.cancel()
        outputs = _outputs(spec, results, body, batched=batched)
        return _infer_response(entry, body, outputs)

    def _wait(self, request: HttpRequest, future: Future[InferenceResult]) -> InferenceResult:
        if request.sock is None:
            return future.result()
        return wait_while_connected(request.sock, future)

    def _metrics(self) -> HttpResponse:
        text = self.scheduler.metrics.render().encode()
        return HttpResponse(200, [text], content_type="text/plain; version=0.0.4; charset=utf-8")


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


def _only(request: HttpRequest, method: str, answer: Callable[[], HttpResponse]) -> HttpResponse:
    if request.method == method or (method == "GET" and request.method == "HEAD"):
        return answer()
    return error_response(405, f"{request.path} takes {method}, not {request.method}")


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
    return HttpResponse(
        200,
        [header_bytes, *binary_parts],
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header_bytes))},
    )


def status_for(exc: BaseException) -> int:
    """The HTTP status an exception raised while answering maps to."""
    if isinstance(exc, ModelLoadError | ServerBusyError):
        return 503
    if isinstance(exc, RequestTooLargeError):
        return 413
    if isinstance(exc, DeadlineExceededError):
        return 504
    if isinstance(exc, ModelNotFoundError):
        return 404
    if isinstance(exc, RequestError):
        return 400
    return 500
