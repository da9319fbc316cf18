"""MLClient framing on a blocking socket: the 12-digit headers, exact reads, gathered writes.

A request is 12 ASCII digits giving the body length, then the body. A reply is 12 ASCII digits
giving **12 + the body length** (the reply header counts itself), then the body. Reads go
straight into a preallocated buffer; writes hand the kernel a list of buffers (``sendmsg``), so
frame payloads are never joined into one big bytes object.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any

from frameserve.errors import ProtocolError
from frameserve.protocols.mlclient.wirecodec import WirePixels

__all__ = [
    "HEADER_SIZE",
    "ClientGone",
    "ClientStalled",
    "parse_request_header",
    "recv_exact_into",
    "reply_header",
    "send_buffers",
]

HEADER_SIZE = 12
_MAX_IOV = 512


class ClientGone(Exception):
    """The client closed the connection before sending what it announced."""

    def __init__(self, received: int, expected: int) -> None:
        super().__init__(f"connection closed after {received} of {expected} bytes")
        self.received = received
        self.expected = expected


class ClientStalled(Exception):
    """The client stopped sending before the request was complete."""


def parse_request_header(header: bytes | bytearray | memoryview) -> int:
    """Return the body length announced by a 12-digit request header."""
    raw = bytes(header)
    if len(raw) != HEADER_SIZE or not raw.isdigit():
        raise ProtocolError(
            f"request header must be {HEADER_SIZE} ASCII digits giving the body length, "
            f"got {raw[:HEADER_SIZE]!r}"
        )
    return int(raw)


def reply_header(body_length: int) -> bytes:
    """Return the reply header for a body of ``body_length`` bytes (12 + length, zero-padded)."""
    total = HEADER_SIZE + body_length
    if total >= 10**HEADER_SIZE:
        raise ProtocolError(f"reply of {body_length} bytes does not fit the 12-digit header")
    return b"%012d" % total


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


def send_buffers(sock: socket.socket, buffers: Sequence[Any]) -> None:
    """Send every buffer (or :class:`WirePixels`) in order, without joining them."""
    views: list[memoryview] = []
    for part in buffers:
        if isinstance(part, WirePixels):
            views += part.views
        else:
            views.append(_byte_view(part))
    views = [v for v in views if len(v)]
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
