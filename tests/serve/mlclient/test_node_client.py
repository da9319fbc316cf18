"""Tests for the node-exact MLClient test client (``tests/support/node_client.py``).

These check the client's image layout and framing only, against a small in-test server thread
that follows the protocol; the real server is tested elsewhere through this client.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from frameserve.serve.mlclient import messages as pb
from tests.support.node_client import (
    NodeClient,
    NodeClientError,
    decode_image,
    encode_image,
    frame_request,
    parse_reply,
)

Responder = Callable[[socket.socket, pb.RequestWrapper], None]


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes or fail the test."""
    data = bytearray()
    while len(data) < size:
        piece = conn.recv(size - len(data))
        assert piece, f"client closed after {len(data)} of {size} bytes"
        data += piece
    return bytes(data)


def _blur_model() -> pb.Model:
    """Return a model with one option of every kind and two buttons."""
    return pb.Model(
        name="blur",
        label="Blur",
        inputs=[pb.ImagePrototype(name="src", channels=3)],
        outputs=[pb.ImagePrototype(name="out", channels=3)],
        bool_options=[pb.BoolAttrib(name="invert", values=[False])],
        int_options=[pb.IntAttrib(name="iterations", values=[1])],
        float_options=[pb.FloatAttrib(name="size", values=[5.0])],
        string_options=[pb.StringAttrib(name="mode", values=["gauss"])],
        button_options=[
            pb.BoolAttrib(name="reset", values=[False]),
            pb.BoolAttrib(name="help", values=[False]),
        ],
    )


def _info_body() -> bytes:
    """Return the serialized info reply of the fake server."""
    info = pb.RespondInfo(num_models=1, models=[_blur_model()])
    return pb.RespondWrapper(info=True, r1=info).SerializeToString()


def _echo_body(request: pb.RequestWrapper) -> bytes:
    """Return the serialized inference reply that echoes the request's images."""
    images = list(request.r2.images)
    inference = pb.RespondInference(num_images=len(images), images=images, num_objects=0)
    return pb.RespondWrapper(info=True, r2=inference).SerializeToString()


def _reply_by_protocol(conn: socket.socket, request: pb.RequestWrapper) -> None:
    """Answer as the protocol says: header of 12 + body length, header and body in one write."""
    body = _info_body() if request.HasField("r1") else _echo_body(request)
    conn.sendall(b"%012d" % (12 + len(body)) + body)


