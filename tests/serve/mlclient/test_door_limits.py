"""The MLClient door is safe to share: who gets in, for how long, and how much one request holds.

Each test attacks a real server on loopback the way issue 12 found it open, and checks the
refusal and that nothing was held, grown or served for the attacker:

- an address outside ``--mlclient-allow`` is reset at accept, without a reply;
- idle and trickling connections cannot lock artists out: one address holds at most
  ``max_connections_per_address`` connections, the 12 header bytes must come within
  ``header_timeout`` and the body at ``min_transfer_rate`` at least;
- a request of a million tiny images, or of a million tiny fields, is refused while it is
  decoded, and an image above ``--max-frame-pixels`` from its declared size.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest

from frameserve.serve.mlclient import messages as pb
from frameserve.serve.mlclient.wirecodec import MAX_MESSAGE_PARTS, MAX_MODEL_BYTES
from frameserve.serve.net import listener as listener_module
from frameserve.serve.server import FrameServer
from tests.serve.net.peers import connect_from, non_loopback_address, second_loopback_address
from tests.support.node_client import (
    NodeClient,
    frame_request,
    inference_request,
    info_request,
    parse_reply,
)
from tests.support.scheduling import wait_until
from tests.support.servers import start_server

#: Upper bound on any wait for a reply: a guard against hanging, never a speed target.
HANG_GUARD = 20.0
#: Silence a client may keep under the servers here: far longer than any deadline tested, so
#: a test that passes shows the deadline at work, not the idle timeout.
LONG_READ_TIMEOUT = 60.0


# --- helpers ---------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def raw_inference(model: pb.Model, inner: bytes) -> bytes:
    """A framed ``RequestWrapper{info, r2: {model, <inner>}}``: ``inner`` as given."""
    r2 = field(1, model.SerializeToString()) + inner
    body = b"\x08\x01" + field(3, r2)
    return b"%012d" % len(body) + body


def error_of(reply: pb.RespondWrapper) -> str:
    assert reply.HasField("error"), f"expected an Error reply, got {reply}"
    return str(reply.error.msg)


def served(reply: pb.RespondWrapper) -> bool:
    return not reply.HasField("error")


def client_of(server: FrameServer) -> NodeClient:
    return NodeClient(*server.mlclient_address, timeout=HANG_GUARD)


def exchange_raw(server: FrameServer, data: bytes) -> bytes:
    return client_of(server).send_raw(data, shutdown_write=True)


def frame(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).random((3, height, width), dtype=np.float32)


def no_connections_left(server: FrameServer) -> None:
    wait_until(lambda: server.mlclient.open_connections == 0, timeout=HANG_GUARD, what="closed")


@pytest.fixture
def servers() -> Iterator[list[FrameServer]]:
    """Servers a test starts (closed after it)."""
    started: list[FrameServer] = []
    yield started
    for server in started:
        server.close()


def serve(servers: list[FrameServer], **settings: object) -> FrameServer:
    server = start_server(http_port=None, **settings)
    servers.append(server)
    return server


def refused_at_accept(sock: socket.socket) -> bool:
    """Whether the server reset or closed ``sock`` without sending a byte."""
    try:
        sock.sendall(frame_request(info_request()))
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


# --- the allow-list ---------------------------------------------------------------------------


def test_a_client_outside_the_allow_list_is_reset_without_a_reply(
    servers: list[FrameServer], caplog: pytest.LogCaptureFixture
) -> None:
    # the allow-list excludes this machine: the real loopback client is the outsider
    server = serve(servers, mlclient_allow=("10.0.0.0/8",))
    caplog.clear()  # what the server logged as it started
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            try:
                sock = socket.create_connection(server.mlclient_address, timeout=HANG_GUARD)
            except ConnectionResetError:
                continue  # reset before connect() even returned
            with sock:
                assert refused_at_accept(sock)
    assert server.mlclient.open_connections == 0
    refusals = [r for r in caplog.records if r.name == listener_module.__name__]
    assert len(refusals) == 1, "refusals of one address are logged once a minute at most"
    assert "127.0.0.1" in refusals[0].getMessage()
    requests = [r for r in caplog.records if r.name == "frameserve.serve.mlclient.server"]
    assert requests == [], "a refused client must never reach the door"


def test_the_default_allow_list_refuses_a_non_loopback_address(
    servers: list[FrameServer],
) -> None:
    source = non_loopback_address()
    if source is None:
        pytest.skip("this machine has no non-loopback address that reaches 127.0.0.1")
    server = serve(servers)  # loopback only: the default
    try:
        outsider = connect_from(source, server.mlclient_address, timeout=HANG_GUARD)
    except ConnectionResetError:
        pass  # reset before connect() even returned
    else:
        with outsider:
            assert refused_at_accept(outsider), f"a client from {source} was answered"
    assert served(client_of(server).info())
    no_connections_left(server)


def test_a_listed_network_admits_only_its_addresses(servers: list[FrameServer]) -> None:
    other = second_loopback_address()
    if other is None:
        pytest.skip("this machine has no second loopback address (127.0.0.2)")
    server = serve(servers, mlclient_allow=("127.0.0.1/32",))
    try:
        outsider = connect_from(other, server.mlclient_address, timeout=HANG_GUARD)
    except ConnectionResetError:
        pass  # reset before connect() even returned
    else:
        with outsider:
            assert refused_at_accept(outsider), f"a client from {other} was answered"
    assert served(client_of(server).info())


# --- idle and trickling connections cannot lock artists out -----------------------------------


def test_silent_and_trickling_connections_cannot_lock_artists_out(
    servers: list[FrameServer],
) -> None:
    header_timeout = 1.0
    server = serve(
        servers,
        max_connections=16,
        max_connections_per_address=8,
        header_timeout=header_timeout,
        min_transfer_rate=1000.0,
        read_timeout=LONG_READ_TIMEOUT,
    )
    address = server.mlclient_address
    started = time.monotonic()
    attackers = [socket.create_connection(address, timeout=HANG_GUARD) for _ in range(8)]
    stop = threading.Event()
    for sock in attackers[:4]:
        sock.sendall(b"0000")  # part of a header, then silence
    for sock in attackers[4:6]:
        sock.sendall(b"0")  # a header, one digit at a time

    for sock in attackers[6:]:
        sock.sendall(b"%012d" % 100_000)  # a whole header, then a body byte at a time

    def trickle() -> None:
        while not stop.wait(0.2):
            for sock in attackers[4:]:
                with contextlib.suppress(OSError):
                    sock.sendall(b"0")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        node = client_of(server)
        # one more from the same address is told why, at once
        message = error_of(node.info())
        assert "server busy: 127.0.0.1 holds 8 connections already" in message
        other = second_loopback_address()
        if other is not None:  # another address gets in while the eight are held
            with connect_from(other, address, timeout=HANG_GUARD) as artist:
                artist.sendall(frame_request(info_request()))
                artist.shutdown(socket.SHUT_WR)
                assert served(parse_reply(_read_all(artist)))
        # and the same machine, as soon as the deadlines have cut the eight
        while not served(node.info()):
            assert time.monotonic() - started < header_timeout + 5.0, "artists still locked out"
            time.sleep(0.05)
        answers = [_read_all(sock) for sock in attackers]
    finally:
        stop.set()
        trickler.join(HANG_GUARD)
        for sock in attackers:
            sock.close()
    for answer in answers:
        assert "request incomplete" in error_of(parse_reply(answer))
    no_connections_left(server)


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while piece := sock.recv(65536):
            data += piece
    except ConnectionResetError:
        pass
    return bytes(data)


def test_a_header_that_stops_is_dropped_at_the_header_deadline(
    servers: list[FrameServer],
) -> None:
    server = serve(servers, header_timeout=0.5, read_timeout=LONG_READ_TIMEOUT)
    started = time.monotonic()
    with socket.create_connection(server.mlclient_address, timeout=HANG_GUARD) as sock:
        sock.sendall(b"0000")
        reply = parse_reply(_read_all(sock))
    assert "the 12-byte header must arrive within 0.5 s of connecting" in error_of(reply)
    assert time.monotonic() - started < LONG_READ_TIMEOUT / 2, "dropped by the idle timeout"
    no_connections_left(server)


def test_a_body_that_trickles_is_cut_when_it_falls_behind(servers: list[FrameServer]) -> None:
    server = serve(
        servers, header_timeout=0.5, min_transfer_rate=1000.0, read_timeout=LONG_READ_TIMEOUT
    )
    started = time.monotonic()
    with socket.create_connection(server.mlclient_address, timeout=HANG_GUARD) as sock:
        sock.sendall(b"%012d" % 100_000)  # allowed 100 s at 1000 bytes/s, if it kept up
        sent = 0
        for _ in range(int(HANG_GUARD / 0.1)):  # 10 bytes/s, until the server answers
            try:
                sock.sendall(b"\x08")
            except OSError:
                break
            sent += 1
            if select.select([sock], [], [], 0.1)[0]:
                break
        reply = _read_all(sock)
    assert "slower than 1000 bytes/s" in error_of(parse_reply(reply))
    assert sent > 1, "the server answered before the client trickled"
    assert time.monotonic() - started < LONG_READ_TIMEOUT / 2
    no_connections_left(server)


def test_a_body_at_the_rate_is_served_in_pieces(servers: list[FrameServer]) -> None:
    server = serve(servers, header_timeout=0.5, min_transfer_rate=1000.0)
    node = client_of(server)
    image = frame(8, 8)
    request = frame_request(inference_request(node.model("identity"), [image]))
    with socket.create_connection(server.mlclient_address, timeout=HANG_GUARD) as sock:
        for start in range(0, len(request), 256):
            sock.sendall(request[start : start + 256])
            time.sleep(0.01)
        reply = parse_reply(_read_all(sock))
    assert served(reply), reply.error.msg


# --- caps checked while decoding, before anything is built -----------------------------------


def peak_bytes_while(send: callable) -> tuple[bytes, int]:  # type: ignore[valid-type]
    """Run ``send()`` with tracemalloc on; return its result and the peak bytes traced."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = send()  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_a_million_tiny_images_are_refused_while_decoding(servers: list[FrameServer]) -> None:
    server = serve(servers)
    model = client_of(server).model("identity")
    one = field(2, pb.Image(width=1, height=1, channels=3, image=bytes(12)).SerializeToString())
    request = raw_inference(model, one * 1_000_000)  # 22 MB: it once held 824 MB
    answer, peak = peak_bytes_while(lambda: exchange_raw(server, request))
    message = error_of(parse_reply(answer))
    assert "more than 64 images; at most 64 are accepted (--max-request-images)" in message
    assert peak < 2 * len(request) + (32 << 20), f"{peak} bytes held for a {len(request)} request"
    no_connections_left(server)


