"""The MLClient wire handling in isolation: the zero-copy codec and the framing helpers.

``wirecodec`` walks the protobuf wire format by hand, so it is checked here against bytes built
from the documented field numbers (``docs/mlclient-protocol.md``) and against the regular
protobuf classes; ``framing`` is checked on a local socket pair.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from frameserve.errors import ProtocolError
from frameserve.serve.mlclient import messages as pb
from frameserve.serve.mlclient.convert import frame_from_wire, frame_to_wire, sent_knobs
from frameserve.serve.mlclient.framing import HEADER_SIZE, parse_request_header, reply_header
from frameserve.serve.mlclient.wirecodec import (
    DecodedRequest,
    RequestKind,
    WirePixels,
    decode_request,
    encode_inference_reply,
)
from frameserve.serve.net.sockets import ClientGone, ClientStalled, recv_exact_into, send_buffers

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


# --- a tiny protobuf writer, straight from the wire format's definition --------------------


def varint(value: int) -> bytes:
    """Encode a non-negative integer (or a negative one as 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """Encode a field key."""
    return varint(number << 3 | wire_type)


def field_varint(number: int, value: int) -> bytes:
    """Encode a varint field."""
    return tag(number, VARINT) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    """Encode a length-delimited field (a string, bytes, a message or a packed list)."""
    return tag(number, LEN) + varint(len(payload)) + payload


def field_float(number: int, value: float) -> bytes:
    """Encode a fixed32 float field (an unpacked float)."""
    return tag(number, I32) + struct.pack("<f", value)


def decode(body: bytes) -> DecodedRequest:
    """Decode a request body the way the server does: from a buffer it received into."""
    return decode_request(memoryview(np.frombuffer(body, dtype=np.uint8)))


def merged_model(decoded: DecodedRequest) -> pb.Model:
    """Parse the request's ``Model`` parts with the protobuf class, as the server does."""
    model = pb.Model()
    for part in decoded.model_parts:
        model.MergeFromString(part)
    return model


def joined(parts: Sequence[bytes | WirePixels]) -> bytes:
    """Join the parts of an encoded reply as the socket would send them."""
    out = bytearray()
    for part in parts:
        if isinstance(part, WirePixels):
            for view in part.views:
                out += view
        else:
            out += part
    return bytes(out)


# --- golden bytes --------------------------------------------------------------------------


INFO_REQUEST = bytes([0x08, 0x01, 0x12, 0x02, 0x08, 0x01])  # {info: true, r1: {info: true}}


def test_the_info_request_matches_the_golden_bytes() -> None:
    built = field_varint(1, 1) + field_bytes(2, field_varint(1, 1))
    assert built == INFO_REQUEST
    assert pb.RequestWrapper(info=True, r1=pb.RequestInfo(info=True)).SerializeToString() == built
    assert decode(INFO_REQUEST).kind is RequestKind.INFO


def test_an_inference_request_built_by_hand_decodes_to_views_of_its_pixels() -> None:
    pixels = struct.pack("<f", 0.5)
    model = field_bytes(1, b"id")  # Model{name: "id"}
    image = field_varint(1, 1) + field_varint(2, 1) + field_varint(3, 1) + field_bytes(4, pixels)
    inference = field_bytes(1, model) + field_bytes(2, image)
    body = field_varint(1, 1) + field_bytes(3, inference)
    assert body == bytes.fromhex("0801 1a14 0a04 0a026964 120c 080110011801 2204 0000003f")

    decoded = decode(body)
    assert decoded.kind is RequestKind.INFER
    assert [bytes(part) for part in decoded.model_parts] == [model]
    [wire] = decoded.images
    assert (wire.width, wire.height, wire.channels) == (1, 1, 1)
    assert (wire.start, wire.end, wire.nbytes) == (20, 24, 4)
    assert body[wire.start : wire.end] == pixels
    # the protobuf classes read the same bytes the same way
    parsed = pb.RequestWrapper.FromString(body)
    assert parsed.r2.model.name == "id"
    assert parsed.r2.images[0].image == pixels


def test_r1_wins_over_r2_like_the_original_server() -> None:
    inference = field_bytes(2, field_varint(1, 4))
    assert decode(field_bytes(3, inference) + field_bytes(2, b"")).kind is RequestKind.INFO


def test_an_r2_split_in_two_is_merged_like_protobuf_does() -> None:
    first = field_bytes(1, field_bytes(1, b"blur")) + field_bytes(2, field_varint(1, 3))
    second = field_bytes(2, field_varint(1, 5))
    body = field_bytes(3, first) + field_bytes(3, second)
    decoded = decode(body)
    assert merged_model(decoded).name == "blur"
    assert [image.width for image in decoded.images] == [3, 5]
    assert [i.width for i in pb.RequestWrapper.FromString(body).r2.images] == [3, 5]


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    unknown = (
        field_varint(15, 300)
        + tag(16, I64)
        + bytes(8)
        + field_bytes(17, b"xyz")
        + tag(18, I32)
        + bytes(4)
        + tag(19, SGROUP)
        + field_varint(1, 1)
        + tag(19, EGROUP)
    )
    image = unknown + field_varint(1, 2) + field_varint(2, 3) + field_varint(3, 1)
    image += field_bytes(4, bytes(24))
    body = unknown + field_bytes(3, unknown + field_bytes(2, image))
    [wire] = decode(body).images
    assert (wire.width, wire.height, wire.channels, wire.nbytes) == (2, 3, 1, 24)


def test_negative_sizes_decode_as_int32() -> None:
    image = pb.Image(width=-4, height=-(2**31), channels=2**31 - 1)
    body = pb.RequestWrapper(r2=pb.RequestInference(images=[image])).SerializeToString()
    [wire] = decode(body).images
    assert (wire.width, wire.height, wire.channels) == (-4, -(2**31), 2**31 - 1)


# --- property: whatever the protobuf classes write, the codec reads the same ----------------


int32s = st.integers(-(2**31), 2**31 - 1)
names = st.text(max_size=8)


@st.composite
def wire_images(draw: st.DrawFn) -> pb.Image:
    """An ``Image`` with any of its fields set or left out."""
    image = pb.Image()
    for field in ("width", "height", "channels"):
        value = draw(st.none() | int32s)
        if value is not None:
            setattr(image, field, value)
    pixels = draw(st.none() | st.binary(max_size=200))
    if pixels is not None:
        image.image = pixels
    return image


@st.composite
def models(draw: st.DrawFn) -> pb.Model:
    """A ``Model`` with a few options of every kind."""
    model = pb.Model(name=draw(names), label=draw(names))
    for name, value in draw(st.lists(st.tuples(names, st.booleans()), max_size=2)):
        model.bool_options.add(name=name, values=[value])
    for name, value in draw(st.lists(st.tuples(names, int32s), max_size=2)):
        model.int_options.add(name=name, values=[value])
    floats = st.floats(width=32, allow_nan=False)
    for name, value in draw(st.lists(st.tuples(names, floats), max_size=2)):
        model.float_options.add(name=name, values=[value])
    for name, value in draw(st.lists(st.tuples(names, names), max_size=2)):
        model.string_options.add(name=name, values=[value])
    return model


@st.composite
def inference_requests(draw: st.DrawFn) -> pb.RequestWrapper:
    """A ``RequestWrapper`` holding an inference request (with or without a model)."""
    inference = pb.RequestInference(images=draw(st.lists(wire_images(), max_size=4)))
    model = draw(st.none() | models())
    if model is not None:
        inference.model.CopyFrom(model)
    wrapper = pb.RequestWrapper(r2=inference)
    if draw(st.booleans()):
        wrapper.info = True
    return wrapper


@given(inference_requests())
@settings(max_examples=150, deadline=None)
def test_decoded_requests_match_what_protobuf_wrote(request: pb.RequestWrapper) -> None:
    body = request.SerializeToString()
    decoded = decode(body)
    assert decoded.kind is RequestKind.INFER
    expected = [(i.width, i.height, i.channels, i.image) for i in request.r2.images]
    got = [(w.width, w.height, w.channels, body[w.start : w.end]) for w in decoded.images]
    assert got == expected
    assert merged_model(decoded) == request.r2.model


@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 7), st.integers(1, 7)),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_frames_survive_the_wire_both_ways(shape: tuple[int, int, int], seed: int) -> None:
    channels, height, width = shape
    frame = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    wire = pb.Image(
        width=width, height=height, channels=channels, image=frame[:, ::-1].astype("<f4").tobytes()
    )
    body = np.frombuffer(
        pb.RequestWrapper(r2=pb.RequestInference(images=[wire])).SerializeToString(), np.uint8
    )
    [decoded] = decode_request(memoryview(body)).images
    tensor = frame_from_wire(body, decoded, what="image 0")
    assert torch.equal(tensor, torch.from_numpy(frame))  # internal form: top row first
    assert joined([frame_to_wire(tensor)]) == wire.image  # and back: bottom row first


