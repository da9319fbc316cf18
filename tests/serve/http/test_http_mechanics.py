"""HTTP/1.1 as the HTTP door speaks it: malformed requests, connections, framing.

Malformed HTTP is answered with 400 and the connection closed; a body cut short is a 400 and a
stalled client a 408 while others are served; the mechanics a client may rely on
(keep-alive, ``Connection: close``, HTTP/1.0, ``Expect: 100-continue``, chunked bodies, HEAD)
work.
"""

from __future__ import annotations

import http.client
import socket

import numpy as np
import pytest

from tests.support.http_client import (
    HANG_GUARD,
    RawClient,
    assert_still_serving,
    http_head,
    infer_body,
    outputs_of,
    random_frame,
    request,
)
from tests.support.servers import start_server

#: Idle timeout of the server that tests stalled clients.
STALL_TIMEOUT = 0.5


# --- malformed HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (b"HELLO THERE\r\n\r\n", ["malformed request line"]),
        (b"GET /v2/health/live HTTP/1.1\r\nHost x\r\n\r\n", ["malformed header", "Host x"]),
        (
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
            ["Content-Length", "'ten'"],
        ),
        (
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            ["Content-Length"],
        ),
        (
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            ["chunk size"],
        ),
    ],
    ids=["request-line", "header-colon", "content-length", "negative-length", "chunk-size"],
)
def test_malformed_http_is_400_and_closes(server, raw, data, fragments):
    raw.send(data)
    reply = raw.read_response()
    reply.error(400, *fragments)
    assert reply.headers["connection"] == "close"
    assert raw.at_eof()
    assert_still_serving(server)


def test_content_length_of_a_non_ascii_digit_is_400(server, raw):
    raw.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n")
    try:
        reply = raw.read_response()
    finally:
        raw.wait_for_server_thread()
    reply.error(400, "Content-Length")


def test_negative_chunk_size_is_400(server, raw):
    raw.send(
        b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n-5\r\n"
    )
    try:
        reply = raw.read_response()
    finally:
        raw.wait_for_server_thread()
    reply.error(400, "chunk size")


def test_a_body_cut_short_is_400_and_the_server_survives(server, raw):
    raw.send(
        b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        + b"{" * 10
    )
    raw.sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
    raw.read_response().error(400, "10 of 100 bytes")
    raw.close()
    assert_still_serving(server)


def test_a_stalled_client_gets_408_while_others_are_served():
    stalling = start_server(read_timeout=STALL_TIMEOUT)
    stalled = RawClient(stalling)
    try:
        stalled.send(
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            + b"{" * 10
        )
        assert request(stalling, "GET", "/v2/health/live").status == 200
        assert not stalled.has_data(), "the stalled client was answered before the other one"
        assert_still_serving(stalling)
        reply = stalled.read_response()  # waits for the read timeout
        reply.error(408, "request incomplete")
        assert stalled.at_eof()
    finally:
        stalled.close()
        stalling.close()


# --- HTTP mechanics -------------------------------------------------------------------------


def test_keep_alive_serves_two_requests_on_one_connection(server):
    host, port = server.http_address
    conn = http.client.HTTPConnection(host, port, timeout=HANG_GUARD)
    try:
        conn.request("GET", "/v2/health/live")
        first = conn.getresponse()
        assert first.read() == b'{"live": true}'
        assert first.getheader("Connection") == "keep-alive"
        sock = conn.sock
        assert sock is not None
        body, headers = infer_body([("image", random_frame(18, height=3, width=3))])
        conn.request("POST", "/v2/models/identity/infer", body=body, headers=headers)
        second = conn.getresponse()
        second.read()
        assert second.status == 200
        assert conn.sock is sock, "http.client had to reconnect: the connection was not kept"
    finally:
        conn.close()


def test_connection_close_is_honoured(raw):
    raw.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = raw.read_response()
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert raw.at_eof()


def test_http_1_0_closes_by_default(raw):
    raw.send(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    reply = raw.read_response()
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert raw.at_eof()


def test_expect_100_continue_is_answered_before_the_body(raw):
    frame = random_frame(19, height=3, width=5)
    body, headers = infer_body([("image", frame)])
    headers |= {"Expect": "100-continue", "Content-Length": str(len(body))}
    raw.send(http_head("POST", "/v2/models/identity/infer", headers))
    status, _ = raw.read_head()  # before any of the body is sent
    assert status == 100
    raw.send(body)
    reply = raw.read_response()
    np.testing.assert_array_equal(outputs_of(reply)["image"], frame)


def test_chunked_request_body_is_accepted(raw):
    frame = random_frame(20, height=3, width=5)
    body, headers = infer_body([("image", frame)])
    chunks = [body[i : i + 50] for i in range(0, len(body), 50)]
    encoded = b"".join(b"%x;part=1\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    headers["Transfer-Encoding"] = "chunked"
    raw.send(http_head("POST", "/v2/models/identity/infer", headers) + encoded + b"0\r\n\r\n")
    np.testing.assert_array_equal(outputs_of(raw.read_response())["image"], frame)


def test_head_on_a_get_path_has_headers_and_no_body(raw):
    raw.send(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers = raw.read_head()
    assert status == 200
    assert headers["content-length"] == str(len(b'{"live": true}'))
    # The same connection goes on: a body sent after the HEAD answer would come first here.
    raw.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = raw.read_response()
    assert reply.status == 200
    assert reply.body == b'{"live": true}'
