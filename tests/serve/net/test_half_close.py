"""Both doors answer a client that half-closes its socket after sending, and drop one that resets.

A client may ``shutdown(SHUT_WR)`` once its request is sent and then only read: it is waiting
for its reply, however long the model takes (issue 12 found both doors dropping it when the
model took more than ~50 ms). A client whose connection ends with a reset has gone: its
request is dropped. The ``slow`` test model computes for as long as its ``seconds`` knob says.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from frameserve.serve.server import FrameServer
from tests.serve.net.peers import abort
from tests.support.http_client import infer_body, random_frame
from tests.support.node_client import (
    NodeClient,
    decode_image,
    frame_request,
    inference_request,
    parse_reply,
)
from tests.support.scheduling import watch_log
from tests.support.servers import start_server

HANG_GUARD = 30.0
#: Long enough for many looks at the connection while the model runs (one every 50 ms).
MODEL_SECONDS = 1.0


@pytest.fixture(scope="module")
def server() -> Iterator[FrameServer]:
    running = start_server(builtin_models=False)
    yield running
    running.close()


def read_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while piece := sock.recv(65536):
        data += piece
    return bytes(data)


def mlclient_request(server: FrameServer, image: np.ndarray) -> bytes:
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    slow = node.model("slow")
    return frame_request(inference_request(slow, [image], knobs={"seconds": MODEL_SECONDS}))


def http_request(image: np.ndarray) -> bytes:
    body, headers = infer_body([("image", image)], parameters={"seconds": MODEL_SECONDS})
    head = "POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_the_mlclient_door_answers_a_half_closed_client(server: FrameServer) -> None:
    image = np.random.default_rng(1).random((3, 8, 8), dtype=np.float32)
    request = mlclient_request(server, image)
    with socket.create_connection(server.mlclient_address, timeout=HANG_GUARD) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = parse_reply(read_until_eof(sock))
    assert not reply.HasField("error"), reply.error.msg
    assert np.array_equal(decode_image(reply.r2.images[0]), image)


def test_the_http_door_answers_a_half_closed_client(server: FrameServer) -> None:
    image = random_frame(2, height=8, width=8)
    with socket.create_connection(server.http_address, timeout=HANG_GUARD) as sock:
        sock.sendall(http_request(image))
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_eof(sock)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 200 OK", answer[:300]


@pytest.mark.parametrize("half_closed_first", [False, True], ids=["open", "half-closed"])
def test_the_mlclient_door_drops_a_client_that_resets(
    server: FrameServer, half_closed_first: bool
) -> None:
    request = mlclient_request(server, np.zeros((3, 8, 8), dtype=np.float32))
    with watch_log("frameserve.serve.mlclient.server", "dropped") as dropped:
        sock = socket.create_connection(server.mlclient_address, timeout=HANG_GUARD)
        sock.sendall(request)
        if half_closed_first:
            sock.shutdown(socket.SHUT_WR)
        time.sleep(0.2)  # the model is running
        abort(sock)
        # "dropped" is the wait noticing; a reply that cannot be written is logged otherwise
        assert dropped.wait(HANG_GUARD), "the door never noticed the client leave"


def test_the_http_door_drops_a_client_that_resets(server: FrameServer) -> None:
    with watch_log("frameserve.serve.http.server", "dropped") as dropped:
        sock = socket.create_connection(server.http_address, timeout=HANG_GUARD)
        sock.sendall(http_request(random_frame(3, height=8, width=8)))
        time.sleep(0.2)
        abort(sock)
        assert dropped.wait(HANG_GUARD), "the door never noticed the client leave"