def test_the_image_cap_is_the_setting(servers: list[FrameServer]) -> None:
    server = serve(servers, max_request_images=3)
    node = client_of(server)
    identity = node.model("identity")
    at_cap = error_of(node.infer(identity, [frame(4, 4)] * 3))
    assert "takes 1 image(s)" in at_cap  # three pass the cap; the model wants one
    above = error_of(node.infer(identity, [frame(4, 4)] * 4))
    assert "more than 3 images" in above


def test_a_million_tiny_fields_are_refused_while_decoding(servers: list[FrameServer]) -> None:
    server = serve(servers)
    model = client_of(server).model("identity")
    request = raw_inference(model, b"\x28\x01" * 1_000_000)  # field 5 = 1, a million times
    answer, peak = peak_bytes_while(lambda: exchange_raw(server, request))
    assert "far more than a request needs" in error_of(parse_reply(answer))
    assert peak < 2 * len(request) + (32 << 20)


def test_a_model_message_sent_in_many_parts_is_refused(servers: list[FrameServer]) -> None:
    server = serve(servers)
    model = client_of(server).model("identity")
    parts = field(1, pb.Model(name="identity").SerializeToString()) * MAX_MESSAGE_PARTS
    message = error_of(parse_reply(exchange_raw(server, raw_inference(model, parts))))
    assert f"sends model more than {MAX_MESSAGE_PARTS} times" in message


