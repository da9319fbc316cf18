"""HTTP/1.1 request framing by h11, held stricter where request smuggling lives.

Request heads and chunked bodies are framed by h11 (https://h11.readthedocs.io), a small,
well-kept, pure-Python HTTP/1.1 parser: the request line, header names and values, the
``Content-Length`` and ``Transfer-Encoding`` rules, the ``Host`` rule, chunk sizes, chunk
footers and trailers. (:mod:`frameserve.serve.http.wire` says why a ``Content-Length`` body
bypasses it.)

On top of h11, each of these is refused (a :class:`~frameserve.errors.ProtocolError`, which
the door answers with a 400 naming it, then closes the connection, since the next request's
start can no longer be trusted):

- ``Transfer-Encoding`` together with ``Content-Length`` (h11 lets the first win), and
  ``Transfer-Encoding`` on HTTP/1.0;
- obsolete line folding, and line ends without CR (h11 accepts both);
- a request line over :data:`MAX_REQUEST_LINE` or a head over :data:`MAX_HEAD_BYTES` bytes;
- HTTP versions other than 1.0 and 1.1;
- a chunked body whose framing (size lines, extensions, trailers) outweighs its data by more
  than :data:`FRAMING_ALLOWANCE` bytes: tiny chunks or long chunk extensions (which h11
  discards) cannot make a small body cost a large read.

h11 itself refuses conflicting ``Content-Length`` values (``5, 6`` too), transfer codings
other than one ``chunked``, a missing or repeated ``Host``, and malformed chunk sizes (it takes
1 to 20 hex digits; a chunk larger than the body limit is a 413 once the body passes it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h11

from frameserve.errors import ProtocolError

__all__ = [
    "FRAMING_ALLOWANCE",
    "MAX_HEAD_BYTES",
    "MAX_REQUEST_LINE",
    "Head",
    "chunk_error",
    "head_end",
    "parse_head",
]

#: Longest request head accepted, in bytes (request line, headers, blank line).
MAX_HEAD_BYTES = 64 << 10
#: Longest request line accepted, in bytes (method, target with its query, version).
MAX_REQUEST_LINE = 8 << 10
#: Bytes of chunked framing (size lines, extensions, trailers) a body may carry beyond its
#: data bytes: ordinary chunks of a few bytes or more stay well inside it.
FRAMING_ALLOWANCE = 64 << 10

_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a head, too
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_TLS_HANDSHAKE = 0x16


@dataclass
class Head:
    """A parsed request head.

    Attributes:
        method, target, version: from the request line (``"GET"``, ``"/v2?x=1"``, ``"1.1"``).
        headers: lower-case names; a repeated header's values joined with ``", "``.
        length: the ``Content-Length``; ``None`` for a chunked body.
        framing: the h11 connection that read the head; it decodes a chunked body next.
    """

    method: str
    target: str
    version: str
    headers: dict[str, str]
    length: int | None
    framing: h11.Connection


def head_end(pending: bytes | bytearray, searched: int = 0) -> int | None:
    """Where the head at the start of ``pending`` ends (after its blank line); ``None``: not
    yet. ``searched``: bytes already searched by an earlier call.

    Raises:
        ProtocolError: bytes that cannot start a request, or a request line or head too long
            (checked before the end is there, so a client cannot make the server hold more).
    """
    if pending and pending[0] < 0x21:
        if pending[0] == _TLS_HANDSHAKE:
            raise ProtocolError("this port speaks plain HTTP; the client started a TLS handshake")
        raise ProtocolError(f"malformed request line {bytes(pending[:40])!r}")
    found = _HEAD_END.search(pending, max(0, searched - 2))
    line_end = pending.find(b"\n", 0, MAX_REQUEST_LINE + 1)
    if line_end < 0 and len(pending) > MAX_REQUEST_LINE:
        raise ProtocolError(f"request line is longer than {MAX_REQUEST_LINE} bytes")
    end = found.end() if found is not None else len(pending)
    if end > MAX_HEAD_BYTES:
        raise ProtocolError(f"request head is longer than {MAX_HEAD_BYTES} bytes")
    return found.end() if found is not None else None


def parse_head(head: bytes) -> Head:
    """Parse a whole request head (blank line included, as :func:`head_end` delimits it).

    Raises:
        ProtocolError: a malformed head, or one that request smuggling could use.
    """
    if head.count(b"\n") != head.count(b"\r\n"):
        raise ProtocolError("request head lines must end with CR LF; a bare LF was found")
    if b"\n " in head or b"\n\t" in head:
        raise ProtocolError(
            "obsolete line folding (a header line starting with a space or tab) is not "
            "accepted; send each header on one line"
        )
    framing = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    framing.receive_data(head)
    try:
        event = framing.next_event()
    except h11.RemoteProtocolError as exc:
        raise _head_error(exc, head) from None
    if not isinstance(event, h11.Request):  # pragma: no cover - the head ends where h11's does
        raise ProtocolError("malformed request head")
    version = event.http_version.decode("ascii")
    if version not in ("1.0", "1.1"):
        raise ProtocolError(f"HTTP version {version} is not served; use HTTP/1.1 or HTTP/1.0")
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    chunked = "transfer-encoding" in headers
    if chunked and "content-length" in headers:
        raise ProtocolError(
            "Transfer-Encoding and Content-Length together are not accepted (request "
            "smuggling uses them); send one"
        )
    if chunked and version == "1.0":
        raise ProtocolError("Transfer-Encoding is not allowed in an HTTP/1.0 request")
    return Head(
        method=event.method.decode("ascii"),
        target=event.target.decode("ascii"),
        version=version,
        headers=headers,
        length=None if chunked else int(headers.get("content-length", "0")),
        framing=framing,
    )


def chunk_error(exc: h11.RemoteProtocolError, data: int) -> ProtocolError:
    """h11's complaint about a chunked body (``data`` bytes into it) naming the problem."""
    text = str(exc)
    if text.startswith("illegal chunk header"):
        line = text.partition(": ")[2][:60]
        return ProtocolError(
            f"bad chunk size line {line}: a chunk starts with its size in hexadecimal digits"
        )
    if text.startswith("peer closed"):
        return ProtocolError(f"request body ended after {data} bytes, inside its chunked framing")
    if text.startswith("Receive buffer too long"):
        return ProtocolError(
            f"a chunk size line or trailer of the chunked body is longer than {MAX_HEAD_BYTES} "
            "bytes"
        )
    if text.startswith("malformed chunk footer"):
        return ProtocolError("chunk data is not followed by CRLF (a chunk size that lies)")
    return ProtocolError(f"malformed chunked body: {text}")


