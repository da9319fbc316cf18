"""HTTP routes: the endpoints the HTTP door is built with, and how it picks one per request.

A :class:`Route` serves a family of paths (the inference API, the training API, later a
dashboard). The door is given its routes when it is built and asks them in order: the first
whose :meth:`Route.matches` accepts a path answers every request to it, and says how large its
body may be. A path no route matches is a 404.

::

    door = HttpServer(settings, engine=engine, routes=[InferenceApi(...), TrainingApi(jobs)])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from frameserve.serve.auth.users import ANONYMOUS, Role
from frameserve.serve.http.wire import HttpRequest, HttpResponse

__all__ = [
    "SMALL_BODY",
    "Route",
    "Router",
    "error_response",
    "json_response",
    "only",
    "wrong_method",
]

#: Largest body a request may carry unless its route says otherwise: a little JSON.
SMALL_BODY = 1 << 20


def json_response(status: int, data: object) -> HttpResponse:
    """Return a JSON response."""
    return HttpResponse(status, [json.dumps(data).encode()])


def error_response(status: int, message: str) -> HttpResponse:
    """Return the ``{"error": ...}`` answer every failure gets."""
    return json_response(status, {"error": message})


def wrong_method(request: HttpRequest, allowed: str) -> HttpResponse:
    """Return the 405 answer naming the methods ``allowed`` (``"GET or POST"``)."""
    return error_response(405, f"{request.path} takes {allowed}, not {request.method}")


def only(request: HttpRequest, method: str, answer: Callable[[], HttpResponse]) -> HttpResponse:
    """Return ``answer()`` if ``request`` uses ``method`` (HEAD counts as GET), else a 405."""
    if request.method == method or (method == "GET" and request.method == "HEAD"):
        return answer()
    return wrong_method(request, method)


class Route:
    """A family of HTTP endpoints; subclasses write :meth:`matches` and :meth:`handle`.

    :meth:`handle` answers every request, errors included (with
    :func:`~frameserve.serve.http.status.status_for`); an exception it lets through is a 500.
    """

    def matches(self, path: str) -> bool:
        """Whether this route serves ``path`` (percent-decoded, without the query)."""
        raise NotImplementedError

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        """Answer ``request`` from ``client`` (``host:port``)."""
        raise NotImplementedError

    def body_limit(self, method: str, path: str) -> int:
        """Largest body accepted for a ``method`` request to ``path``; read before the body."""
        return SMALL_BODY

    def streams_body(self, method: str, path: str) -> bool:
        """Whether this route reads the body of such a request as it arrives
        (:attr:`HttpRequest.stream`) instead of in one buffer (uploads to disk)."""
        return False

    def required_role(self, method: str, path: str) -> Role:
        """The least role a ``method`` request to ``path`` needs (checked before the body)."""
        return Role.ARTIST

    def model_of(self, path: str) -> str | None:
        """The model a request to ``path`` concerns (for its log line and metrics), if any."""
        return None


class Router:
    """Picks the route of each request: the first of ``routes`` that matches its path."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    def route(self, path: str) -> Route | None:
        """The route serving ``path``, or ``None``."""
        return next((route for route in self.routes if route.matches(path)), None)

    def admit(self, request: HttpRequest) -> HttpResponse | None:
        """Decide from the head alone whether ``request`` may go on; set its :attr:`user`.

        Called before the body is read: the answer to send instead (401, 403), or ``None``.
        """
        request.user = ANONYMOUS
        return None

    def body_limit(self, method: str, path: str) -> int:
        """Largest body accepted for the request: its route's say, else a little JSON."""
        route = self.route(path)
        return SMALL_BODY if route is None else route.body_limit(method, path)

    def handle(self, request: HttpRequest, client: str) -> tuple[HttpResponse, str | None]:
        """Answer ``request``; also return the model it concerned (for the log line)."""
        route = self.route(request.path)
        if route is None:
            return error_response(404, f"no such path {request.path!r}; see docs/http-api.md"), None
        return route.handle(request, client), route.model_of(request.path)
