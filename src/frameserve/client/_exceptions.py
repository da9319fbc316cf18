"""The exceptions :class:`~frameserve.client.Client` raises.

Lower-level errors (``OSError``, ``http.client.HTTPException``, ``json.JSONDecodeError``) never
leave the client: each is mapped to the most specific class below at the boundary, with the
original chained as ``__cause__``. Mistakes in the arguments themselves (a frame of five axes,
an unknown output datatype) raise ``TypeError`` or ``ValueError`` before anything is sent.

::

    FrameServeError                 frameserve.errors: the root of every frameserve error
    └── ClientError                 anything the client raises on purpose
        ├── TransportError          the connection failed while a request was in flight
        │   ├── ConnectError        no connection, or it closed before any answer (retried)
        │   └── RequestTimeout      no byte for ``timeout`` seconds after the request was sent
        ├── ProtocolViolation       the server answered something that cannot be parsed
        └── HTTPStatusError         the server answered with an error status
            ├── BadRequestError     400: bad knob, shape, datatype, input
            ├── AuthenticationError  401: no token, or one the server does not know
            ├── PermissionDeniedError  403: the token's role may not do that
            ├── NotFoundError       404: unknown model, version or path
            ├── ConflictError       409: a training job's state forbids the action
            ├── PayloadTooLargeError  413: a body above the server's size cap
            ├── ServerError         500: the model failed
            └── ServiceUnavailableError  503: the server or the model is not ready

::

    try:
        result = client.infer("blur", frame, knobs={"size": 300})
    except BadRequestError as exc:
        print(exc.status, exc.message)  # 400 knob 'size': 300 is above the maximum 100
"""

from __future__ import annotations

from frameserve.errors import FrameServeError

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ClientError",
    "ConflictError",
    "ConnectError",
    "HTTPStatusError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProtocolViolation",
    "RequestTimeout",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "error_for_status",
]


class ClientError(FrameServeError):
    """Root of every error the HTTP client raises on purpose."""


class TransportError(ClientError):
    """The connection failed while a request was in flight."""


class ConnectError(TransportError):
    """No connection could be made, or the server closed it before answering a byte.

    Raised only after the client's ``retries`` are spent.
    """


class RequestTimeout(TransportError):
    """The server sent nothing for ``timeout`` seconds while a request was in flight."""


class ProtocolViolation(ClientError):
    """The server answered something that is not the protocol (bad status line, JSON, sizes)."""


class HTTPStatusError(ClientError):
    """The server answered with an error status; ``message`` is its ``{"error": ...}`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[type[HTTPStatusError], tuple[int, str]]:
        return (type(self), (self.status, self.message))


class BadRequestError(HTTPStatusError):
    """400: the request was refused (unknown knob, bad value, shape, datatype or input)."""


class AuthenticationError(HTTPStatusError):
    """401: the server needs a token (``token=`` or ``$FRAMESERVE_TOKEN``) and got none it knows."""


class PermissionDeniedError(HTTPStatusError):
    """403: the token is valid, but its role may not do that; the message names the role needed."""


class NotFoundError(HTTPStatusError):
    """404: no model, version or path of that name."""


class ConflictError(HTTPStatusError):
    """409: a training job's state forbids the action (a name in use, resuming a running job)."""


class PayloadTooLargeError(HTTPStatusError):
    """413: the request body is above the server's size cap."""


class ServerError(HTTPStatusError):
    """500: the model failed while running the request."""


class ServiceUnavailableError(HTTPStatusError):
    """503: the server is not ready, or the model failed to load."""


_BY_STATUS: dict[int, type[HTTPStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    500: ServerError,
    503: ServiceUnavailableError,
}


def error_for_status(status: int, message: str) -> HTTPStatusError:
    """Return the most specific :class:`HTTPStatusError` for ``status`` (not raised)."""
    return _BY_STATUS.get(status, HTTPStatusError)(status, message)
