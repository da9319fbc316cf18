"""HTTP routes: the endpoints the HTTP door is built with, and how it picks one per request.

A :class:`Route` serves a family of paths (the inference API, the training API, later a
dashboard). The door is given its routes when it is built and asks them in order: the first
whose :meth:`Route.matches` accepts a path answers every request to it, and says how large its
body may be. A path no route matches is a 404.

::

    door = HttpServer(settings, engine=engine, routes=[InferenceApi(...), TrainingApi(jobs)])

**Who may ask.** With a :class:`~frameserve.serve.auth.tokens.TokenStore`, :meth:`Router.admit`
checks every request's head before its body is read: all paths but :data:`OPEN_PATHS` need
``Authorization: Bearer TOKEN`` (else 401, with ``WWW-Authenticate: Bearer``), and the user the
token names needs the role the route asks for (:meth:`Route.required_role`; else 403 naming
the role); a route may open paths of its own too (:meth:`Route.public`). Without a store
every request is :data:`~frameserve.serve.auth.users.ANONYMOUS`, an admin.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from frameserve.serve.auth.tokens import TokenStore
from frameserve.serve.auth.users import ANONYMOUS, UNAUTHENTICATED, Role
from frameserve.serve.http.wire import HttpRequest, HttpResponse

__all__ = [
    "OPEN_PATHS",
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
#: Paths anyone may ask without a token (load balancers and orchestrators probe them).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
#: What a request without a valid token is told: what to send, never whether a user exists.
_NEEDS_TOKEN = (
    "this server needs a token: send the header 'Authorization: Bearer TOKEN' "
    "(clients take --token or $FRAMESERVE_TOKEN; a TD makes tokens with 'frameserve token add')"
)


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

    def public(self, method: str, path: str) -> bool:
        """Whether anyone may ask ``path`` without a token, like :data:`OPEN_PATHS` (the
        dashboard's page and its assets, which hold no data of the server's)."""
        return False

    def model_of(self, path: str) -> str | None:
        """The model a request to ``path`` concerns (for its log line and metrics), if any."""
        return None


class Router:
    """Picks the route of each request: the first of ``routes`` that matches its path.

    ``tokens``: the token store every request but those to :data:`OPEN_PATHS` must name a user
    of; ``None`` (no authentication): every request is :data:`ANONYMOUS`.
    """

    def __init__(self, routes: Sequence[Route], *, tokens: TokenStore | None = None) -> None:
        self.routes = tuple(routes)
        self.tokens = tokens

    def route(self, path: str) -> Route | None:
        """The route serving ``path``, or ``None``."""
        return next((route for route in self.routes if route.matches(path)), None)

    def admit(self, request: HttpRequest) -> HttpResponse | None:
        """Decide from the head alone whether ``request`` may go on; set its :attr:`user`.

        Called before the body is read: the answer to send instead (401, 403), or ``None``.
        """
        if self.tokens is None:
            request.user = ANONYMOUS
            return None
        path = request.path.rstrip("/") or "/"
        scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else ""
        user = self.tokens.user_for(token) if token else None
        route = self.route(request.path)
        if path in OPEN_PATHS or (route is not None and route.public(request.method, path)):
            request.user = user or UNAUTHENTICATED
            return None
        if user is None:
            return _unauthorised(bool(scheme), valid_scheme=bool(token))
        request.user = user
        if route is None:
            return None  # a 404 once the body is read, for a user who may see that
        needed = route.required_role(request.method, request.path)
        if user.may(needed):
            return None
        return error_response(
            403,
            f"{request.method} {request.path} needs role {needed.label}; "
            f"token {user.name!r} has {user.role.label}",
        )

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


def _unauthorised(sent: bool, *, valid_scheme: bool) -> HttpResponse:
    """The 401 answer: what to send (RFC 6750's ``WWW-Authenticate: Bearer``)."""
    if not sent:
        message, challenge = _NEEDS_TOKEN, 'Bearer realm="frameserve"'
    elif not valid_scheme:
        message = "the Authorization header must be 'Bearer TOKEN'; " + _NEEDS_TOKEN
        challenge = 'Bearer realm="frameserve", error="invalid_request"'
    else:
        message = "the token is not valid (mistyped, or removed from the server); " + _NEEDS_TOKEN
        challenge = 'Bearer realm="frameserve", error="invalid_token"'
    response = error_response(401, message)
    response.headers["WWW-Authenticate"] = challenge
    return response
