"""Keep-alive HTTP/1.1 over :mod:`http.client`: a small pool, timeouts, retries on connect.

:class:`HTTPTransport` sends one request and returns the whole answer as a :class:`Response`
whose body was read with ``readinto`` into one preallocated ``bytearray`` (no other copy).
Request bodies are sequences of buffers written one after another, never joined.

It is thread-safe: idle connections wait in a lock-protected pool, and a connection belongs to
one request at a time. What it retries, and what it never does:

- a connection that could not be made (refused, unreachable, connect timeout) or that closed
  before the first byte of an answer: up to ``retries`` more times, after 0.1 s, 0.2 s, 0.4 s...
  (a pooled connection the server had closed while idle is replaced at once, without counting);
- an answer with an error status, a timeout after the request was sent, a connection lost
  in the middle of an answer, a failed TLS handshake (a certificate not trusted): never.

Over HTTPS (``ssl_context``) the same holds; ``headers`` (the ``Authorization`` of a token) go
with every request.
"""

from __future__ import annotations

import errno
import http.client
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from frameserve.client._exceptions import (
    ConnectError,
    ProtocolViolation,
    RequestTimeout,
    TransportError,
)

__all__ = ["HTTPTransport", "Response"]

log = logging.getLogger(__name__)

#: First pause before a retry; it doubles after each, up to :data:`MAX_BACKOFF`.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 2.0
#: Idle connections kept for reuse.
MAX_IDLE_CONNECTIONS = 8
#: Largest single write: a socket timeout bounds one ``sendall``, so big frames go in slices.
SEND_SLICE_BYTES = 8 << 20

#: Errors meaning the peer dropped the connection: before an answer began, worth a retry.
_DROPPED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


