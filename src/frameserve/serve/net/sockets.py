"""Blocking-socket helpers shared by the front doors: deadline-bound reads, gathered writes.

Reads go straight into a preallocated buffer; writes hand the kernel a list of buffers
(``sendmsg``), so frame payloads are never joined into one big bytes object.

**Deadlines.** :func:`recv_exact_into` takes absolute deadlines (``time.monotonic`` values),
so a door bounds a whole request however the bytes are spread: an idle timeout between two
pieces, a deadline for the last byte, and optionally a rate the bytes must keep up — the
first ``k`` bytes by ``rate_from + k / min_rate`` — so a client that trickles a byte now and
then is cut as soon as it falls behind, not when the whole request's time is up.

**A client that leaves, and one that only stops sending.** While a request runs,
:func:`wait_while_connected` watches the connection and cancels the work when the client is
gone. A client may half-close its socket once its request is sent (``shutdown(SHUT_WR)``)
and then wait for the reply; the server reads end-of-file then — exactly what it reads when
the client closes the socket altogether. TCP sends the same FIN for both, and only sending
tells them apart (a closed socket answers the data with a reset), which a door cannot do
before its reply is ready. So end-of-file is *not* taken as the client leaving: a reset is
(an abortive close, ``SO_LINGER`` 0; a close with unread data; a peer whose socket is gone),
and so is a write that fails. The cost: a client that closes cleanly while its request runs
has the request run to the end, and the reply is dropped when writing it fails.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

T = TypeVar("T")
#: How often a waiting front door checks whether its client is still there.
_POLL_SECONDS = 0.05

__all__ = [
    "ClientGone",
    "ClientStalled",
    "peer_gone",
    "recv_exact_into",
    "recv_exact_into_views",
    "send_buffers",
    "wait_while_connected",
]


def _iov_max() -> int:
    """Buffers one ``sendmsg`` call may take: the system's limit (Linux: 1024), else 512."""
    try:
        return max(16, min(1024, os.sysconf("SC_IOV_MAX")))
    except (AttributeError, ValueError, OSError):
        return 512


_MAX_IOV = _iov_max()
_HAS_POLL = hasattr(select, "poll")


class ClientGone(Exception):
    """The client closed the connection before sending what it announced."""

    def __init__(self, received: int, expected: int) -> None:
        super().__init__(f"connection closed after {received} of {expected} bytes")
        self.received = received
        self.expected = expected


class ClientStalled(Exception):
    """The client stopped sending, or sent too slowly, before the request was complete."""


def recv_exact_into(
    sock: socket.socket,
    view: memoryview,
    *,
    idle_timeout: float,
    deadline: float,
    min_rate: float | None = None,
    rate_from: float | None = None,
    already: int = 0,
    total: int | None = None,
) -> None:
    """Fill ``view`` from ``sock`` before ``deadline``.

    Args:
        sock: a blocking socket (its timeout is changed).
        view: the bytes to fill, in order.
        idle_timeout: seconds the client may stay silent between two pieces.
        deadline: ``time.monotonic()`` value by which every byte must have arrived.
        min_rate: bytes per second the data must keep arriving at, at least: the first
            ``k`` bytes of ``view`` by ``rate_from + k / min_rate`` (and ``deadline``).
            ``None``: only ``idle_timeout`` and ``deadline`` apply.
        rate_from: ``time.monotonic()`` value the rate counts from (the grace a client has
            before the first byte); the time of the call when not given.
        already: bytes of the same message received before this call (a message read in
            parts): the rate counts them too, and so do the errors' byte counts.
        total: the whole message's length, for the errors (default: ``already`` + the view's).

    Raises:
        ClientGone: the peer closed the connection first.
        ClientStalled: nothing arrived for ``idle_timeout`` seconds, the bytes fell behind
            ``min_rate``, or ``deadline`` passed.
    """
    recv_exact_into_views(
        sock,
        [view],
        idle_timeout=idle_timeout,
        deadline=deadline,
        min_rate=min_rate,
        rate_from=rate_from,
        already=already,
        total=total,
    )


