"""Request framing against a real server: what request smuggling needs is refused.

Each attack is sent on a raw socket, usually with a second, smuggled request right behind it.
The door must answer the first with a 400 naming the problem, close the connection and never
answer the smuggled one (nothing else runs), and go on serving everyone else. Framing that is
merely unusual but valid (trailers, chunk extensions, pipelined requests) is served.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from tests.support.http_client import (
    RawClient,
    assert_still_serving,
    http_head,
    infer_body,
    outputs_of,
    random_frame,
)

#: A request smuggled behind an attack: it must never be answered.
SMUGGLED = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
INFER = b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n"
#: A path whose body limit is a little JSON (1 MiB).
SMALL = b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\n"


def assert_refused(raw: RawClient, status: int, *fragments: str) -> str:
    """The reply is ``status`` naming ``fragments``; the connection then ends, nothing more."""
    reply = raw.read_response()
    message = reply.error(status, *fragments)
    assert reply.headers["connection"] == "close"
    assert raw.at_eof(), "a second reply (the smuggled request?) came after the refusal"
    return message


# --- Content-Length and Transfer-Encoding -----------------------------------------------------


@pytest.mark.parametrize(
    ("head", "fragments"),
    [
        (
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            ["Transfer-Encoding and Content-Length together"],
        ),
        (
            b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            ["Transfer-Encoding and Content-Length together"],
        ),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", ["conflicting Content-Length", "5, 6"]),
        (b"Content-Length: 5, 6\r\n", ["conflicting Content-Length", "5, 6"]),
        (b"Content-Length: +5\r\n", ["Content-Length must be a whole number", "+5"]),
        (b"Content-Length: 0x5\r\n", ["Content-Length must be a whole number"]),
        (b"Content-Length: 1" + b"0" * 30 + b"\r\n", ["Content-Length must be a whole number"]),
        (b"Transfer-Encoding: gzip, chunked\r\n", ["Transfer-Encoding 'gzip, chunked'"]),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", ["Transfer-Encoding"]),
        (b"Transfer-Encoding: xchunked\r\n", ["Transfer-Encoding 'xchunked'"]),
        (b"Transfer-Encoding : chunked\r\n", ["malformed header line", "Transfer-Encoding :"]),
        (b"Transfer-Encoding:\x0bchunked\r\n", ["malformed header line"]),
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "two-lengths",
        "length-list",
        "plus-sign",
        "hex-length",
        "length-overflow",
        "te-list",
        "te-twice",
        "te-unknown",
        "space-before-colon",
        "vertical-tab",
    ],
)
def test_ambiguous_body_framing_is_400(server, raw, head, fragments):
    raw.send(INFER + head + b"\r\n" + b"0\r\n\r\n" + SMUGGLED)
    assert_refused(raw, 400, *fragments)
    assert_still_serving(server)


def test_transfer_encoding_in_http_1_0_is_400(raw):
    raw.send(
        b"POST /v2/repository/index HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + SMUGGLED
    )
    assert_refused(raw, 400, "Transfer-Encoding", "HTTP/1.0")


# --- lines --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (INFER + b"X-Note: one\r\n two\r\n\r\n", ["obsolete line folding"]),
        (INFER + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", ["obsolete line folding"]),
        (INFER + b"X-Note: one\r\n\ttwo\r\n\r\n", ["obsolete line folding"]),
        (b"GET /v2/health/live HTTP/1.1\nHost: x\n\n", ["CR LF", "bare LF"]),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\n\r\n", ["CR LF"]),
        (b"GET /v2/health/live HTTP/1.1\r\n\r\n", ["Host"]),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ["Host"]),
        (b"G(T /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", ["malformed request line", "G(T"]),
        (b"GET  /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", ["malformed request line"]),
        (b"GET /v2/health/live\r\nHost: x\r\n\r\n", ["malformed request line"]),
        (b"GET /v2/health/live HTTP/2.0\r\nHost: x\r\n\r\n", ["HTTP version 2.0"]),
        (b"GET /v2/health/live HTTP/0.9\r\nHost: x\r\n\r\n", ["HTTP version 0.9"]),
        (b"GET /v2/health/live HTTP/1.1x\r\nHost: x\r\n\r\n", ["malformed request line"]),
        (b"GET /v2/health/live HTTP/11\r\nHost: x\r\n\r\n", ["malformed request line"]),
        (b"GET /v2/he alth/live HTTP/1.1\r\nHost: x\r\n\r\n", ["malformed request line"]),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-\x00: 1\r\n\r\n", ["malformed header"]),
        (b"\x00\x01GET / HTTP/1.1\r\n\r\n", ["malformed request line"]),
        (b"\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", ["malformed request line"]),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ["plain HTTP", "TLS"]),
    ],
    ids=[
        "folded-header",
        "folded-transfer-encoding",
        "folded-with-tab",
        "bare-lf",
        "bare-lf-once",
        "no-host",
        "two-hosts",
        "bad-method",
        "double-space",
        "no-version",
        "http-2",
        "http-0.9",
        "version-suffix",
        "version-11",
        "space-in-target",
        "nul-in-name",
        "control-bytes",
        "leading-crlf",
        "tls-hello",
    ],
)
def test_malformed_heads_are_400(server, raw, data, fragments):
    raw.send(data + SMUGGLED)
    assert_refused(raw, 400, *fragments)


def test_a_request_line_too_long_is_400_before_the_line_ends(server, raw):
    raw.send(b"GET /" + b"a" * 9000)  # no end of line yet: refused without waiting for one
    assert_refused(raw, 400, "request line is longer than 8192 bytes")
    assert_still_serving(server)


def test_a_head_too_large_is_400(server, raw):
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
    raw.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + headers)
    assert_refused(raw, 400, "request head is longer than 65536 bytes")
    assert_still_serving(server)


def test_a_long_head_within_the_limit_is_served(raw):
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(50))
    raw.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    reply = raw.read_response()
    assert (reply.status, reply.body) == (200, b'{"live": true}')


# --- chunked bodies -----------------------------------------------------------------------


CHUNKED = INFER + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "size",
    [b"zz", b"-5", b"+5", b" 5", b"5 5", b"0x5", b"", b"5\x00", b"f" * 21],
    ids=[
        "letters",
        "negative",
        "plus",
        "leading-space",
        "two-numbers",
        "0x",
        "empty",
        "nul",
        "21-digits",
    ],
)
def test_malformed_chunk_sizes_are_400(server, raw, size):
    raw.send(CHUNKED + size + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
    assert_refused(raw, 400, "chunk size")
    assert_still_serving(server)


def test_a_chunk_size_past_64_bits_does_not_wrap_to_zero(server, raw):
    """2**64 is 0 to a parser that wraps: what follows would be a new request to it."""
    raw.send(CHUNKED + b"10000000000000000\r\n" + b"0\r\n\r\n" + SMUGGLED)
    raw.sock.shutdown(socket.SHUT_WR)  # the client sends no more: the chunk never completes
    assert_refused(raw, 400, "request body ended", "chunked")
    assert_still_serving(server)


def test_a_chunk_past_the_body_limit_is_413_as_it_arrives(server, raw):
    raw.send(SMALL + b"Transfer-Encoding: chunked\r\n\r\n" + b"10000000000000000\r\n")
    raw.send(b"x" * ((1 << 20) + 1))
    assert_refused(raw, 413, "above the limit of 1048576 bytes")
    assert_still_serving(server)


def test_a_chunk_longer_than_its_size_is_400(server, raw):
    raw.send(CHUNKED + b"5\r\nhelloEXTRA\r\n0\r\n\r\n" + SMUGGLED)
    assert_refused(raw, 400, "not followed by CRLF")
    assert_still_serving(server)


def test_long_chunk_extensions_are_refused(server, raw):
    extension = b";" + b"e" * 8000
    raw.send(SMALL + b"Transfer-Encoding: chunked\r\n\r\n")
    raw.send(b"".join(b"1" + extension + b"\r\n[\r\n" for _ in range(20)))
    assert_refused(raw, 400, "chunk extensions too long")
    assert_still_serving(server)


def test_a_chunk_line_longer_than_the_head_limit_is_refused(server, raw):
    raw.send(SMALL + b"Transfer-Encoding: chunked\r\n\r\n" + b"1;" + b"e" * (70 << 10))
    assert_refused(raw, 400, "longer than 65536 bytes")
    assert_still_serving(server)


def test_a_flood_of_one_byte_chunks_is_refused(server, raw):
    raw.send(SMALL + b"Transfer-Encoding: chunked\r\n\r\n")
    raw.send(b"1\r\n[\r\n" * 40_000)  # the server reads on (and discards) after refusing
    assert_refused(raw, 400, "chunks too small")
    assert_still_serving(server)


def test_a_chunked_body_cut_short_is_400(server, raw):
    raw.send(CHUNKED + b"10\r\nonly some")
    raw.sock.shutdown(socket.SHUT_WR)
    assert_refused(raw, 400, "request body ended")
    assert_still_serving(server)


# --- valid framing is served --------------------------------------------------------------


def test_chunk_extensions_and_trailers_are_served(raw):
    frame = random_frame(40, height=3, width=4)
    body, headers = infer_body([("image", frame)])
    chunks = [body[i : i + 64] for i in range(0, len(body), 64)]
    encoded = b"".join(b"%X;name=value;x\r\n%s\r\n" % (len(c), c) for c in chunks)
    headers["Transfer-Encoding"] = "chunked"
    trailer = b"0\r\nX-Checksum: none\r\n\r\n"
    raw.send(http_head("POST", "/v2/models/identity/infer", headers) + encoded + trailer)
    np.testing.assert_array_equal(outputs_of(raw.read_response())["image"], frame)


def test_pipelined_requests_after_a_chunked_body_are_each_answered(raw):
    frame = random_frame(41, height=2, width=3)
    body, headers = infer_body([("image", frame)])
    chunked = http_head(
        "POST", "/v2/models/identity/infer", headers | {"Transfer-Encoding": "chunked"}
    )
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    length = http_head(
        "POST", "/v2/models/identity/infer", headers | {"Content-Length": str(len(body))}
    )
    raw.send(chunked + length + body + SMUGGLED)  # three requests in one write
    np.testing.assert_array_equal(outputs_of(raw.read_response())["image"], frame)
    np.testing.assert_array_equal(outputs_of(raw.read_response())["image"], frame)
    third = raw.read_response()
    assert (third.status, third.body) == (200, b'{"live": true}')
