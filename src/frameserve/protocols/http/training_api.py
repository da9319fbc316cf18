"""The training endpoints of the HTTP API: JSON in and out, over :class:`TrainingJobs`.

==========================================  =================================================
``POST /v2/training/jobs``                  create: ``{"name", "pairs": [[in, target], ...],
                                            "validation": [...], "settings": {...}}``
``GET  /v2/training/jobs``                  ``{"jobs": [status, ...]}``
``GET  /v2/training/jobs/{name}``           state and progress
``GET  /v2/training/jobs/{name}/contact_sheet``  the newest contact sheet (PNG)
``POST /v2/training/jobs/{name}/cancel``    stop it (a checkpoint is saved)
``POST /v2/training/jobs/{name}/resume``    go on from the newest checkpoint (``{"steps"}``)
==========================================  =================================================

Frame paths are read by the server. Errors are ``{"error": ...}``: 400 for a bad request,
404 for an unknown job, 409 for a state that forbids the action.
"""

from __future__ import annotations

import json
import re
from typing import Any

from frameserve.errors import ConfigError, FrameServeError, ImageIOError, RequestError
from frameserve.jobs import JobConflictError, JobNotFoundError, TrainingJobs
from frameserve.protocols.http.api import error_response, json_response
from frameserve.protocols.http.wire import HttpRequest, HttpResponse
from frameserve.training import TrainingSettings

__all__ = ["TrainingApi"]

PREFIX = "/v2/training/jobs"
_JOB_PATH = re.compile(r"/v2/training/jobs/(?P<name>[^/]+)(?P<action>/[a-z_]+)?")


class TrainingApi:
    """Answers ``/v2/training/...``; :meth:`handle` is an :class:`HttpApi` extension."""

    def __init__(self, jobs: TrainingJobs) -> None:
        self.jobs = jobs

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """Answer ``request``, or return ``None`` when its path is not a training path."""
        path = request.path.rstrip("/")
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        try:
            return self._route(request, path)
        except JobNotFoundError as exc:
            return error_response(404, str(exc))
        except JobConflictError as exc:
            return error_response(409, str(exc))
        except (ConfigError, ImageIOError, RequestError) as exc:
            return error_response(400, str(exc))
        except FrameServeError as exc:
            return error_response(500, str(exc))

    def _route(self, request: HttpRequest, path: str) -> HttpResponse:
        method = "GET" if request.method == "HEAD" else request.method
        if path == PREFIX:
            if method == "GET":
                return json_response(200, {"jobs": [s.to_dict() for s in self.jobs.jobs()]})
            if method == "POST":
                return self._create(_body(request))
            return _wrong_method(request, "GET or POST")
        match = _JOB_PATH.fullmatch(path)
        if match is None:
            return error_response(404, f"no such path {request.path!r}")
        name, action = match["name"], match["action"] or ""
        if action in ("", "/contact_sheet"):
            if method != "GET":
                return _wrong_method(request, "GET")
            return self._status(name) if action == "" else self._contact_sheet(name)
        if action in ("/cancel", "/resume"):
            if method != "POST":
                return _wrong_method(request, "POST")
            if action == "/cancel":
                return json_response(200, self.jobs.cancel(name).to_dict())
            steps = _body(request).get("steps")
            if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)):
                raise ConfigError(f"'steps' must be a whole number, not {steps!r}")
            return json_response(200, self.jobs.resume(name, steps=steps).to_dict())
        return error_response(404, f"no such path {request.path!r}")

    def _create(self, body: dict[str, Any]) -> HttpResponse:
        name = body.get("name")
        if not isinstance(name, str):
            raise ConfigError("'name' is missing: give the job a name (a string)")
        pairs = _pairs(body.get("pairs"), "pairs")
        validation = _pairs(body.get("validation", []), "validation")
        settings_data = body.get("settings", {})
        if not isinstance(settings_data, dict):
            raise ConfigError(f"'settings' must be an object, not {settings_data!r}")
        settings = TrainingSettings.from_dict(settings_data)
        status = self.jobs.submit(name, pairs, settings, validation=validation)
        return json_response(201, status.to_dict())

    def _status(self, name: str) -> HttpResponse:
        return json_response(200, self.jobs.status(name).to_dict())

    def _contact_sheet(self, name: str) -> HttpResponse:
        sheet = self.jobs.contact_sheet(name)
        if sheet is None:
            return error_response(404, f"training job {name!r} has no contact sheet yet")
        return HttpResponse(200, [sheet.read_bytes()], content_type="image/png")


def _body(request: HttpRequest) -> dict[str, Any]:
    raw = request.body.tobytes()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("the body must be a JSON object")
    return data


def _pairs(value: object, field: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        wanted = "a list of [input_path, target_path] pairs of strings"
        raise ConfigError(f"'{field}' must be {wanted}, not {value!r}")
    return [(p[0], p[1]) for p in value]


def _wrong_method(request: HttpRequest, allowed: str) -> HttpResponse:
    return error_response(405, f"{request.path} takes {allowed}, not {request.method}")