@dataclass(frozen=True, eq=False)
class Response:
    """One complete HTTP answer."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytearray

    def header(self, name: str) -> str | None:
        """Return the value of header ``name`` (any case), or None."""
        return self.headers.get(name)


class _Dropped(Exception):
    """Internal: the connection failed before any answer; the request may be retried."""

    def __init__(self, cause: BaseException, *, connecting: bool, reused: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.connecting = connecting
        self.reused = reused


class HTTPTransport:
    """Send requests to one ``host:port`` over pooled keep-alive connections.

    ::

        transport = HTTPTransport("127.0.0.1", 8000, timeout=60.0, retries=3)
        response = transport.request("GET", "/v2/health/live")

    ``ssl_context``: speak HTTPS with it (``None``: plain HTTP). ``headers`` are sent with every
    request (a request's own headers of the same name win).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float | None = 60.0,
        retries: int = 3,
        max_idle: int = MAX_IDLE_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be above 0 seconds or None, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.ssl_context = ssl_context
        self.headers = dict(headers or {})
        self._max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def address(self) -> str:
        """``host:port`` as written in messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: Sequence[bytes | memoryview] = (),
    ) -> Response:
        """Send one request and return the whole answer, whatever its status.

        ``body`` is a sequence of buffers sent in order; ``Content-Length`` is their total.

        Raises:
            ConnectError: no connection, or it closed before any answer, ``retries + 1`` times;
                or the TLS handshake failed (at once).
            RequestTimeout: no byte for ``timeout`` seconds once connected.
            TransportError: the connection broke in the middle of the answer.
            ProtocolViolation: the answer is not HTTP/1.1.
        """
        attempts = 0
        backoff = FIRST_BACKOFF
        while True:
            conn, reused = self._checkout()
            try:
                sent = {**self.headers, **(headers or {})}
                response = self._exchange(conn, method, path, sent, body, reused)
            except _Dropped as dropped:
                conn.close()
                if dropped.reused:
                    log.debug("pooled connection to %s was closed; reconnecting", self.address)
                    continue
                attempts += 1
                if attempts > self.retries:
                    raise _connect_error(self.address, method, path, dropped, attempts) from (
                        dropped.cause
                    )
                log.debug(
                    "%s %s: %s (attempt %d); retrying in %.1f s",
                    method,
                    path,
                    dropped.cause,
                    attempts,
                    backoff,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except BaseException:
                conn.close()
                raise
            if response.will_close:
                conn.close()
            else:
                self._checkin(conn)
            return response.result

    def close(self) -> None:
        """Close every idle connection; requests in flight finish and close theirs."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = True
        for conn in idle:
            conn.close()

    # -- one exchange ---------------------------------------------------------------------

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Sequence[bytes | memoryview],
        reused: bool,
    ) -> _Answer:
        if conn.sock is None:
            try:
                conn.connect()
            except ssl.SSLError as exc:  # not worth a retry: the same certificate comes back
                raise ConnectError(
                    f"{method} {path}: the TLS handshake with {self.address} failed: "
                    f"{exc.reason or exc} (is the server's certificate trusted? Client's verify=)"
                ) from exc
            except OSError as exc:  # refused, unreachable, name lookup, connect timeout
                raise _Dropped(exc, connecting=True, reused=False) from exc
        length = sum(memoryview(part).nbytes for part in body)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body or method in ("POST", "PUT"):
                conn.putheader("Content-Length", str(length))
            first = bytes(body[0]) if body and memoryview(body[0]).nbytes <= 65536 else None
            conn.endheaders(first)  # the request line, headers and a small first part: one write
            for part in body[1:] if first is not None else body:
                _send_slices(conn, memoryview(part).cast("B"))
        except TimeoutError as exc:
            raise RequestTimeout(
                f"{method} {path}: could not send the request to {self.address} "
                f"within {self.timeout} s"
            ) from exc
        except _DROPPED as exc:
            # The server may have answered early (an error status) and closed: read it if so.
            # Errors once its answer has begun are its own, and never retried.
            try:
                return self._read(conn, method, path)
            except _Dropped:
                raise _Dropped(exc, connecting=False, reused=reused) from exc
        except OSError as exc:
            raise TransportError(f"{method} {path}: sending to {self.address} failed") from exc
        try:
            return self._read(conn, method, path)
        except _Dropped as dropped:
            raise _Dropped(dropped.cause, connecting=False, reused=reused) from dropped.cause

    def _read(self, conn: http.client.HTTPConnection, method: str, path: str) -> _Answer:
        where = f"{method} {path}"
        try:
            response = conn.getresponse()
        except TimeoutError as exc:
            raise RequestTimeout(
                f"{where}: {self.address} sent no answer within {self.timeout} s"
            ) from exc
        except (http.client.RemoteDisconnected, *_DROPPED) as exc:
            raise _Dropped(exc, connecting=False, reused=False) from exc
        except http.client.HTTPException as exc:
            raise ProtocolViolation(f"{where}: {self.address} answered bad HTTP: {exc!r}") from exc
        except OSError as exc:
            raise TransportError(f"{where}: reading from {self.address} failed: {exc}") from exc
        try:
            body = _read_body(response)
        except TimeoutError as exc:
            raise RequestTimeout(
                f"{where}: {self.address} stopped sending its answer for {self.timeout} s"
            ) from exc
        except _Incomplete as exc:
            raise TransportError(f"{where}: {self.address} {exc}") from exc
        except http.client.HTTPException as exc:
            raise ProtocolViolation(f"{where}: {self.address} answered bad HTTP: {exc!r}") from exc
        except OSError as exc:
            raise TransportError(f"{where}: reading from {self.address} failed: {exc}") from exc
        result = Response(response.status, response.reason, response.headers, body)
        return _Answer(result, will_close=bool(response.will_close))

    # -- the pool -------------------------------------------------------------------------

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connection(), False
            if conn.sock is not None and not _peer_closed(conn.sock):
                return conn, True
            conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self.ssl_context is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=self.ssl_context
        )

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()


@dataclass(frozen=True)
class _Answer:
    result: Response
    will_close: bool


class _Incomplete(Exception):
    """Internal: the body ended before its ``Content-Length``."""


def _send_slices(conn: http.client.HTTPConnection, view: memoryview) -> None:
    for start in range(0, view.nbytes, SEND_SLICE_BYTES):
        conn.send(view[start : start + SEND_SLICE_BYTES])


def _read_body(response: http.client.HTTPResponse) -> bytearray:
    """Read the whole body: into one preallocated buffer when its length is announced."""
    length = response.length
    if length is None or length == 0:  # chunked, until close, or empty: rare and small
        return bytearray(response.read())
    body = bytearray(length)
    view = memoryview(body)
    filled = 0
    while filled < length:
        got = response.readinto(view[filled:])
        if not got:
            raise _Incomplete(f"closed the connection after {filled} of {length} body bytes")
        filled += got
    return body


def _peer_closed(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket is readable: the server closed it (or sent junk)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True


def _connect_error(
    address: str, method: str, path: str, dropped: _Dropped, attempts: int
) -> ConnectError:
    cause = dropped.cause
    if dropped.connecting:
        if isinstance(cause, TimeoutError):
            what = "timed out connecting"
        elif isinstance(cause, socket.gaierror):
            what = f"could not look up the host ({cause.strerror})"
        elif isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            what = "refused the connection (is the server running, on this port?)"
        else:
            what = f"could not be reached ({cause})"
    else:
        what = f"closed the connection before answering ({type(cause).__name__}: {cause})"
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return ConnectError(f"{method} {path}: {address} {what}; gave up after {tries}")