def test_a_huge_model_message_is_refused(servers: list[FrameServer]) -> None:
    server = serve(servers)
    model = client_of(server).model("identity")
    model.string_options.add(name="note", values=["x" * MAX_MODEL_BYTES])
    request = frame_request(inference_request(model, [frame(4, 4)]))
    message = error_of(parse_reply(exchange_raw(server, request)))
    assert f"model message is above {MAX_MODEL_BYTES} bytes" in message


def test_an_image_above_max_frame_pixels_is_refused(servers: list[FrameServer]) -> None:
    server = serve(servers, max_frame_pixels=1000)
    node = client_of(server)
    identity = node.model("identity")
    message = error_of(node.infer(identity, [frame(40, 40)]))
    assert "40x40 is 1600 pixels, above the limit of 1000 pixels per frame" in message
    assert "--max-frame-pixels" in message
    assert served(node.infer(identity, [frame(25, 40)]))  # 1000 pixels: at the limit


def test_the_pixel_cap_is_checked_from_the_declared_size(servers: list[FrameServer]) -> None:
    server = serve(servers)  # 8192 x 8192 by default
    node = client_of(server)
    request = inference_request(node.model("identity"), [])
    request.r2.images.append(pb.Image(width=30000, height=30000, channels=3, image=bytes(12)))
    message = error_of(node.send_inference(frame_request(request)))
    assert "30000x30000 is 900000000 pixels, above the limit of 67108864" in message


# --- messages -----------------------------------------------------------------------------------


def test_a_knob_just_above_its_maximum_does_not_print_as_the_maximum(
    servers: list[FrameServer],
) -> None:
    server = serve(servers, builtin_models=False)
    node = client_of(server)
    reply = node.infer(node.model("slow"), [frame(4, 4)], knobs={"seconds": 30.0001})
    # the wire carries float32: 30.0001 arrives as 30.000099182128906
    assert "knob 'seconds': 30.000099182128906 is above the maximum 30" in error_of(reply)
