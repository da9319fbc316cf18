"""The HTTP front door: Open Inference Protocol v2 over kept-alive HTTP/1.1 (or HTTPS).

The door is built with its routes (:mod:`frameserve.serve.http.routes`: the inference API,
the training API, ...) and hands each request to the one that serves its path; it reads and
writes HTTP (:mod:`frameserve.serve.http.wire`), logs one line per request naming the user,
and counts the requests that name a model in the engine's metrics.

Each request goes through the door in this order, so nothing is read that will not be used:

1. the head (within ``header_timeout``);
2. :meth:`Router.admit` from the head alone (who sent it, and may they): a refusal (401, 403)
   is sent at once and the connection closed, the body never read;
3. the body limit of the route: a larger ``Content-Length`` is a 413 before any of it is read;
4. the body: streamed to a route that asks for it (``Route.streams_body``), else read into
   one buffer;
5. the route's answer.

Each connection has its own thread and serves requests one after another until the client
closes, stays idle for ``read_timeout`` seconds or asks to close. Every failure is answered with
a JSON ``{"error": ...}`` and the status of :mod:`frameserve.serve.http.status`; after a framing
error, or a body left unread, the connection is closed, because the next request's start can
no longer be found. Before closing such a connection the door stops writing and discards what
the client still sends for a moment (bounded), so that the client reads the answer instead of
a reset. With ``settings.tls_cert`` and ``tls_key`` the door speaks HTTPS only
(:mod:`frameserve.serve.http.tls`), the handshake on the connection's thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Sequence

from frameserve.engine.engine import Engine
from frameserve.errors import FrameServeError
from frameserve.serve.http.routes import Route, Router, error_response
from frameserve.serve.http.status import status_for
from frameserve.serve.http.tls import PlainHttpError, handshake, server_context
from frameserve.serve.http.wire import HttpConnection, HttpRequest, HttpResponse, write_response
from frameserve.serve.net.listener import FrontDoor
from frameserve.serve.net.sockets import ClientGone, ClientStalled
from frameserve.serve.settings import DoorSettings, HttpDoorSettings

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)

#: Longest time, and most bytes, a closing connection discards of what its client still sends.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 << 20


class HttpServer(FrontDoor):
    """Serves ``routes`` over HTTP on ``settings.host:settings.port``; HTTPS when
    ``settings`` (an :class:`HttpDoorSettings`) names a certificate and key.

    ``engine`` counts each request that names a model (:meth:`Engine.record_request`).

    Raises:
        ConfigError: the TLS certificate or key cannot be used.
    """

    def __init__(self, settings: DoorSettings, *, engine: Engine, routes: Sequence[Route]) -> None:
        self.settings = settings
        self.engine = engine
        self.router = Router(routes)
        self.tls: ssl.SSLContext | None = None
        if isinstance(settings, HttpDoorSettings) and settings.tls_cert and settings.tls_key:
            self.tls = server_context(settings.tls_cert, settings.tls_key)
        super().__init__(
            name="HTTPS API" if self.tls else "HTTP API",
            host=settings.host,
            port=settings.port,
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
        )

    @property
    def scheme(self) -> str:
        """``"https"`` when the door speaks TLS, else ``"http"``."""
        return "https" if self.tls else "http"

    def _refuse(self, conn: socket.socket, client: str, reason: str) -> None:
        message = f"server busy: {reason}"
        log.warning("%s refused: %s", client, message)
        self._answer_and_close(conn, error_response(503, message), time.monotonic())

    def _answer_and_close(self, conn: socket.socket, response: HttpResponse, since: float) -> None:
        """Send ``response`` on a connection not served further (TLS first, where spoken)."""
        sock: socket.socket | None = conn
        try:
            if self.tls is not None:
                sock = self._open_tls(conn, "-", since)
            if sock is not None:
                sock.settimeout(self.settings.read_timeout)
                write_response(sock, response, keep_alive=False)
        except OSError:
            pass
        finally:
            _close(sock if sock is not None else conn, linger=True)

    def _serve_connection(self, conn: socket.socket, client: str) -> None:
        connected = time.monotonic()
        sock: socket.socket | None = conn
        linger = False
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self._open_tls(conn, client, connected)
            if sock is None:
                return
            connection = HttpConnection(sock, self.settings, connected=connected)
            while (outcome := self._serve_one(connection, client)) == "keep":
                pass
            linger = outcome == "linger"
        except OSError as exc:
            log.info("%s: connection failed: %s", client, exc)
        finally:
            _close(sock if sock is not None else conn, linger=linger)

    def _open_tls(self, conn: socket.socket, client: str, connected: float) -> socket.socket | None:
        """The TLS socket over ``conn`` once the handshake is done; ``None`` if it failed."""
        assert self.tls is not None
        try:
            return handshake(conn, self.tls, deadline=connected + self.settings.header_timeout)
        except PlainHttpError:
            message = "this port speaks HTTPS only: use https:// (TLS) to reach it"
            log.info("%s refused: %s", client, message)
            with contextlib.suppress(OSError):
                conn.settimeout(self.settings.read_timeout)
                write_response(conn, error_response(400, message), keep_alive=False)
            _close(conn, linger=True)
        except (ClientStalled, ClientGone, ssl.SSLError, OSError) as exc:
            log.info("%s: TLS handshake failed: %s", client, exc)
        return None

    def _serve_one(self, connection: HttpConnection, client: str) -> str:
        """Read and answer one request; return what becomes of the connection.

        ``"keep"``: it stays open for the next request; ``"close"``: it closes; ``"linger"``:
        it closes, discarding for a moment what the client still sends (its body, unread).
        """
        started = time.perf_counter()
        model: str | None = None
        target = "-"
        user = "-"
        size = "-"
        keep_alive = False
        head_only = False
        try:
            request = connection.read_head()
            if request is None:
                return "close"
            started = time.perf_counter()
            target = f"{request.method} {request.path}"
            head_only = request.method == "HEAD"
            refusal = self.router.admit(request)
            user = request.user.name
            if refusal is not None:
                response = refusal
            else:
                keep_alive = request.keep_alive
                response, model = self._answer(connection, request, client)
                size = request.size
        except FrameServeError as exc:  # ProtocolError, RequestTooLargeError: framing or size
            response = error_response(status_for(exc), str(exc))
        except ClientStalled as exc:
            response = error_response(408, f"request incomplete: {exc}")
        except (ClientGone, OSError) as exc:
            log.info("%s %s dropped: %s", client, target, exc)
            return "close"
        # a door that is closing ends each kept-alive connection after its answer, so a client
        # reconnects (to the server that replaces this one) instead of asking a closed engine
        keep_alive = keep_alive and connection.body_done and not self.closing
        try:
            connection.write(response, keep_alive=keep_alive, head_only=head_only)
        except OSError as exc:
            log.info("%s %s: reply not delivered: %s", client, target, exc)
            return "close"
        elapsed = time.perf_counter() - started
        if model is not None:
            self.engine.record_request(
                model=model,
                protocol="http",
                outcome="ok" if response.status < 400 else str(response.status),
                seconds=elapsed,
                user=user,
                size=size,
            )
        log.info(
            "%s %s model=%s %d %.1f ms worker=%s user=%s %s",
            client,
            target,
            model or "-",
            response.status,
            elapsed * 1000,
            response.worker,
            user,
            "ok" if response.status < 400 else f"error: {_message(response)}",
        )
        if keep_alive:
            return "keep"
        return "close" if connection.body_done else "linger"

    def _answer(
        self, connection: HttpConnection, request: HttpRequest, client: str
    ) -> tuple[HttpResponse, str | None]:
        """Read the body as the route wants it, then let the route answer."""
        method, path = request.method, request.path
        route = self.router.route(path)
        streams = route is not None and route.streams_body(method, path)
        connection.read_body(request, self.router.body_limit(method, path), stream=streams)
        try:
            return self.router.handle(request, client)
        except (ClientGone, ClientStalled):
            raise  # the client left or stalled (a streamed body): nothing more to answer
        except FrameServeError as exc:  # a route that let its own error through, or a stream's
            return error_response(status_for(exc), str(exc)), None
        except Exception as exc:  # the server keeps serving whatever a request does
            log.exception("%s %s %s: unexpected failure", client, method, path)
            return error_response(500, f"internal server error: {type(exc).__name__}: {exc}"), None


def _close(sock: socket.socket, *, linger: bool) -> None:
    """Close ``sock``; with ``linger``, first stop writing and discard what the client still
    sends (up to :data:`_LINGER_BYTES`, for :data:`_LINGER_SECONDS` at most), so that the
    answer already sent is read rather than lost to a reset."""
    with contextlib.suppress(OSError):
        if linger:
            sock.shutdown(socket.SHUT_WR)
            until = time.monotonic() + _LINGER_SECONDS
            scratch = bytearray(64 << 10)
            discarded = 0
            while discarded < _LINGER_BYTES and (left := until - time.monotonic()) > 0:
                sock.settimeout(left)
                count = sock.recv_into(scratch)
                if not count:
                    break
                discarded += count
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _message(response: HttpResponse) -> str:
    first = response.parts[0] if response.parts else b""
    return bytes(first[:300]).decode("utf-8", "replace")
