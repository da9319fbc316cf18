"""MLClient framing: the 12-digit headers.

A request is 12 ASCII digits giving the body length, then the body. A reply is 12 ASCII digits
giving **12 + the body length** (the reply header counts itself), then the body.
"""

from __future__ import annotations

from frameserve.errors import ProtocolError

__all__ = ["HEADER_SIZE", "parse_request_header", "reply_header"]

HEADER_SIZE = 12


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
