"""The HTTP front door: Open Inference Protocol v2 over kept-alive HTTP/1.1 connections.

The door is built with its routes (:mod:`frameserve.serve.http.routes`: the inference API,
the training API, ...) and hands each request to the one that serves its path; it reads and
writes HTTP, logs one line per request and counts the requests that name a model in the
engine's metrics.

Each connection has its own thread and serves requests one after another until the client
closes, stays idle for ``read_timeout`` seconds or asks to close. Every failure is answered with
a JSON ``{"error": ...}`` and the status of :mod:`frameserve.serve.http.status`; after a framing
error the connection is closed, because the next request's start can no longer be found.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Sequence

from frameserve.engine.engine import Engine
from frameserve.errors import ProtocolError, RequestTooLargeError
from frameserve.serve.http.routes import Route, Router, error_response
from frameserve.serve.http.status import status_for
from frameserve.serve.http.wire import HttpConnection, HttpResponse, write_response
from frameserve.serve.net.listener import FrontDoor
from frameserve.serve.net.sockets import ClientGone, ClientStalled
from frameserve.serve.settings import DoorSettings

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)


class HttpServer(FrontDoor):
    """Serves ``routes`` over HTTP on ``settings.host:settings.port``.

    ``engine`` counts each request that names a model (:meth:`Engine.record_request`).
    """

    def __init__(self, settings: DoorSettings, *, engine: Engine, routes: Sequence[Route]) -> None:
        self.settings = settings
        self.engine = engine
        self.router = Router(routes)
        super().__init__(
            name="HTTP API",
            host=settings.host,
            port=settings.port,
            max_connections=settings.max_connections,
        )

    def _refuse(self, conn: socket.socket, client: str) -> None:
        message = f"server busy: {self.settings.max_connections} connections are open already"
        log.warning("%s refused: %s", client, message)
        with conn:
            conn.settimeout(self.settings.read_timeout)
            with contextlib.suppress(OSError):
                write_response(conn, error_response(503, message), keep_alive=False)

    def _serve_connection(self, conn: socket.socket, client: str) -> None:
        connection = HttpConnection(
            conn,
            idle_timeout=self.settings.read_timeout,
            request_timeout=self.settings.request_timeout,
        )
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while self._serve_one(connection, client):
                pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _serve_one(self, connection: HttpConnection, client: str) -> bool:
        """Read and answer one request; return whether the connection stays open."""
        started = time.perf_counter()
        model: str | None = None
        target = "-"
        keep_alive = False
        try:
            request = connection.read_request(self.router.body_limit)
            if request is None:
                return False
            target = f"{request.method} {request.path}"
            keep_alive = request.keep_alive
            try:
                response, model = self.router.handle(request, client)
            except ClientGone:
                raise  # the client left while its request waited: nothing to answer
            except Exception as exc:  # the server keeps serving whatever a request does
                log.exception("%s %s: unexpected failure", client, target)
                response = error_response(
                    500, f"internal server error: {type(exc).__name__}: {exc}"
                )
        except (ProtocolError, RequestTooLargeError) as exc:
            response = error_response(status_for(exc), str(exc))
            keep_alive = False  # the next request's start cannot be found any more
        except ClientStalled as exc:
            response = error_response(408, f"request incomplete: {exc}")
            keep_alive = False
        except (ClientGone, OSError) as exc:
            log.info("%s %s dropped: %s", client, target, exc)
            return False
        try:
            head_only = target.startswith("HEAD ")
            write_response(connection.sock, response, keep_alive=keep_alive, head_only=head_only)
        except OSError as exc:
            log.info("%s %s: reply not delivered: %s", client, target, exc)
            return False
        elapsed = (time.perf_counter() - started) * 1000
        outcome = "ok" if response.status < 400 else f"error: {_message(response)}"
        if model is not None:
            self.engine.record_request(
                model=model,
                protocol="http",
                outcome="ok" if response.status < 400 else str(response.status),
                seconds=elapsed / 1000,
            )
        log.info(
            "%s %s model=%s %d %.1f ms %s",
            client,
            target,
            model or "-",
            response.status,
            elapsed,
            outcome,
        )
        return keep_alive


def _message(response: HttpResponse) -> str:
    first = response.parts[0] if response.parts else b""
    return bytes(first[:300]).decode("utf-8", "replace")
