"""The HTTP door shares the listener's per-address cap: one address cannot take every slot.

(The listener itself is tested in ``test_listener.py``, the MLClient door's use of it in
``tests/serve/mlclient/test_door_limits.py``.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from frameserve.serve.server import FrameServer
from tests.serve.net.peers import connect_from, second_loopback_address
from tests.support.http_client import request
from tests.support.scheduling import wait_until
from tests.support.servers import start_server

HANG_GUARD = 20.0


@pytest.fixture
def capped() -> Iterator[FrameServer]:
    running = start_server(max_connections_per_address=3, max_connections=16, read_timeout=30.0)
    yield running
    running.close()


def read_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while piece := sock.recv(65536):
            data += piece
    except ConnectionResetError:
        pass
    return bytes(data)


def test_one_address_past_its_cap_gets_a_503_while_another_gets_in(capped: FrameServer) -> None:
    assert capped.http is not None
    held = [socket.create_connection(capped.http_address, timeout=HANG_GUARD) for _ in range(3)]
    try:
        wait_until(lambda: capped.http.open_connections == 3, timeout=HANG_GUARD)  # type: ignore[union-attr]
        with socket.create_connection(capped.http_address, timeout=HANG_GUARD) as fourth:
            fourth.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_until_eof(fourth)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"server busy: 127.0.0.1 holds 3 connections already" in answer
        other = second_loopback_address()
        if other is not None:
            with connect_from(other, capped.http_address, timeout=HANG_GUARD) as elsewhere:
                elsewhere.sendall(
                    b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert read_until_eof(elsewhere).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: capped.http.open_connections == 0, timeout=HANG_GUARD)  # type: ignore[union-attr]
    assert request(capped, "GET", "/v2/health/live").status == 200
