"""Server-Sent Events for the dashboard: one bounded, heartbeating stream per open page.

A page opens ``GET /v2/dashboard/events?page=overview`` (``models``, ``training``) with its
token and receives ``event: <page>`` messages, each ``data:`` one JSON document, whenever what
the page shows changes (looked at every :data:`TICK_SECONDS`), and a comment line every
:data:`HEARTBEAT_SECONDS` so that proxies and the browser know the stream is alive::

    event: overview
    data: {"health": {...}, "queue": {"interactive": 0, "batch": 0}, ...}

    : heartbeat

**Bounds.** At most ``limit`` streams are open at once (:data:`DEFAULT_MAX_STREAMS`); one more
is a 503 naming the cap. A stream ends when its client leaves or sends anything (a stream is
one-way), when the client stops reading for ``write_timeout`` seconds, and within a tick of
:meth:`EventStreams.close` (the server shutting down). Then the connection closes: the
connection's thread writes the stream itself, after the head the HTTP door would have
written, so no other request follows on it.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from frameserve.errors import ServerBusyError
from frameserve.serve.net.sockets import ClientGone

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "HEARTBEAT_SECONDS",
    "TICK_SECONDS",
    "EventStreamEnded",
    "EventStreams",
]

log = logging.getLogger(__name__)

#: Event streams open at once, all pages and users together.
DEFAULT_MAX_STREAMS = 16
#: Seconds between two looks at what a page shows.
TICK_SECONDS = 0.5
#: Seconds between two heartbeat comments on a stream.
HEARTBEAT_SECONDS = 15.0

_HEAD = (
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/event-stream; charset=utf-8\r\n"
    "Cache-Control: no-store\r\n"
    "X-Accel-Buffering: no\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Connection: close\r\n\r\n"
    "retry: 2000\n\n"
).encode("ascii")


class EventStreamEnded(ClientGone):
    """An event stream is over (its client left, or the server shuts down): the door closes
    the connection without writing another answer."""

    def __init__(self, reason: str) -> None:
        Exception.__init__(self, f"event stream ended: {reason}")
        self.received = 0
        self.expected = 0


class EventStreams:
    """Counts and ends the open event streams; writes each one.

    ``limit``: streams open at once; ``write_timeout``: seconds a client may leave a write
    untaken before its stream ends.
    """

    def __init__(self, *, limit: int = DEFAULT_MAX_STREAMS, write_timeout: float = 10.0) -> None:
        self.limit = limit
        self.write_timeout = write_timeout
        self._lock = threading.Lock()
        self._open = 0
        self._closed = threading.Event()

    @property
    def open(self) -> int:
        """How many streams are open now."""
        return self._open

    def close(self) -> None:
        """End every stream within a tick, and refuse new ones (the server shuts down)."""
        self._closed.set()

    def serve(self, sock: socket.socket, event: str, read: Callable[[], Any]) -> None:
        """Stream ``read()`` as ``event`` messages on ``sock`` until the stream ends.

        ``read`` is called every tick; its answer is sent when it differs from the last sent.

        Raises:
            ServerBusyError: ``limit`` streams are open already, or the server shuts down.
            EventStreamEnded: always, when the stream is over (the door closes the connection).
        """
        with self._lock:
            if self._closed.is_set():
                raise ServerBusyError("the server is shutting down: no new event streams")
            if self._open >= self.limit:
                raise ServerBusyError(
                    f"{self.limit} dashboard event streams are open already (the most served "
                    "at once); close a dashboard page or try again later"
                )
            self._open += 1
        started = time.monotonic()
        try:
            reason = self._stream(sock, event, read)
        finally:
            with self._lock:
                self._open -= 1
        raise EventStreamEnded(f"{reason} after {time.monotonic() - started:.1f} s")

    def _stream(self, sock: socket.socket, event: str, read: Callable[[], Any]) -> str:
        """Write the stream; return why it ended."""
        sock.settimeout(self.write_timeout)
        try:
            sock.sendall(_HEAD)
            last = ""
            beat = time.monotonic()
            while not self._closed.is_set():
                try:
                    data = json.dumps(read(), separators=(",", ":"), allow_nan=False)
                except Exception as exc:  # the page's data failed: end this stream, not the door
                    log.exception("dashboard %s stream: reading the page's data failed", event)
                    return f"reading the page's data failed ({type(exc).__name__})"
                now = time.monotonic()
                if data != last:
                    sock.sendall(f"event: {event}\ndata: {data}\n\n".encode())
                    last, beat = data, now
                elif now - beat >= HEARTBEAT_SECONDS:
                    sock.sendall(b": heartbeat\n\n")
                    beat = now
                if _client_spoke(sock, TICK_SECONDS):
                    return "the client closed it"
            return "the server shuts down"
        except TimeoutError:
            return f"the client took nothing for {self.write_timeout:g} s"
        except OSError as exc:
            return f"the client left ({exc.strerror or exc})"


def _client_spoke(sock: socket.socket, wait: float) -> bool:
    """Wait up to ``wait`` seconds; whether the client closed or sent something meanwhile
    (either ends a stream: an event stream is one-way)."""
    poll = select.poll()  # (not select.select: it fails on descriptors above 1023)
    poll.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    if not poll.poll(wait * 1000):
        return False
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        sock.recv(1024)
    except (BlockingIOError, ssl.SSLWantReadError):
        return False  # (TLS) a record that held no data yet
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)
    return True
