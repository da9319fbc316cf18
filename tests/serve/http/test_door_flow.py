"""The HTTP door's order of work and its deadlines, against a real server with short ones.

Nothing is read that will not be used: a body above its limit is a 413 sent from the head
alone (no ``100 Continue`` first). Time is bounded at every step: the head within
``header_timeout`` of the connection (or of a kept-alive request's first byte), a body at
``min_transfer_rate`` at least, while an idle kept-alive connection may wait ``read_timeout``
for its next request. Each request gets one log line naming its user.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Iterator

import pytest

from frameserve.serve.server import FrameServer
from tests.support.http_client import RawClient, assert_still_serving, request
from tests.support.servers import start_server

HEADER_TIMEOUT = 0.5
READ_TIMEOUT = 4.0
#: Bytes per second a body must keep up (after HEADER_TIMEOUT of grace).
RATE = 4096
#: Any wait shorter than this ended by a deadline, not by the read timeout.
BEFORE_READ_TIMEOUT = READ_TIMEOUT - 1.0
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def quick() -> Iterator[FrameServer]:
    """A server with a short header deadline and a low minimum transfer rate."""
    server = start_server(
        header_timeout=HEADER_TIMEOUT, read_timeout=READ_TIMEOUT, min_transfer_rate=RATE
    )
    yield server
    server.close()


@pytest.fixture
def client(quick: FrameServer) -> Iterator[RawClient]:
    raw = RawClient(quick)
    yield raw
    raw.close()


def trickle(raw: RawClient, pieces: Iterator[bytes], *, every: float) -> float:
    """Send ``pieces`` one per ``every`` seconds until the server answers; return the seconds
    it took (the answer is left unread)."""
    started = time.monotonic()
    for piece in pieces:
        raw.send(piece)
        if select.select([raw.sock], [], [], every)[0]:
            return time.monotonic() - started
    raise AssertionError("the server waited for every piece")


def header_lines() -> Iterator[bytes]:
    for index in range(1000):
        yield b"X-Slow-%d: 1\r\n" % index


# --- the head ---------------------------------------------------------------------------------


def test_a_silent_connection_is_closed_at_the_header_deadline(client):
    started = time.monotonic()
    assert client.at_eof()
    assert time.monotonic() - started < BEFORE_READ_TIMEOUT


def test_a_trickled_head_gets_408_at_the_header_deadline(quick, client):
    client.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    waited = trickle(client, header_lines(), every=0.1)  # each line well within read_timeout
    assert waited < BEFORE_READ_TIMEOUT
    client.read_response().error(408, "request incomplete", "request head not complete")
    assert client.at_eof()
    assert_still_serving(quick)


def test_an_idle_kept_alive_connection_may_wait_longer_than_the_header_deadline(client):
    client.send(LIVE)
    assert client.read_response().status == 200
    time.sleep(HEADER_TIMEOUT * 2)  # idle between requests: read_timeout applies
    client.send(LIVE)
    assert client.read_response().status == 200


def test_a_later_request_has_the_header_deadline_from_its_first_byte(quick, client):
    client.send(LIVE)
    assert client.read_response().status == 200
    time.sleep(HEADER_TIMEOUT * 2)
    client.send(b"GET /v2/health/live HTTP/1.1\r\n")
    waited = trickle(client, header_lines(), every=0.1)
    assert waited < BEFORE_READ_TIMEOUT
    client.read_response().error(408, "request head not complete")
    assert_still_serving(quick)


# --- the body ---------------------------------------------------------------------------------


def test_a_body_slower_than_the_minimum_rate_is_408(quick, client):
    client.send(b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    waited = trickle(client, iter([b" " * 100] * 1000), every=0.1)  # 1000 bytes/s
    assert waited < BEFORE_READ_TIMEOUT
    client.read_response().error(408, "request incomplete", f"slower than {RATE} bytes/s")
    assert client.at_eof()
    assert_still_serving(quick)


def test_a_chunked_body_slower_than_the_minimum_rate_is_408(quick, client):
    client.send(
        b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    waited = trickle(client, iter([b"40\r\n" + b" " * 64 + b"\r\n"] * 1000), every=0.1)
    assert waited < BEFORE_READ_TIMEOUT
    client.read_response().error(408, "request incomplete", f"slower than {RATE} bytes/s")
    assert_still_serving(quick)


def test_a_body_at_the_minimum_rate_is_served(client):
    """Bodies may take their time: HEADER_TIMEOUT of grace, then RATE bytes per second."""
    body = b"{}" + b" " * 1998
    client.send(
        b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for start in range(0, len(body), 500):  # 2000 bytes over 0.6 s: 3300 bytes/s after grace
        client.send(body[start : start + 500])
        time.sleep(0.15)
    assert client.read_response().status == 200


@pytest.mark.parametrize("expect", [True, False], ids=["expect-100", "plain"])
def test_a_body_above_its_limit_is_413_before_any_of_it_is_read(quick, client, expect):
    head = b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n"
    client.send(head + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")
    reply = client.read_response()  # not "100 Continue": read_response needs a Content-Length
    reply.error(413, "1000000000000 bytes is above the limit of 1048576 bytes")
    assert reply.headers["connection"] == "close"
    assert client.at_eof()
    assert_still_serving(quick)


def test_the_413_is_read_even_while_the_client_is_still_sending(quick):
    """The door discards what still comes before closing: the client sees its 413, not a reset."""
    host, port = quick.http_address
    body = b"x" * (2 << 20)
    with socket.create_connection((host, port), timeout=20.0) as sock:
        head = b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        sock.sendall(head % len(body) + body)
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]


# --- the log ----------------------------------------------------------------------------------


def test_each_request_logs_one_line_naming_its_user(quick, caplog):
    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "frameserve.serve.http.server"]

    with caplog.at_level(logging.INFO, logger="frameserve.serve.http.server"):
        assert request(quick, "GET", "/v2/health/live").status == 200
        until = time.monotonic() + 5.0  # the line is logged just after the answer is sent
        while not logged() and time.monotonic() < until:
            time.sleep(0.01)
        time.sleep(0.05)  # a second line, if there were one, would follow as fast
    lines = logged()
    assert len(lines) == 1, lines
    assert "GET /v2/health/live model=- 200 " in lines[0]
    assert " user=- ok" in lines[0]
