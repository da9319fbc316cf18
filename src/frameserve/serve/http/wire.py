"""HTTP/1.1 on a blocking socket: heads framed by h11, bodies into one buffer, gathered replies.

**Who parses what.** Request heads and chunked bodies are framed by h11, held stricter where
request smuggling lives (:mod:`frameserve.serve.http.framing`). A ``Content-Length`` body
bypasses h11: once h11 has read the head, the bytes that came with it start the body and the
rest is received straight into one preallocated numpy buffer (``recv_into``). Fed to h11, every
piece of a frame would come back as a new bytes object: one more copy of each frame, and many
allocations. Bypassing it is safe because the framing is already decided: the next request
starts exactly ``Content-Length`` bytes later, and each request gets a fresh h11 connection
fed what is left over (h11 never writes our responses, so it cannot cycle to the next request
itself). A chunked body is decoded by h11 as it arrives.

**Time.** A request head must be complete within ``header_timeout`` seconds of the connection
opening (the first request) or of its first byte (later requests; an idle kept-alive connection
waits ``read_timeout`` for one); a body of N bytes within ``body_deadline(N)``, arriving at
``min_transfer_rate`` at least after ``header_timeout`` of grace (a chunked body is held to the
rate as it comes); no read waits longer than ``read_timeout``.

Responses: a head written here and the body parts gathered by the kernel (``sendmsg``), never
joined; a TLS socket has no ``sendmsg``, so there the parts go one by one.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import h11
import numpy as np

from frameserve.errors import ProtocolError, RequestTooLargeError
from frameserve.serve.auth.users import ANONYMOUS, User
from frameserve.serve.http.framing import FRAMING_ALLOWANCE, chunk_error, head_end, parse_head
from frameserve.serve.net.sockets import ClientGone, ClientStalled, recv_exact_into, send_buffers
from frameserve.serve.settings import DoorSettings

__all__ = [
    "HttpConnection",
    "HttpRequest",
    "HttpResponse",
    "write_response",
]

#: Bytes asked of the socket per read of a head or a chunked body.
_RECV_BYTES = 64 << 10
#: Size of the pieces a streamed ``Content-Length`` body arrives in.
_STREAM_PIECE = 256 << 10
#: Replies up to this size go to a TLS socket in one write (one record, not one per part).
_SMALL_REPLY = 16 << 10


@dataclass
class HttpRequest:
    """One parsed request: method, path (percent-decoded), headers (lower-case keys), body."""

    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint8))
    sock: socket.socket | None = None  #: the connection, to notice a client that leaves
    #: Who sent it (set by the router after authentication; :data:`ANONYMOUS` without tokens).
    user: User = ANONYMOUS
    #: The body as it arrives, for routes that stream it to disk (``Route.streams_body``);
    #: then :attr:`body` is empty. Each item is the next piece of the body, in order, and stays
    #: valid after the next is asked for. A malformed or cut body raises
    #: :class:`~frameserve.errors.ProtocolError` (or ``RequestTooLargeError``) from the
    #: iterator; a client that stalls, ``ClientStalled`` (the door answers 408).
    stream: Iterator[memoryview] | None = None
    #: Its frames' width x height, set by the route that reads them (``"1920x1080"``,
    #: ``"1920x1080 (4 frames)"``), for the engine's recent requests; ``"-"``: none read.
    size: str = "-"

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after the response."""
        tokens = {token.strip().lower() for token in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class HttpResponse:
    """A response: status, headers and body parts sent in order (never joined)."""

    status: int
    parts: Sequence[Any] = ()
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: The worker process(es) that ran the request, for the log line (not sent).
    worker: str = "-"

    @property
    def length(self) -> int:
        """Total body length in bytes."""
        return sum(memoryview(part).nbytes for part in self.parts)


class HttpConnection:
    """Reads requests from one client connection, keeping bytes that arrive early.

    ``connected`` is the ``time.monotonic()`` value the connection opened at (the first head
    must be complete ``settings.header_timeout`` seconds later).

    Per request: :meth:`read_head`, then :meth:`read_body` (or nothing, when the request is
    refused from its head); :attr:`body_done` then says whether the next request can follow.
    """

    def __init__(
        self, sock: socket.socket, settings: DoorSettings, *, connected: float | None = None
    ) -> None:
        self.sock = sock
        self.settings = settings
        self._connected = time.monotonic() if connected is None else connected
        self._pending = bytearray()
        self._requests = 0
        self._framing: h11.Connection | None = None  # the h11 state of the current request
        self._length: int | None = None  # its Content-Length; None: chunked
        self._body_done = True

    @property
    def body_done(self) -> bool:
        """Whether the current request's body has been read to its end (or it has none)."""
        return self._body_done

    # -- heads -------------------------------------------------------------------------------

    def read_head(self) -> HttpRequest | None:
        """Read the next request's head; ``None`` when the client closed or stayed idle first.

        Raises:
            ProtocolError: a malformed head, or one that smuggling could use.
            ClientStalled: the head did not complete in time.
            ClientGone: the client closed mid-head.
        """
        self._body_done = False
        first_request = self._requests == 0
        self._requests += 1
        if not self._pending:
            now = time.monotonic()
            idle_until = self._connected + self.settings.header_timeout
            if not first_request:
                idle_until = now + self.settings.read_timeout
            try:
                self._receive(idle_until)
            except (ClientGone, ClientStalled):
                return None  # nothing sent: a normal end of an idle or kept-alive connection
        started = self._connected if first_request else time.monotonic()
        deadline = started + self.settings.header_timeout
        searched = 0
        while (end := head_end(self._pending, searched)) is None:
            searched = len(self._pending)
            self._receive(deadline)
        head = parse_head(bytes(self._pending[:end]))
        del self._pending[:end]
        self._framing, self._length = head.framing, head.length
        self._body_done = head.length == 0
        path, _, query = head.target.partition("?")
        return HttpRequest(
            head.method.upper(),
            unquote(path),
            query,
            f"HTTP/{head.version}",
            head.headers,
            sock=self.sock,
        )

    # -- bodies ------------------------------------------------------------------------------

    def read_body(self, request: HttpRequest, limit: int, *, stream: bool = False) -> None:
        """Read the body of ``request`` (the last head read) into ``request.body``.

        ``stream``: set ``request.stream`` instead, an iterator over the body as it arrives
        (the route reads it). ``limit`` is the largest body accepted, in bytes.

        Raises:
            RequestTooLargeError: a ``Content-Length`` above ``limit`` (nothing is read), or a
                chunked body that grows past it.
            ProtocolError: malformed chunked framing, or a body cut short.
            ClientStalled: the body did not arrive in time.
        """
        length = self._length
        if length is not None and length > limit:
            raise RequestTooLargeError(
                f"request body of {length} bytes is above the limit of {limit} bytes"
            )
        if length == 0:
            self._body_done = True
            if stream:
                request.stream = iter(())
            return
        started = time.monotonic()
        if stream:
            pieces = (
                self._stream_exact(request, length, started)
                if length is not None
                else self._chunks(request, limit, started)
            )
            request.stream = pieces
            return
        if length is not None:
            self._continue(request)
            request.body = self._read_exact(length, started)
            self._body_done = True
            return
        body = bytearray()
        for piece in self._chunks(request, limit, started):
            body += piece
        request.body = np.frombuffer(body, dtype=np.uint8)

    def _continue(self, request: HttpRequest) -> None:
        """Answer ``Expect: 100-continue`` once the request is known to be acceptable."""
        expects = request.headers.get("expect", "").lower() == "100-continue"
        if expects and request.version == "HTTP/1.1":
            self.sock.settimeout(self.settings.read_timeout)
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _read_exact(self, length: int, started: float) -> np.ndarray:
        """The whole ``Content-Length`` body, in one buffer allocated for it."""
        body = np.empty(length, dtype=np.uint8)
        taken = min(length, len(self._pending))
        if taken:
            body[:taken] = np.frombuffer(self._pending, dtype=np.uint8, count=taken)
            del self._pending[:taken]
        if taken < length:
            self._receive_exact(body.data[taken:], started, length, before=taken)
        return body

    def _stream_exact(
        self, request: HttpRequest, length: int, started: float
    ) -> Iterator[memoryview]:
        """A ``Content-Length`` body in pieces of up to :data:`_STREAM_PIECE` bytes."""
        self._continue(request)
        received = min(length, len(self._pending))
        if received:
            first = bytes(self._pending[:received])
            del self._pending[:received]
            self._body_done = received == length
            yield memoryview(first)
        while received < length:
            piece = bytearray(min(_STREAM_PIECE, length - received))
            self._receive_exact(memoryview(piece), started, length, before=received)
            received += len(piece)
            self._body_done = received == length
            yield memoryview(piece)

    def _receive_exact(self, view: memoryview, started: float, length: int, before: int) -> None:
        """Fill ``view``, bytes ``before`` onwards of a body of ``length`` bytes."""
        settings = self.settings
        rate = settings.min_transfer_rate
        try:
            recv_exact_into(
                self.sock,
                view,
                idle_timeout=settings.read_timeout,
                deadline=started + settings.body_deadline(length),
                min_rate=rate,
                rate_from=started + settings.header_timeout + before / rate,
            )
        except ClientGone as exc:
            raise ProtocolError(
                f"request body ended after {before + exc.received} of {length} bytes"
            ) from None

    def _chunks(self, request: HttpRequest, limit: int, started: float) -> Iterator[memoryview]:
        """The data of a chunked body, piece by piece, as h11 decodes it."""
        framing = self._framing
        assert framing is not None
        self._continue(request)
        wire = len(self._pending)
        if wire:  # (no bytes at all would tell h11 the client closed)
            framing.receive_data(bytes(self._pending))
            self._pending.clear()
        data = 0
        rate = self.settings.min_transfer_rate
        while True:
            try:
                event = framing.next_event()
            except h11.RemoteProtocolError as exc:
                raise chunk_error(exc, data) from None
            if isinstance(event, h11.Data):
                data += len(event.data)
                if data > limit:
                    raise RequestTooLargeError(
                        f"request body is above the limit of {limit} bytes (chunked)"
                    )
                yield memoryview(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._pending = bytearray(framing.trailing_data[0])
                self._body_done = True
                return
            elif event is h11.NEED_DATA:
                if wire - data > data + FRAMING_ALLOWANCE:
                    raise ProtocolError(
                        f"chunked body framing takes {wire - data} bytes for {data} bytes of "
                        "data: chunks too small or chunk extensions too long"
                    )
                due = started + self.settings.body_deadline(wire + 1)
                try:
                    slow = f"request body arriving slower than {rate:g} bytes/s ({data} bytes)"
                    received = self._receive(due, late=slow)
                except ClientGone:
                    received = 0
                wire += received
                framing.receive_data(bytes(self._pending))  # b"" tells h11 the client closed
                self._pending.clear()
            else:  # pragma: no cover - h11 yields nothing else while a request body is read
                raise ProtocolError("malformed chunked body")

    # -- the socket --------------------------------------------------------------------------

    def _receive(self, deadline: float, *, late: str = "") -> int:
        """Append what the client sends next to the pending bytes; return how many came.

        ``late`` says what was too slow when ``deadline`` passes (default: the head).

        Raises:
            ClientStalled: nothing came for ``read_timeout`` seconds, or ``deadline`` passed.
            ClientGone: the client closed its side.
        """
        idle = self.settings.read_timeout
        late = late or f"request head not complete within {self.settings.header_timeout:g} s"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientStalled(late)
        wait = min(idle, remaining)
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(_RECV_BYTES)
        except TimeoutError:
            raise ClientStalled(
                late if wait < idle else f"client sent nothing for {idle:g} s"
            ) from None
        if not data:
            raise ClientGone(len(self._pending), -1)
        self._pending += data
        return len(data)

    def write(self, response: HttpResponse, *, keep_alive: bool, head_only: bool = False) -> None:
        """Send ``response`` (see :func:`write_response`), waiting at most ``read_timeout``
        for the client to take each piece."""
        self.sock.settimeout(self.settings.read_timeout)
        write_response(self.sock, response, keep_alive=keep_alive, head_only=head_only)


def write_response(
    sock: socket.socket, response: HttpResponse, *, keep_alive: bool, head_only: bool = False
) -> None:
    """Send ``response``; its body parts are gathered by the kernel, not joined.

    ``head_only`` (a HEAD request) sends the headers of the response without its body. On a
    TLS socket (no ``sendmsg``) a small reply goes in one write, a large one part by part.
    """
    reason = HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {response.length}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in response.headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    parts = [head] if head_only else [head, *response.parts]
    if not isinstance(sock, ssl.SSLSocket):
        send_buffers(sock, parts)
    elif len(head) + (0 if head_only else response.length) <= _SMALL_REPLY:
        sock.sendall(b"".join(parts))
    else:
        for part in parts:
            sock.sendall(part)