def _head_error(exc: h11.RemoteProtocolError, head: bytes) -> ProtocolError:
    """h11's complaint about ``head`` as a message naming the problem and the line."""
    text = str(exc)
    lines = head.split(b"\r\n")
    if text.startswith("illegal request line"):
        return ProtocolError(
            f"malformed request line {lines[0][:100].decode('latin-1')!r}: "
            "it must be METHOD TARGET HTTP/1.1"
        )
    if text.startswith("illegal header line"):
        bad = next((line for line in lines[1:] if line and not _header_ok(line)), None)
        if bad is None:
            return ProtocolError(f"malformed header line: {text[:200]}")
        return ProtocolError(f"malformed header line {bad[:100].decode('latin-1')!r}")
    if "Content-Length" in text:
        values = ", ".join(_values(lines, b"content-length"))[:100]
        if text.startswith("conflicting"):
            return ProtocolError(f"conflicting Content-Length headers: {values}")
        return ProtocolError(f"Content-Length must be a whole number of bytes, got {values!r}")
    if "Transfer-Encoding" in text:
        codings = ", ".join(_values(lines, b"transfer-encoding"))[:100]
        return ProtocolError(
            f"Transfer-Encoding {codings!r} is not accepted: only one Transfer-Encoding "
            "header, 'chunked'"
        )
    if "Host" in text:
        return ProtocolError(f"{text}: an HTTP/1.1 request names its Host exactly once")
    return ProtocolError(f"malformed request head: {text}")


def _values(lines: list[bytes], name: bytes) -> list[str]:
    """The values of header ``name`` (lower case) among the head's ``lines``."""
    found = []
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            found.append(value.strip().decode("latin-1"))
    return found


def _header_ok(line: bytes) -> bool:
    """Roughly h11's rule for a header line (only used to name the line h11 refused)."""
    name, colon, value = line.partition(b":")
    if not colon or _TOKEN.fullmatch(name) is None:
        return False
    return not any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in value)
