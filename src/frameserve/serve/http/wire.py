"""HTTP/1.1 on a blocking socket: request heads, bodies into preallocated buffers, responses.

Just what an inference API needs, written for big bodies: the head is parsed from a small
buffer, a ``Content-Length`` body is received straight into one preallocated array (chunked
bodies are joined once), ``Expect: 100-continue`` is answered, connections are kept alive, and
a response's parts are gathered by the kernel rather than joined.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import numpy as np

from frameserve.errors import ProtocolError, RequestTooLargeError
from frameserve.serve.auth.users import ANONYMOUS, User
from frameserve.serve.net.sockets import ClientGone, ClientStalled, recv_exact_into, send_buffers

__all__ = ["HttpConnection", "HttpRequest", "HttpResponse", "write_response"]

MAX_HEAD_BYTES = 64 << 10
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CHUNK = 1 << 16


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
    #: then :attr:`body` is empty. Each item is the next piece of the body, in order.
    stream: Iterator[memoryview] | None = None

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after the response."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


@dataclass
class HttpResponse:
    """A response: status, headers and body parts sent in order (never joined)."""

    status: int
    parts: Sequence[Any] = ()
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Total body length in bytes."""
        return sum(memoryview(part).nbytes for part in self.parts)


class HttpConnection:
    """Reads requests from one client connection, keeping bytes that arrive early."""

    def __init__(self, sock: socket.socket, *, idle_timeout: float, request_timeout: float):
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self._pending = bytearray()

    def read_request(self, body_limit: Callable[[str, str], int]) -> HttpRequest | None:
        """Read the next request; ``None`` when the client closed or stayed idle between requests.

        ``body_limit(method, path)`` gives the largest body accepted for that request.

        Raises:
            ProtocolError: a malformed head or body framing.
            RequestTooLargeError: a body above the limit (the body is not read).
            ClientStalled, ClientGone: the client stopped mid-request.
        """
        deadline = time.monotonic() + self.request_timeout
        head = self._read_head(deadline)
        if head is None:
            return None
        request = _parse_head(head)
        request.sock = self.sock
        limit = body_limit(request.method, request.path)
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            self._continue(request)
            request.body = self._read_chunked(limit, deadline)
        else:
            length = _content_length(request.headers)
            if length > limit:
                raise RequestTooLargeError(
                    f"request body of {length} bytes is above the limit of {limit} bytes"
                )
            if length:
                self._continue(request)
            request.body = self._read_exact(length, deadline)
        return request

    def _continue(self, request: HttpRequest) -> None:
        if request.headers.get("expect", "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _fill(self, deadline: float, *, first: bool = False) -> None:
        """Receive more bytes into the pending buffer."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientStalled("request not complete in time")
        self.sock.settimeout(min(self.idle_timeout, remaining))
        try:
            data = self.sock.recv(_CHUNK)
        except TimeoutError:
            raise ClientStalled(f"client sent nothing for {self.idle_timeout:g} s") from None
        if not data:
            raise ClientGone(len(self._pending), -1)
        self._pending += data

    def _read_head(self, deadline: float) -> bytes | None:
        while True:
            end = self._pending.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._pending[:end])
                del self._pending[: end + 4]
                return head
            if len(self._pending) > MAX_HEAD_BYTES:
                raise ProtocolError(f"request head is longer than {MAX_HEAD_BYTES} bytes")
            waiting = not self._pending.strip()
            try:
                self._fill(deadline)
            except (ClientGone, ClientStalled):
                if waiting:  # idle between requests: a normal end of a kept-alive connection
                    return None
                raise

    def _read_exact(self, length: int, deadline: float) -> np.ndarray:
        body = np.empty(length, dtype=np.uint8)
        taken = min(length, len(self._pending))
        if taken:
            body[:taken] = np.frombuffer(self._pending, dtype=np.uint8, count=taken)
            del self._pending[:taken]
        if taken < length:
            try:
                recv_exact_into(
                    self.sock,
                    body.data[taken:],
                    idle_timeout=self.idle_timeout,
                    deadline=deadline,
                )
            except ClientGone as exc:
                raise ProtocolError(
                    f"request body ended after {taken + exc.received} of {length} bytes"
                ) from None
        return body

    def _read_line(self, deadline: float) -> bytes:
        while (end := self._pending.find(b"\r\n")) < 0:
            if len(self._pending) > MAX_HEAD_BYTES:
                raise ProtocolError("chunk header line is too long")
            self._fill(deadline)
        line = bytes(self._pending[:end])
        del self._pending[: end + 2]
        return line

    def _read_chunked(self, limit: int, deadline: float) -> np.ndarray:
        chunks: list[np.ndarray] = []
        total = 0
        while True:
            size_text = self._read_line(deadline).split(b";")[0].strip()
            if not _HEX.fullmatch(size_text):
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while self._read_line(deadline):  # trailers, up to the blank line
                    pass
                break
            total += size
            if total > limit:
                raise RequestTooLargeError(
                    f"request body is above the limit of {limit} bytes (chunked)"
                )
            chunks.append(self._read_exact(size, deadline))
            if self._read_line(deadline):
                raise ProtocolError("chunk data is not followed by CRLF")
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint8)


def _parse_head(head: bytes) -> HttpRequest:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise ProtocolError("request head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header line {line[:100]!r}")
        key = name.lower()
        value = value.strip()
        if key in headers and key == "content-length" and headers[key] != value:
            raise ProtocolError("conflicting Content-Length headers")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    path, _, query = target.partition("?")
    return HttpRequest(method.upper(), unquote(path), query, version, headers)


def _content_length(headers: dict[str, str]) -> int:
    text = headers.get("content-length", "0").strip()
    if not _DIGITS.fullmatch(text):
        raise ProtocolError(f"Content-Length must be a whole number of bytes, got {text[:40]!r}")
    return int(text)


def write_response(
    sock: socket.socket, response: HttpResponse, *, keep_alive: bool, head_only: bool = False
) -> None:
    """Send ``response``; its body parts are gathered by the kernel, not joined.

    ``head_only`` (a HEAD request) sends the headers of the response without its body.
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
    send_buffers(sock, [head] if head_only else [head, *response.parts])