class FakeNodeServer:
    """A protocol-following server thread that records every request it parses."""

    def __init__(self, responder: Responder) -> None:
        self.requests: list[pb.RequestWrapper] = []
        self._responder = responder
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Handle one connection at a time until stopped."""
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5.0)
                size = int(_recv_exactly(conn, 12))
                request = pb.RequestWrapper.FromString(_recv_exactly(conn, size))
                self.requests.append(request)
                self._responder(conn, request)

    def close(self) -> None:
        """Stop the thread and close the listening socket."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Responder], FakeNodeServer]]:
    """Start fake servers with a given responder; all are closed after the test."""
    servers: list[FakeNodeServer] = []

    def start(responder: Responder = _reply_by_protocol) -> FakeNodeServer:
        server = FakeNodeServer(responder)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _frame(channels: int = 3, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Return a float32 ``(C, H, W)`` frame with negative and above-1 values."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 8.0, size=(channels, height, width)).astype(np.float32)


def _options(model: pb.Model) -> dict[str, tuple[str, list[object]]]:
    """Return ``{name: (field, values)}`` for every option and button of a model."""
    fields = ("bool_options", "int_options", "float_options", "string_options", "button_options")
    return {
        option.name: (field, list(option.values))
        for field in fields
        for option in getattr(model, field)
    }


def test_encode_image_is_planar_and_bottom_row_first() -> None:
    frame = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    image = encode_image(frame)
    assert (image.width, image.height, image.channels) == (4, 3, 2)
    wire = np.frombuffer(image.image, dtype="<f4")
    expected = [frame[c, y, x] for c in range(2) for y in (2, 1, 0) for x in range(4)]
    assert wire.tolist() == expected
    assert wire[:4].tolist() == frame[0, -1].tolist()  # wire row 0 is the frame's bottom row
    assert wire[12:16].tolist() == frame[1, -1].tolist()  # plane 1 starts after all of plane 0


def test_decode_image_inverts_encode_image() -> None:
    frame = _frame(channels=4, height=5, width=7)
    decoded = decode_image(encode_image(frame))
    assert decoded.dtype == np.float32
    assert decoded.shape == (4, 5, 7)
    np.testing.assert_array_equal(decoded, frame)


def test_decode_image_rejects_wrong_byte_count() -> None:
    image = encode_image(_frame(height=4, width=4))
    image.image = image.image[:-4]
    with pytest.raises(ValueError, match="needs 192 bytes, got 188"):
        decode_image(image)


def test_encode_image_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        encode_image(np.zeros((4, 4), dtype=np.float32))


def test_frame_request_prefixes_body_length_in_12_digits() -> None:
    wrapper = pb.RequestWrapper(info=True, r1=pb.RequestInfo(info=True))
    body = wrapper.SerializeToString()
    framed = frame_request(wrapper)
    assert framed[:12] == b"%012d" % len(body)
    assert framed[:12] == b"000000000006"  # the header does not count itself
    assert framed[12:] == body


def test_parse_reply_checks_that_header_counts_itself() -> None:
    body = _info_body()
    assert parse_reply(b"%012d" % (12 + len(body)) + body).r1.num_models == 1
    with pytest.raises(NodeClientError, match="announces"):
        parse_reply(b"%012d" % len(body) + body)
    with pytest.raises(NodeClientError, match="12 ASCII digits"):
        parse_reply(b"12 bytes!!!!" + body)


def test_info_returns_models(serve: Callable[[Responder], FakeNodeServer]) -> None:
    server = serve(_reply_by_protocol)
    client = NodeClient("127.0.0.1", server.port, timeout=5.0)
    reply = client.info()
    assert reply.r1.num_models == 1
    assert [model.name for model in reply.r1.models] == ["blur"]
    assert server.requests == [pb.RequestWrapper(info=True, r1=pb.RequestInfo(info=True))]
    assert client.model("blur") == _blur_model()
    with pytest.raises(NodeClientError, match="no model named 'sharpen'"):
        client.model("sharpen")


def test_info_in_pieces_is_an_error(serve: Callable[[Responder], FakeNodeServer]) -> None:
    def reply_in_two_writes(conn: socket.socket, request: pb.RequestWrapper) -> None:
        body = _info_body()
        conn.sendall(b"%012d" % (12 + len(body)) + body[:10])
        time.sleep(0.3)
        conn.sendall(body[10:])

    server = serve(reply_in_two_writes)
    with pytest.raises(NodeClientError, match="info reply arrived in pieces"):
        NodeClient("127.0.0.1", server.port, timeout=5.0).info()


@pytest.mark.parametrize("read_chunk", [1024, 7, 1 << 20])
def test_infer_round_trips_frames(
    serve: Callable[[Responder], FakeNodeServer], read_chunk: int
) -> None:
    server = serve(_reply_by_protocol)
    client = NodeClient("127.0.0.1", server.port, timeout=5.0, read_chunk=read_chunk)
    frame = _frame()
    reply = client.infer(_blur_model(), [frame])
    assert reply.info and reply.r2.num_images == 1
    np.testing.assert_array_equal(decode_image(reply.r2.images[0]), frame)
    sent = server.requests[0]
    assert sent.info and sent.r2.images[0] == encode_image(frame)


def test_infer_sends_current_knob_values(serve: Callable[[Responder], FakeNodeServer]) -> None:
    server = serve(_reply_by_protocol)
    model = _blur_model()
    knobs: dict[str, object] = {"size": 20.0, "iterations": 3, "invert": True, "mode": "box"}
    NodeClient("127.0.0.1", server.port, timeout=5.0).infer(model, [_frame()], knobs=knobs)
    assert _options(server.requests[0].r2.model) == {
        "invert": ("bool_options", [True]),
        "iterations": ("int_options", [3]),
        "size": ("float_options", [20.0]),
        "mode": ("string_options", ["box"]),
        "reset": ("button_options", [False]),
        "help": ("button_options", [False]),
    }
    assert model == _blur_model()  # the caller's model is copied, not changed


def test_infer_adds_unknown_knobs_by_python_type(
    serve: Callable[[Responder], FakeNodeServer],
) -> None:
    server = serve(_reply_by_protocol)
    knobs: dict[str, object] = {"a": False, "b": 7, "c": 0.5, "d": "x"}
    NodeClient("127.0.0.1", server.port, timeout=5.0).infer(_blur_model(), [], knobs=knobs)
    options = _options(server.requests[0].r2.model)
    assert options["a"] == ("bool_options", [False])
    assert options["b"] == ("int_options", [7])
    assert options["c"] == ("float_options", [0.5])
    assert options["d"] == ("string_options", ["x"])
    assert options["size"] == ("float_options", [5.0])  # untouched knobs keep their default


def test_infer_press_sets_only_that_button(serve: Callable[[Responder], FakeNodeServer]) -> None:
    server = serve(_reply_by_protocol)
    client = NodeClient("127.0.0.1", server.port, timeout=5.0)
    client.infer(_blur_model(), [_frame()], press="help")
    client.infer(_blur_model(), [_frame()], press="missing")
    pressed = _options(server.requests[0].r2.model)
    assert pressed["help"] == ("button_options", [True])
    assert pressed["reset"] == ("button_options", [False])
    added = _options(server.requests[1].r2.model)
    assert added["missing"] == ("button_options", [True])
    assert added["help"] == ("button_options", [False])


def test_infer_rejects_header_that_does_not_count_itself(
    serve: Callable[[Responder], FakeNodeServer],
) -> None:
    def reply_without_self_count(conn: socket.socket, request: pb.RequestWrapper) -> None:
        body = _echo_body(request)
        conn.sendall(b"%012d" % len(body) + body)

    server = serve(reply_without_self_count)
    with pytest.raises(NodeClientError, match="announces"):
        NodeClient("127.0.0.1", server.port, timeout=5.0).infer(_blur_model(), [_frame()])


def test_infer_reports_server_closing_without_reply(
    serve: Callable[[Responder], FakeNodeServer],
) -> None:
    server = serve(lambda conn, request: None)
    with pytest.raises(NodeClientError, match="connection closed after 0 of 12 bytes"):
        NodeClient("127.0.0.1", server.port, timeout=5.0).infer(_blur_model(), [_frame()])


@pytest.mark.parametrize("shutdown_write", [False, True])
def test_send_raw_returns_the_whole_reply(
    serve: Callable[[Responder], FakeNodeServer], shutdown_write: bool
) -> None:
    server = serve(_reply_by_protocol)
    client = NodeClient("127.0.0.1", server.port, timeout=5.0)
    request = pb.RequestWrapper(info=True, r1=pb.RequestInfo(info=True))
    raw = client.send_raw(frame_request(request), shutdown_write=shutdown_write)
    assert raw[12:] == _info_body()
    assert parse_reply(raw).r1.models[0].name == "blur"