def recv_exact_into_views(
    sock: socket.socket,
    views: Sequence[memoryview],
    *,
    idle_timeout: float,
    deadline: float,
    min_rate: float | None = None,
    rate_from: float | None = None,
    already: int = 0,
    total: int | None = None,
) -> None:
    """Fill ``views`` one after the other from ``sock``, as :func:`recv_exact_into` fills one
    (same deadlines and errors, whose byte counts are of the whole message). Bytes land where
    they belong: no copy after the kernel's (``recvmsg_into``).
    """
    pending = [view for view in views if len(view)]
    received = already
    expected = already + sum(len(view) for view in pending)
    whole = expected if total is None else total
    if min_rate is not None and rate_from is None:
        rate_from = time.monotonic()
    first = 0
    while first < len(pending):
        now = time.monotonic()
        due = deadline
        if min_rate is not None and rate_from is not None:
            due = min(deadline, rate_from + (received + 1) / min_rate)
        remaining = due - now
        if remaining <= 0:
            raise _late(received, whole, paced=due < deadline, min_rate=min_rate)
        wait = min(idle_timeout, remaining)
        sock.settimeout(wait)
        try:
            if first == len(pending) - 1:
                count = sock.recv_into(pending[first])
            else:
                count = sock.recvmsg_into(pending[first : first + _MAX_IOV])[0]
        except TimeoutError:
            if wait < idle_timeout:
                raise _late(received, whole, paced=due < deadline, min_rate=min_rate) from None
            raise ClientStalled(
                f"client sent nothing for {idle_timeout:g} s ({received} of {whole} bytes)"
            ) from None
        if count == 0:
            raise ClientGone(received, whole)
        received += count
        first = _advance(pending, first, count)


def _late(received: int, expected: int, *, paced: bool, min_rate: float | None) -> ClientStalled:
    if paced and min_rate is not None:
        return ClientStalled(
            f"request arriving slower than {min_rate:g} bytes/s ({received} of {expected} bytes)"
        )
    return ClientStalled(f"request not complete in time ({received} of {expected} bytes)")


def send_buffers(sock: socket.socket, buffers: Iterable[Any]) -> None:
    """Send every buffer in order, without joining them (partial writes handled)."""
    views = [view for view in map(_byte_view, buffers) if len(view)]
    first = 0
    while first < len(views):
        first = _advance(views, first, sock.sendmsg(views[first : first + _MAX_IOV]))


def _advance(views: list[memoryview], first: int, count: int) -> int:
    """Mark ``count`` bytes from ``views[first]`` on as done: return the first view not done
    (a view done in part is cut to what is left of it)."""
    while count:
        head = views[first]
        if count >= len(head):
            count -= len(head)
            first += 1
        else:
            views[first] = head[count:]
            count = 0
    return first


def _byte_view(buffer: Any) -> memoryview:
    if type(buffer) is memoryview and buffer.ndim == 1 and buffer.format == "B":
        return buffer  # a frame's rows arrive so: thousands per reply, each used as it is
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def peer_gone(sock: socket.socket) -> bool:
    """Whether the connection was reset (or closed here); end-of-file alone is not "gone".

    Reads nothing: bytes the client sent, and its end-of-file, stay for the next read. See the
    module docstring for why a half-close and a close look the same.
    """
    try:
        if sock.fileno() < 0:
            return True
        if _HAS_POLL:
            poller = select.poll()
            poller.register(sock, select.POLLIN)  # POLLERR, POLLHUP, POLLNVAL always come
            events = poller.poll(0)
            broken = select.POLLERR | select.POLLHUP | select.POLLNVAL
            return any(mask & broken for _, mask in events)
        # Elsewhere a reset shows as a pending socket error (checked when anything happened).
        readable, _, failed = select.select([sock], [], [sock], 0)
        if not (readable or failed):
            return False
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except (OSError, ValueError):
        return True


def wait_while_connected(sock: socket.socket, future: Future[T]) -> T:
    """Wait for ``future``; if the client goes away first, cancel it and raise ClientGone.

    "Goes away" means the connection was reset (:func:`peer_gone`); a client that half-closed
    its socket after sending is still waiting for its reply. A cancelled request still queued
    is dropped before it reaches a model.
    """
    while True:
        try:
            return future.result(timeout=_POLL_SECONDS)
        except FutureTimeout:
            if peer_gone(sock):
                future.cancel()
                raise ClientGone(0, 0) from None
