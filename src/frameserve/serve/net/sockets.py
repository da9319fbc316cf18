"""Blocking-socket helpers shared by the front doors: exact reads into buffers, gathered writes.

Reads go straight into a preallocated buffer; writes hand the kernel a list of buffers
(``sendmsg``), so frame payloads are never joined into one big bytes object.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

T = TypeVar("T")
#: How often a waiting front door checks whether its client is still there.
_POLL_SECONDS = 0.05

__all__ = [
    "ClientGone",
    "ClientStalled",
    "peer_closed",
    "recv_exact_into",
    "send_buffers",
    "wait_while_connected",
]

_MAX_IOV = 512


class ClientGone(Exception):
    """The client closed the connection before sending what it announced."""

    def __init__(self, received: int, expected: int) -> None:
        super().__init__(f"connection closed after {received} of {expected} bytes")
        self.received = received
        self.expected = expected


class ClientStalled(Exception):
    """The client stopped sending before the request was complete."""


def recv_exact_into(
    sock: socket.socket, view: memoryview, *, idle_timeout: float, deadline: float
) -> None:
    """Fill ``view`` from ``sock``.

    Raises:
        ClientGone: the peer closed the connection first.
        ClientStalled: nothing arrived for ``idle_timeout`` seconds, or ``deadline``
            (a ``time.monotonic`` value) passed.
    """
    received = 0
    expected = len(view)
    while received < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientStalled(f"request not complete in time ({received} of {expected} bytes)")
        sock.settimeout(min(idle_timeout, remaining))
        try:
            count = sock.recv_into(view[received:])
        except TimeoutError:
            raise ClientStalled(
                f"client sent nothing for {idle_timeout:g} s ({received} of {expected} bytes)"
            ) from None
        if count == 0:
            raise ClientGone(received, expected)
        received += count


def send_buffers(sock: socket.socket, buffers: Iterable[Any]) -> None:
    """Send every buffer in order, without joining them (partial writes handled)."""
    views = [view for view in map(_byte_view, buffers) if len(view)]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first : first + _MAX_IOV])
        while sent:
            head = views[first]
            if sent >= len(head):
                sent -= len(head)
                first += 1
            else:
                views[first] = head[sent:]
                sent = 0


def _byte_view(buffer: Any) -> memoryview:
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has closed (or reset) the connection; bytes it sent are left unread."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


def wait_while_connected(sock: socket.socket, future: Future[T]) -> T:
    """Wait for ``future``; if the client goes away first, cancel it and raise ClientGone.

    A cancelled request still queued is dropped before it reaches a model (Nuke aborts
    renders this way while the artist scrubs).
    """
    while True:
        try:
            return future.result(timeout=_POLL_SECONDS)
        except FutureTimeout:
            if peer_closed(sock):
                future.cancel()
                raise ClientGone(0, 0) from None