# --- option values: packed and unpacked -----------------------------------------------------


def options_model(*, packed: bool) -> bytes:
    """Return knobby's ``Model`` with one value per option kind, packed or not."""

    def values(number: int, encoded: bytes, unpacked: bytes) -> bytes:
        return field_bytes(number, encoded) if packed else unpacked

    def option(name: str, value: bytes) -> bytes:
        return field_bytes(1, name.encode()) + value

    return (
        field_bytes(1, b"knobby")
        + field_bytes(5, option("invert", values(2, varint(1), field_varint(2, 1))))
        + field_bytes(6, option("steps", values(2, varint(7), field_varint(2, 7))))
        + field_bytes(7, option("gain", values(2, struct.pack("<f", 0.25), field_float(2, 0.25))))
        + field_bytes(8, option("note", field_bytes(2, b"shot 010")))
        + field_bytes(9, option("report", values(2, varint(1), field_varint(2, 1))))
    )


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_packed_and_unpacked_option_values_both_parse(packed: bool) -> None:
    body = field_varint(1, 1) + field_bytes(3, field_bytes(1, options_model(packed=packed)))
    model = merged_model(decode(body))
    assert model.name == "knobby"
    assert sent_knobs(model) == {
        "invert": True,
        "steps": 7,
        "gain": 0.25,
        "note": "shot 010",
        "report": True,
    }


