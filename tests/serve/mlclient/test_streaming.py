"""The first image of an MLClient request lands in its frame as it arrives (rows flipped by the
kernel): found from the first bytes, checked against the full decode, refused when a message
contradicts itself, and every other request read whole as before.

The unit part feeds :func:`locate_first_image` real encoded requests and hand-made oddities;
the server part attacks a real server on loopback with requests cut into tiny sends, pixel
fields given twice, sizes given again after the pixels, and clients that leave mid-frame.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from frameserve.serve.mlclient import messages as pb
from frameserve.serve.mlclient.streaming import (
    LOOKAHEAD,
    fill_rows,
    locate_first_image,
    wire_rows,
)
from frameserve.serve.mlclient.wirecodec import WireImage, decode_request
from frameserve.serve.server import FrameServer
from tests.serve.mlclient.test_wirecodec import field_bytes, field_varint
from tests.support.node_client import NodeClient, frame_request, inference_request
from tests.support.servers import start_server

HANG_GUARD = 10.0


def body_of(request: bytes) -> memoryview:
    """The body of a framed request (its 12-digit header dropped)."""
    return memoryview(np.frombuffer(request[12:], dtype=np.uint8))


def hand_request(image_fields: bytes, *, model: str = "identity") -> bytes:
    """A framed ``{info, r2: {model, images: [Image(image_fields)]}}``."""
    model_message = field_bytes(1, model.encode())
    r2 = field_bytes(1, model_message) + field_bytes(2, image_fields)
    body = field_varint(1, 1) + field_bytes(3, r2)
    return b"%012d" % len(body) + body


def pixels_field(frame: np.ndarray) -> bytes:
    """The ``image`` bytes field of ``frame`` (C, H, W) as the node writes it: bottom row first."""
    return field_bytes(4, np.ascontiguousarray(frame[:, ::-1, :]).tobytes())


def sizes(width: int, height: int, channels: int) -> bytes:
    return field_varint(1, width) + field_varint(2, height) + field_varint(3, channels)


# --- finding the pixels ----------------------------------------------------------------------


def test_the_first_image_is_found_where_the_full_decode_puts_it() -> None:
    frame = np.random.default_rng(1).random((3, 5, 7), dtype=np.float32)
    model = pb.Model(name="identity", label="Identity")
    request = frame_request(inference_request(model, [frame, frame + 1.0]))
    body = body_of(request)
    decoded = decode_request(body)
    found = locate_first_image(body, len(body))
    assert isinstance(found, WireImage) and found == decoded.images[0]


def test_a_short_prefix_asks_for_a_little_more_and_never_for_less() -> None:
    frame = np.zeros((3, 64, 64), dtype=np.float32)
    body = body_of(frame_request(inference_request(pb.Model(name="m" * 300), [frame])))
    have = 1
    while not isinstance(found := locate_first_image(body[:have], len(body)), WireImage):
        assert isinstance(found, int) and have < found <= have + 300 + LOOKAHEAD
        have = found
    assert found == decode_request(body).images[0]
    assert have < found.start + LOOKAHEAD  # it stops reading near where the pixels begin


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (bytes([0x08, 0x01, 0x12, 0x02, 0x08, 0x01]), "an info request"),
        (field_bytes(3, field_bytes(2, field_bytes(4, b"\0" * 12) + sizes(1, 1, 3))), "late sizes"),
        (field_bytes(3, field_bytes(2, sizes(1, 1, 0) + field_bytes(4, b""))), "no channels"),
        (b"\x0b\x0c" + field_bytes(3, b""), "a group"),
        (b"\x08" + b"\xff" * 11, "an overlong varint"),
        (field_bytes(3, field_bytes(1, b"m" * 2000)), "no image at all"),
    ],
)
def test_what_is_not_streamed(body: bytes, why: str) -> None:
    view = memoryview(np.frombuffer(body, dtype=np.uint8))
    assert locate_first_image(view, len(view)) is None, why


def test_rows_in_wire_order_put_the_bottom_row_of_each_plane_first() -> None:
    frame = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    target = np.zeros_like(frame)
    wire = np.ascontiguousarray(frame[:, ::-1, :]).tobytes()
    rows = wire_rows(target)
    left = fill_rows(rows, memoryview(wire)[:21])  # a row and a bit: the rest goes in later
    assert sum(len(view) for view in left) == len(wire) - 21
    fill_rows(left, memoryview(wire)[21:])
    np.testing.assert_array_equal(target, frame)


# --- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FrameServer]:
    server = start_server(model_folders=(), reload_interval=None, isolation=False)
    yield server
    server.close()


def exchange(server: FrameServer, request: bytes, *, piece: int | None = None) -> pb.RespondWrapper:
    """Send ``request`` (in sends of ``piece`` bytes, if given) and parse the reply."""
    with socket.create_connection(server.mlclient_address, timeout=HANG_GUARD) as sock:
        if piece is None:
            sock.sendall(request)
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for start in range(0, len(request), piece):
                sock.sendall(request[start : start + piece])
                time.sleep(0.0005)
        data = bytearray()
        while chunk := sock.recv(1 << 20):
            data += chunk
    reply = pb.RespondWrapper()
    reply.ParseFromString(bytes(data[12:]))
    return reply


def pixels_of(reply: pb.RespondWrapper) -> np.ndarray:
    assert not reply.HasField("error"), reply.error.msg
    image = reply.r2.images[0]
    flat = np.frombuffer(image.image, dtype=np.float32)
    return flat.reshape(image.channels, image.height, image.width)[:, ::-1, :]


def test_a_frame_sent_in_tiny_pieces_comes_back_whole(server: FrameServer) -> None:
    """The pixels start inside the bytes read to find them, and arrive in pieces smaller than
    a row: every byte lands in its row."""
    frame = np.random.default_rng(3).random((3, 9, 11), dtype=np.float32)
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    request = frame_request(inference_request(node.model("identity"), [frame]))
    np.testing.assert_array_equal(pixels_of(exchange(server, request, piece=7)), frame)


def test_a_1080p_frame_comes_back_bit_for_bit(server: FrameServer) -> None:
    frame = np.random.default_rng(4).random((3, 1080, 1920), dtype=np.float32)
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    request = frame_request(inference_request(node.model("identity"), [frame]))
    np.testing.assert_array_equal(pixels_of(exchange(server, request)), frame)


def test_a_pixel_field_given_twice_counts_as_protobuf_says_the_last(server: FrameServer) -> None:
    """The first copy was streamed; the decode takes the second, which is read as before."""
    first = np.full((3, 2, 4), 1.0, dtype=np.float32)
    second = np.random.default_rng(5).random((3, 2, 4), dtype=np.float32)
    request = hand_request(sizes(4, 2, 3) + pixels_field(first) + pixels_field(second))
    np.testing.assert_array_equal(pixels_of(exchange(server, request)), second)


def test_sizes_given_again_after_the_pixels_are_refused(server: FrameServer) -> None:
    """Streamed as 4x2, then declared 8x1: the bytes never reached the body, so the request
    is refused rather than answered from garbage; the server serves on."""
    frame = np.ones((3, 2, 4), dtype=np.float32)
    request = hand_request(sizes(4, 2, 3) + pixels_field(frame) + sizes(8, 1, 3))
    reply = exchange(server, request)
    assert reply.HasField("error") and "sizes more than once" in reply.error.msg
    np.testing.assert_array_equal(
        pixels_of(exchange(server, hand_request(sizes(4, 2, 3) + pixels_field(frame)))), frame
    )


def test_a_client_that_leaves_mid_frame_costs_nothing_and_the_next_is_served(
    server: FrameServer,
) -> None:
    frame = np.random.default_rng(6).random((3, 540, 960), dtype=np.float32)
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    request = frame_request(inference_request(node.model("identity"), [frame]))
    with socket.create_connection(server.mlclient_address, timeout=HANG_GUARD) as sock:
        sock.sendall(request[: len(request) // 2])  # half the pixels, then gone
    np.testing.assert_array_equal(pixels_of(exchange(server, request)), frame)


def test_a_request_larger_than_its_frames_is_read_whole_and_refused_as_before(
    server: FrameServer,
) -> None:
    """An image whose byte count does not match its sizes is never streamed: the full decode's
    check answers, word for word."""
    request = hand_request(sizes(4, 2, 3) + field_bytes(4, b"\0" * 20))
    reply = exchange(server, request)
    assert reply.HasField("error") and "needs 96 bytes, the image holds 20" in reply.error.msg
