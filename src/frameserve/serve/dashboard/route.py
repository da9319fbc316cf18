"""The dashboard's paths on the HTTP door: its page, its assets and its live data.

=======================================  ======================================================
``GET /``                                the dashboard (one page; open: it holds no data)
``GET /ui/{file}``                       its scripts, styles, charting library, sample photo
                                         (open, shipped in the package, nothing fetched)
``GET /v2/dashboard/whoami``             ``{"user", "role", "auth"}``: who the token names
                                         (open: ``user`` is ``null`` for no valid token)
``GET /v2/dashboard/{page}``             one look at ``overview``, ``models`` or ``training``
``GET /v2/dashboard/events?page={page}``  the same, live: Server-Sent Events
                                         (:mod:`frameserve.serve.dashboard.events`)
=======================================  ======================================================

Everything under ``/v2/dashboard`` needs a token when the server has them (any role: the
pages show each role what the API would show it), sent as ``Authorization: Bearer`` like every
API call: the page keeps the token in the browser's ``sessionStorage`` and sends it itself, no
cookie is ever set, so no other site can act or read through a visitor's browser. What the
pages do (run a model, reload one, cancel a job) they do through the API, which checks the
role again. Every answer carries a Content-Security-Policy allowing this server's own scripts,
styles and images only.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from frameserve.engine.engine import Engine
from frameserve.errors import FrameServeError
from frameserve.serve.auth.users import ANONYMOUS, UNAUTHENTICATED, Role, User
from frameserve.serve.dashboard.events import EventStreams
from frameserve.serve.dashboard.overview import LossHistory, jobs, models, overview
from frameserve.serve.http.routes import (
    Route,
    error_response,
    json_response,
    only,
    wrong_method,
)
from frameserve.serve.http.status import status_for
from frameserve.serve.http.wire import HttpRequest, HttpResponse
from frameserve.training.jobs import TrainingJobs

__all__ = ["ASSET_PREFIX", "PAGES", "SECURITY_HEADERS", "Dashboard", "assets"]

#: Where the dashboard's assets are served.
ASSET_PREFIX = "/ui/"
#: The pages that have live data.
PAGES = ("overview", "models", "training")
_DATA_PREFIX = "/v2/dashboard"
_WHOAMI = _DATA_PREFIX + "/whoami"
#: Sent with every dashboard answer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


def assets() -> dict[str, tuple[bytes, str]]:
    """Every shipped asset by its path under :data:`ASSET_PREFIX`, with its content type."""
    found: dict[str, tuple[bytes, str]] = {}
    root = resources.files("frameserve.serve.dashboard").joinpath("static")

    def walk(folder: Any, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
                continue
            suffix = "." + item.name.rpartition(".")[2]
            if suffix in _TYPES:
                found[prefix + item.name] = (item.read_bytes(), _TYPES[suffix])

    walk(root, "")
    return found


class Dashboard(Route):
    """Serves the dashboard from ``engine`` and ``training``; ``device`` is the server's
    device setting (``"auto"``, ``"cuda:0"``...)."""

    def __init__(
        self,
        engine: Engine,
        training: TrainingJobs,
        *,
        device: str = "auto",
        streams: EventStreams | None = None,
    ) -> None:
        self.engine = engine
        self.training = training
        self.device = device
        self.streams = streams or EventStreams()
        self.history = LossHistory()
        self.started = time.time()
        self._assets = assets()

    def close(self) -> None:
        """End the open event streams (the server shuts down)."""
        self.streams.close()

    def matches(self, path: str) -> bool:
        """The page, its assets and ``/v2/dashboard/...``."""
        return (
            path in ("/", "/index.html")
            or path.startswith(ASSET_PREFIX)
            or path == _DATA_PREFIX
            or path.startswith(_DATA_PREFIX + "/")
        )

    def public(self, method: str, path: str) -> bool:
        """The page, its assets, and ``whoami`` (whether this server wants a token, and whom
        the one sent names): they hold nothing of the server's."""
        return not path.startswith(_DATA_PREFIX) or path == _WHOAMI

    def required_role(self, method: str, path: str) -> Role:
        """Any role: each page shows what the API shows that role."""
        return Role.ARTIST

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        """Answer ``request``, every answer with :data:`SECURITY_HEADERS`."""
        try:
            response = self._route(request)
        except FrameServeError as exc:
            response = error_response(status_for(exc), str(exc))
        response.headers.update(SECURITY_HEADERS)
        return response

    def _route(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if not path.startswith(_DATA_PREFIX):
            name = "index.html" if path in ("/", "/index.html") else path[len(ASSET_PREFIX) :]
            found = self._assets.get(name)
            if found is None:
                return error_response(404, f"no dashboard file {path!r}")
            data, kind = found
            return only(request, "GET", lambda: HttpResponse(200, [data], content_type=kind))
        page = path[len(_DATA_PREFIX) :].strip("/")
        if page == "events":
            if request.method != "GET":  # (not even HEAD: a stream has no end to send)
                return wrong_method(request, "GET")
            return self._events(request)
        if request.query:
            return error_response(400, f"{path} takes no query; only /events takes ?page=")
        if page == "whoami":
            return only(request, "GET", lambda: json_response(200, _whoami(request.user)))
        if page in PAGES:
            return only(request, "GET", lambda: json_response(200, self._read(page, request)))
        return error_response(
            404, f"no dashboard data {page!r}; there are {', '.join(PAGES)}, whoami and events"
        )

    def _read(self, page: str, request: HttpRequest) -> Any:
        if page == "overview":
            return overview(
                self.engine, device=self.device, user=request.user, started=self.started
            )
        if page == "models":
            return {"models": models(self.engine)}
        return {"jobs": jobs(self.training, user=request.user, history=self.history)}

    def _events(self, request: HttpRequest) -> HttpResponse:
        """Stream the page the query names (400: a query that names none, or more)."""
        try:
            query = parse_qs(request.query, strict_parsing=True, max_num_fields=4)
        except ValueError:
            return error_response(400, "malformed query: send ?page=overview, models or training")
        pages = query.pop("page", [])
        if query or len(pages) != 1 or pages[0] not in PAGES:
            return error_response(
                400, f"send exactly one ?page= of {', '.join(PAGES)} and nothing else"
            )
        if request.sock is None:
            return error_response(400, "event streams need a connection of their own")
        page = pages[0]
        self.streams.serve(request.sock, page, lambda: self._read(page, request))
        raise AssertionError("EventStreams.serve always raises")  # pragma: no cover


def _whoami(user: User) -> dict[str, Any]:
    """Who the request's token names; ``user`` ``None``: this server wants a (valid) token."""
    if user is ANONYMOUS:
        return {"user": user.name, "role": user.role.label, "auth": False}
    if user is UNAUTHENTICATED:
        return {"user": None, "role": None, "auth": True}
    return {"user": user.name, "role": user.role.label, "auth": True}