def test_the_schema_writes_option_values_packed() -> None:
    assert pb.IntAttrib(name="steps", values=[7]).SerializeToString() == (
        field_bytes(1, b"steps") + field_bytes(2, varint(7))
    )
    assert pb.FloatAttrib(name="g", values=[0.25, 1.0]).SerializeToString() == (
        field_bytes(1, b"g") + field_bytes(2, struct.pack("<2f", 0.25, 1.0))
    )


# --- the inference reply ------------------------------------------------------------------


def test_frame_to_wire_lays_rows_out_bottom_up_and_planar() -> None:
    frame = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (C, H, W)
    pixels = frame_to_wire(torch.from_numpy(frame))
    assert pixels.nbytes == frame.nbytes
    rows = [np.frombuffer(view, dtype="<f4") for view in pixels.views]
    # channel 0 bottom row first, then upwards; then channel 1
    expected = [frame[c, r] for c in range(2) for r in (2, 1, 0)]
    assert [row.tolist() for row in rows] == [row.tolist() for row in expected]


@pytest.mark.parametrize(
    "make",
    [
        lambda f: torch.from_numpy(f),
        lambda f: torch.from_numpy(f.astype(np.float64)),  # another dtype: converted
        lambda f: torch.from_numpy(np.ascontiguousarray(f.transpose(0, 2, 1))).transpose(1, 2),
    ],
    ids=["float32", "float64", "not contiguous"],
)
def test_frame_to_wire_accepts_any_layout_of_the_same_frame(
    make: Callable[[np.ndarray], torch.Tensor],
) -> None:
    frame = np.random.default_rng(5).standard_normal((3, 5, 6)).astype(np.float32)
    tensor = make(frame)
    assert joined([frame_to_wire(tensor)]) == frame[:, ::-1].astype("<f4").tobytes()


