"""The training endpoints of the HTTP API: a :class:`Route` over :class:`TrainingJobs`.

``docs/http-api.md`` is the user's guide.

=================================================  ==========================================
``POST   /v2/training/uploads?filename=NAME``      one image file's bytes; 201 ``{"id", ...}``
``GET    /v2/training/uploads``                    ``{"uploads": [upload, ...]}``
``GET    /v2/training/uploads/{id}``               one upload (404: not stored)
``DELETE /v2/training/uploads/{id}``               remove it
``POST   /v2/training/jobs``                       create: ``{"name", "pairs": [[in, target],
                                                   ...], "validation": [...], "settings":
                                                   {...}}``; or ``"labels"`` / ``"values"``
``GET    /v2/training/jobs``                       ``{"jobs": [status, ...]}``
``GET    /v2/training/jobs/{name}``                state and progress
``DELETE /v2/training/jobs/{name}``                remove a stopped job and its files
``GET    /v2/training/jobs/{name}/contact_sheet``  the newest contact sheet (PNG)
``GET    /v2/training/jobs/{name}/losses``         its whole loss curve: ``{"job", "columns",
                                                   "points": [[step, loss, validation], ...]}``
``GET    /v2/training/jobs/{name}/package``        a model package of it (zip; ``?format=``)
``POST   /v2/training/jobs/{name}/cancel``         stop it (a checkpoint is saved)
``POST   /v2/training/jobs/{name}/resume``         go on from the newest checkpoint
=================================================  ==========================================

A frame in ``pairs`` is a path inside the server's data roots (a string; ``--data-root``, none
by default) or an upload (``{"upload": ID}``); label folders and value tables are paths inside
the data roots too (:mod:`frameserve.training.jobs.files`). An upload's body is written to disk
as it arrives (the route streams it). Errors are ``{"error": ...}`` with the status of
:mod:`frameserve.serve.http.status`: 400 for a bad request (settings and image files named here
are the client's, so their errors are 400 too), 403 for another user's job, 404 for an unknown
job or upload, 409 for a state that forbids the action or a name in use, 413 for what passes a
limit (an upload's bytes or pixels, a job's frames, table or decoded bytes), 507 when the
uploads waiting for jobs hold as much as the server keeps. A job that names an upload that is
not there is a bad request (400), not a 404.

**Who may do what** (with tokens; without them everyone is an admin). An artist uploads, creates
jobs and lists, reads, cancels, resumes and deletes their own; a td does so with everyone's, and
downloads packages (``/package``, which needs td). Another user's job is a 403 for an artist: a
job is served as a model of its name, which every artist sees in the model list, so hiding it
would hide nothing. Another user's upload is a 404: an upload's id is the hash of its bytes, and
telling that it exists would tell that someone holds that file.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, quote

from frameserve.errors import (
    ConfigError,
    FrameServeError,
    PermissionDeniedError,
    UploadNotFoundError,
)
from frameserve.serve.auth.users import Role, User
from frameserve.serve.http.bodies import json_body
from frameserve.serve.http.routes import Route, error_response, json_response, wrong_method
from frameserve.serve.http.status import CLIENT_INPUT, status_for
from frameserve.serve.http.wire import HttpRequest, HttpResponse
from frameserve.training import LATEST, TrainingSettings
from frameserve.training.jobs import LabelSource, TrainingJobs
from frameserve.training.uploads import UploadedFrame

__all__ = ["TrainingApi"]

PREFIX = "/v2/training/jobs"
UPLOADS = "/v2/training/uploads"
#: How long a cancel request waits for the job to stop before answering.
CANCEL_WAIT_SECONDS = 2.0
_JOB_PATH = re.compile(r"/v2/training/jobs/(?P<name>[^/]+)(?P<action>/[a-z_]+)?")
_UPLOAD_PATH = re.compile(r"/v2/training/uploads/(?P<id>[^/]+)")


#: Statuses of errors on every path but an upload's own: a missing upload that a job names is
#: the request's mistake (400); on ``/uploads/{id}`` it is a 404 (the table's default).
_JOB_ERRORS = {**CLIENT_INPUT, UploadNotFoundError: 400}


class TrainingApi(Route):
    """Answers ``/v2/training/...``: training jobs and the uploads they train on."""

    def __init__(self, jobs: TrainingJobs) -> None:
        self.jobs = jobs

    def matches(self, path: str) -> bool:
        """Whether ``path`` is a training path (jobs or uploads)."""
        path = path.rstrip("/")
        return any(path == root or path.startswith(root + "/") for root in (PREFIX, UPLOADS))

    def body_limit(self, method: str, path: str) -> int:
        """Return the largest body of a request: an upload's size cap, else a little JSON."""
        if method == "POST" and path.rstrip("/") == UPLOADS:
            return self.jobs.uploads.max_file_bytes
        return super().body_limit(method, path)

    def streams_body(self, method: str, path: str) -> bool:
        """Whether the body is read as it arrives: an upload's (to disk, never to memory)."""
        return method == "POST" and path.rstrip("/") == UPLOADS

    def required_role(self, method: str, path: str) -> Role:
        """Return the least role a request needs: td for packages, else artist (whose own
        jobs and uploads the handlers check)."""
        match = _JOB_PATH.fullmatch(path.rstrip("/"))
        if match is not None and match["action"] == "/package":
            return Role.TD
        return Role.ARTIST

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        """Answer ``request``; every :class:`FrameServeError` becomes its JSON error answer."""
        path = request.path.rstrip("/")
        uploads = path == UPLOADS or path.startswith(UPLOADS + "/")
        try:
            return self._uploads(request, path) if uploads else self._route(request, path)
        except FrameServeError as exc:
            overrides = CLIENT_INPUT if path.startswith(UPLOADS + "/") else _JOB_ERRORS
            return error_response(status_for(exc, overrides=overrides), str(exc))

    # -- uploads -------------------------------------------------------------------------------

    def _uploads(self, request: HttpRequest, path: str) -> HttpResponse:
        method = "GET" if request.method == "HEAD" else request.method
        store = self.jobs.uploads
        owner = _only_own(request.user)
        if path == UPLOADS:
            if method == "GET":
                store.prune()
                listed = [upload.to_dict(store.max_age) for upload in store.uploads(owner=owner)]
                return json_response(200, {"uploads": listed})
            if method != "POST":
                return wrong_method(request, "GET or POST")
            filename = _query(request).get("filename")
            upload, new = store.put_stream(
                _pieces(request), filename or "", owner=request.user.name
            )
            return json_response(201 if new else 200, upload.to_dict(store.max_age))
        match = _UPLOAD_PATH.fullmatch(path)
        if match is None:
            return error_response(404, f"no such path {request.path!r}")
        if method == "GET":
            return json_response(200, store.get(match["id"], owner=owner).to_dict(store.max_age))
        if method == "DELETE":
            store.delete(match["id"], owner=owner)
            return json_response(200, {"deleted": match["id"]})
        return wrong_method(request, "GET or DELETE")

    # -- jobs ----------------------------------------------------------------------------------

    def _route(self, request: HttpRequest, path: str) -> HttpResponse:
        method = "GET" if request.method == "HEAD" else request.method
        user = request.user
        if path == PREFIX:
            if method == "GET":
                owner = _only_own(user)
                listed = [s.to_dict() for s in self.jobs.jobs() if owner in (None, s.owner)]
                return json_response(200, {"jobs": listed})
            if method == "POST":
                return self._create(json_body(request), user)
            return wrong_method(request, "GET or POST")
        match = _JOB_PATH.fullmatch(path)
        if match is None:
            return error_response(404, f"no such path {request.path!r}")
        name, action = match["name"], match["action"] or ""
        if action in ("", "/contact_sheet", "/losses", "/package", "/cancel", "/resume"):
            self._check_owner(name, user)
        if action == "" and method == "DELETE":
            self.jobs.delete(name)
            return json_response(200, {"deleted": name})
        if action in ("", "/contact_sheet", "/losses", "/package"):
            if method != "GET":
                return wrong_method(request, "GET or DELETE" if action == "" else "GET")
            if action == "/package":
                return self._package(name, _query(request))
            if action == "/losses":
                return self._losses(name)
            return self._status(name) if action == "" else self._contact_sheet(name)
        if action in ("/cancel", "/resume"):
            if method != "POST":
                return wrong_method(request, "POST")
            if action == "/cancel":
                status = self.jobs.cancel(name, wait=CANCEL_WAIT_SECONDS)
                return json_response(200, status.to_dict())
            steps = json_body(request).get("steps")
            if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)):
                raise ConfigError(f"'steps' must be a whole number, not {steps!r:.80}")
            return json_response(200, self.jobs.resume(name, steps=steps).to_dict())
        return error_response(404, f"no such path {request.path!r}")

    def _check_owner(self, name: str, user: User) -> None:
        """Raise :class:`PermissionDeniedError` if ``user`` may not see job ``name`` (not theirs,
        and not a td)."""
        if user.may(Role.TD) or self.jobs.owner(name) == user.name:
            return
        raise PermissionDeniedError(
            f"training job {name!r} belongs to another user; seeing or changing other people's "
            f"jobs needs role td ({user.name!r} has {user.role.label})"
        )

    def _create(self, body: dict[str, Any], user: User) -> HttpResponse:
        name = body.get("name")
        if not isinstance(name, str):
            raise ConfigError("'name' is missing: give the job a name (a string)")
        given = [key for key in ("pairs", "labels", "values") if key in body]
        if len(given) != 1:
            raise ConfigError(
                "give the job's data as exactly one of 'pairs' ([[input, target], ...] image "
                "files), 'labels' (a folder of class folders) or 'values' (a CSV or JSON table "
                f"of file to value); got {', '.join(repr(k) for k in given) or 'none'}"
            )
        settings_data = body.get("settings", {})
        if not isinstance(settings_data, dict):
            raise ConfigError(f"'settings' must be an object, not {settings_data!r:.80}")
        settings = TrainingSettings.from_dict(settings_data)
        if given[0] == "pairs":
            pairs = _pairs(body["pairs"], "pairs")
            validation = _pairs(body.get("validation", []), "validation")
            status = self.jobs.submit(
                name,
                pairs,
                settings,
                validation=validation,
                owner=user.name,
                upload_owner=_only_own(user),
            )
        else:
            kind = "label" if given[0] == "labels" else "number"
            path, checks = body[given[0]], body.get("validation")
            if not isinstance(path, str) or not (checks is None or isinstance(checks, str)):
                raise ConfigError(
                    f"'{given[0]}' and 'validation' of a {kind} job must be paths the server "
                    f"reads (strings), not {path!r} and {checks!r}"
                )
            status = self.jobs.submit(
                name, LabelSource(kind, path, checks), settings, owner=user.name
            )
        return json_response(201, status.to_dict())

    def _status(self, name: str) -> HttpResponse:
        return json_response(200, self.jobs.status(name).to_dict())

    def _contact_sheet(self, name: str) -> HttpResponse:
        sheet = self.jobs.contact_sheet(name)
        if sheet is None:
            return error_response(404, f"training job {name!r} has no contact sheet yet")
        return HttpResponse(200, [sheet.read_bytes()], content_type="image/png")

    def _losses(self, name: str) -> HttpResponse:
        points = [list(point) for point in self.jobs.losses(name)]
        columns = ["step", "loss", "validation_loss"]
        return json_response(200, {"job": name, "columns": columns, "points": points})

    def _package(self, name: str, query: dict[str, str]) -> HttpResponse:
        from frameserve.training.export import (
            PACKAGE_FORMATS,
            check_model_id,
            check_version,
            export_package,
        )

        unknown = sorted(set(query) - {"format", "checkpoint", "id", "version"})
        if unknown:
            raise ConfigError(
                f"unknown package option(s) {', '.join(unknown)}; known are checkpoint, "
                "format, id, version"
            )
        folder = self.jobs.job_folder(name)
        network_format = query.get("format", "pt")
        if network_format not in PACKAGE_FORMATS:
            raise ConfigError(
                f"package format {network_format!r:.40} is not offered; choose one of "
                f"{', '.join(PACKAGE_FORMATS)} (TorchScript, torch.export, ONNX)"
            )
        model_id = query.get("id") or None
        if model_id is not None:
            check_model_id(model_id)  # it names a file: checked before anything is written
        version = check_version(query.get("version") or "1.0.0")
        with self.jobs.scratch() as scratch:  # inside the jobs folder, removed after
            out = scratch / "package"
            export_package(
                folder,
                out,
                network_format=network_format,
                checkpoint=query.get("checkpoint", LATEST),
                model_id=model_id,
                version=version,
                scratch=scratch,
            )
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        bundle.write(path, path.relative_to(out).as_posix())
        filename = quote(f"{name}.zip")
        return HttpResponse(
            200,
            [archive.getvalue()],
            content_type="application/zip",
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"},
        )