def test_the_encoded_reply_parses_with_the_protobuf_classes() -> None:
    rng = np.random.default_rng(6)
    first = rng.standard_normal((3, 4, 5)).astype(np.float32)
    second = rng.standard_normal((1, 4, 5)).astype(np.float32)
    script = pb.FieldValuePairAttrib(name="PythonScript")
    script.values.add().string_attributes.add(name="script", values=["nuke.message('hi')"])
    parts, length = encode_inference_reply(
        [
            (5, 4, 3, frame_to_wire(torch.from_numpy(first))),
            (5, 4, 1, frame_to_wire(torch.from_numpy(second))),
        ],
        [script.SerializeToString()],
    )
    body = joined(parts)
    assert len(body) == length
    reply = pb.RespondWrapper.FromString(body)
    assert reply.info and reply.HasField("r2") and not reply.HasField("error")
    assert reply.r2.num_images == 2 and reply.r2.num_objects == 1
    for image, frame in zip(reply.r2.images, (first, second), strict=True):
        assert (image.channels, image.height, image.width) == frame.shape
        assert image.image == frame[:, ::-1].astype("<f4").tobytes()
    assert reply.r2.objects[0] == script
    assert reply == pb.RespondWrapper.FromString(reply.SerializeToString())


def test_a_reply_without_images_or_objects_still_parses() -> None:
    parts, length = encode_inference_reply([], [])
    reply = pb.RespondWrapper.FromString(joined(parts))
    assert len(joined(parts)) == length
    assert reply.info and reply.HasField("r2")
    assert reply.r2.num_images == 0 and reply.r2.num_objects == 0


def test_a_large_reply_has_a_multi_byte_length_and_still_parses() -> None:
    frame = np.random.default_rng(7).standard_normal((3, 100, 200)).astype(np.float32)
    parts, length = encode_inference_reply(
        [(200, 100, 3, frame_to_wire(torch.from_numpy(frame)))], []
    )
    reply = pb.RespondWrapper.FromString(joined(parts))
    assert length == len(joined(parts)) > 240_000
    assert reply.r2.images[0].image == frame[:, ::-1].tobytes()


# --- malformed requests ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x80", id="tag truncated inside its varint"),
        pytest.param(b"\x08", id="varint value missing"),
        pytest.param(b"\x08\x80\x80", id="varint truncated"),
        pytest.param(b"\x08" + b"\xff" * 10 + b"\x01", id="varint longer than 10 bytes"),
        pytest.param(b"\x1a\x05\x00", id="length past the end"),
        pytest.param(b"\x1a" + varint(2**40) + b"\x00", id="huge length"),
        pytest.param(b"\x1a\x03\x12\x05\x08", id="inner length past the end of r2"),
        pytest.param(b"\x1a\x03\x12\x01\x08", id="truncated varint inside an image"),
        pytest.param(b"\x0e\x00", id="wire type 6"),
        pytest.param(b"\x0f\x00", id="wire type 7"),
        pytest.param(b"\x1a\x02\x17\x00", id="wire type 7 inside r2"),
        pytest.param(b"\x00\x01", id="field number 0"),
        pytest.param(b"\x02\x00", id="field number 0, length-delimited"),
        pytest.param(b"\x09\x00\x00", id="fixed64 truncated"),
        pytest.param(b"\x0d\x00", id="fixed32 truncated"),
        pytest.param(b"\x0b\x08\x01", id="group never closed"),
        pytest.param(b"\x0b\x14", id="group closed by another number"),
        pytest.param(b"\x0b\x0e\x00\x0c", id="wire type 6 inside a group"),
        pytest.param(b"\x08\x01", id="neither r1 nor r2"),
        pytest.param(b"", id="empty"),
    ],
)
def test_malformed_requests_raise_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(body)


def test_deeply_nested_groups_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(tag(3, SGROUP) * 5000 + tag(3, EGROUP) * 5000)


def test_error_messages_say_what_is_wrong() -> None:
    with pytest.raises(ProtocolError, match="neither r1"):
        decode(b"\x08\x01")
    with pytest.raises(ProtocolError, match="wire type 6"):
        decode(b"\x0e\x00")
    with pytest.raises(ProtocolError, match="numbered 0"):
        decode(b"\x00\x01")
    with pytest.raises(ProtocolError, match="claims 5 bytes; only 1 remain"):
        decode(b"\x1a\x05\x00")