def _only_own(user: User) -> str | None:
    """Whose jobs and uploads ``user`` sees: their own (an artist), or everyone's (``None``)."""
    return None if user.may(Role.TD) else user.name


def _pieces(request: HttpRequest) -> Iterable[memoryview]:
    """The body as it arrives (a streamed request), or the one buffer a door read it into."""
    if request.stream is not None:
        return request.stream
    return [request.body.data]


def _query(request: HttpRequest) -> dict[str, str]:
    """The query's parameters, each given once."""
    found: dict[str, str] = {}
    for key, values in parse_qs(request.query, keep_blank_values=True).items():
        if len(values) != 1:
            raise ConfigError(f"query parameter {key!r} is given {len(values)} times; give it once")
        found[key] = values[0]
    return found


def _pairs(value: object, field: str) -> list[tuple[str | UploadedFrame, str | UploadedFrame]]:
    wanted = (
        "a list of [input, target] pairs, each a path the server reads (a string) or an "
        'upload ({"upload": ID})'
    )
    if not isinstance(value, list):
        raise ConfigError(f"'{field}' must be {wanted}, not {value!r:.200}")
    pairs = []
    for index, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(
                f"'{field}'[{index}] must be a pair [input, target], not {pair!r:.200}"
            )
        input_frame, target = (_frame(item, f"'{field}'[{index}]") for item in pair)
        pairs.append((input_frame, target))
    return pairs


def _frame(item: object, where: str) -> str | UploadedFrame:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and set(item) == {"upload"} and isinstance(item["upload"], str):
        return UploadedFrame(item["upload"])
    raise ConfigError(
        f'{where}: {item!r:.200} is not a frame; give a path (a string) or {{"upload": ID}}'
    )