# --- framing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "length"),
    [(b"000000000000", 0), (b"000000000006", 6), (b"999999999999", 10**12 - 1)],
)
def test_parse_request_header_reads_twelve_digits(header: bytes, length: int) -> None:
    assert parse_request_header(header) == length
    assert parse_request_header(bytearray(header)) == length
    assert parse_request_header(memoryview(header)) == length


@pytest.mark.parametrize(
    "header",
    [
        b"00000000006",  # 11 digits
        b"0000000000006",  # 13 digits
        b"",
        b"00000000000a",
        b" 00000000006",
        b"00000000006 ",
        b"-00000000006",
        b"+00000000006",
        b"0000000006\n\n",
        b"0000000000\xc2\xb2",  # a superscript two in UTF-8
        b"00000000000\x00",
    ],
)
def test_parse_request_header_rejects_anything_else(header: bytes) -> None:
    with pytest.raises(ProtocolError, match="12 ASCII digits"):
        parse_request_header(header)


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"000000000012"),
        (6, b"000000000018"),
        (123456, b"000000123468"),
        (10**12 - 13, b"9" * 12),
    ],
)
def test_reply_header_counts_itself(length: int, header: bytes) -> None:
    assert reply_header(length) == header
    assert len(header) == HEADER_SIZE


def test_a_reply_too_long_for_the_header_is_refused() -> None:
    with pytest.raises(ProtocolError):
        reply_header(10**12 - 12)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of stream sockets: (server side, client side)."""
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        yield server_side, client_side


def send_later(
    sock: socket.socket, pieces: list[bytes], *, close: bool = False
) -> threading.Thread:
    """Send ``pieces`` from a thread, a little apart; optionally close the write side."""

    def run() -> None:
        for piece in pieces:
            time.sleep(0.01)
            sock.sendall(piece)
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_recv_exact_into_gathers_pieces(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    server_side, client_side = socket_pair
    sender = send_later(client_side, [b"0000", b"00000", b"006abc", b"def"])
    buffer = bytearray(18)
    recv_exact_into(server_side, memoryview(buffer), idle_timeout=5, deadline=time.monotonic() + 5)
    sender.join()
    assert bytes(buffer) == b"000000000006abcdef"


def test_recv_exact_into_reports_a_client_that_left(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, client_side = socket_pair
    send_later(client_side, [b"abc"], close=True).join()
    with pytest.raises(ClientGone) as caught:
        recv_exact_into(
            server_side, memoryview(bytearray(10)), idle_timeout=5, deadline=time.monotonic() + 5
        )
    assert (caught.value.received, caught.value.expected) == (3, 10)


def test_recv_exact_into_reports_a_silent_client(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, client_side = socket_pair
    client_side.sendall(b"abc")
    with pytest.raises(ClientStalled, match="3 of 10 bytes"):
        recv_exact_into(
            server_side, memoryview(bytearray(10)), idle_timeout=0.1, deadline=time.monotonic() + 5
        )


def test_recv_exact_into_reports_a_passed_deadline(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, _ = socket_pair
    with pytest.raises(ClientStalled, match="not complete in time"):
        recv_exact_into(
            server_side, memoryview(bytearray(10)), idle_timeout=5, deadline=time.monotonic() - 1
        )


def test_send_buffers_sends_every_part_in_order(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    server_side, client_side = socket_pair
    frame = np.random.default_rng(8).standard_normal((3, 300, 700)).astype(np.float32)
    pixels = frame_to_wire(torch.from_numpy(frame))  # 900 row views: more than one sendmsg
    floats = np.arange(10, dtype=np.float32)
    parts = [b"head", *pixels.views, b"", bytearray(b"mid"), memoryview(floats), b"tail"]
    expected = b"head" + frame[:, ::-1].tobytes() + b"mid" + floats.tobytes() + b"tail"
    received = bytearray()

    def read_all() -> None:
        while piece := client_side.recv(1 << 16):
            received.extend(piece)

    reader = threading.Thread(target=read_all)
    reader.start()
    server_side.settimeout(10)
    send_buffers(server_side, parts)
    server_side.shutdown(socket.SHUT_WR)
    reader.join(timeout=10)
    assert bytes(received) == expected
