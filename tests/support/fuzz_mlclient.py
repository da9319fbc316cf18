"""Hypothesis strategies for the MLClient door, from random bytes to hostile inference requests.

Each strategy draws a :class:`~tests.support.fuzz_probes.Probe` (the exact bytes of one
connection):

- :func:`headers`: random bytes, and 12-byte headers that are almost digits, announce more or
  less than follows, or are cut short;
- :func:`protobuf_bodies`: correctly framed bodies of random protobuf wire data (any field
  numbers and wire types, lengths that lie, varints that never end, nested messages);
- :func:`inference_requests`: structurally valid ``RequestWrapper`` / ``RequestInference``
  messages with hostile values: huge, zero and negative sizes, byte counts that do not match
  them, thousands of images, unknown models, knob values of the wrong type or out of range,
  ``NaN`` pixels and knobs, names that are not UTF-8.

The messages are written with a small protobuf encoder (:func:`field`), not the protobuf
runtime, so they can hold what the runtime refuses to write. ``models`` is the server's info
reply, so requests name real models and knobs and reach the code behind the parser.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np
from hypothesis import strategies as st

from frameserve.serve.mlclient import messages as pb
from tests.support.fuzz_json import odd_text
from tests.support.fuzz_probes import Probe, half_close

__all__ = [
    "field",
    "framed",
    "headers",
    "inference_requests",
    "protobuf_bodies",
    "varint",
]

VARINT, I64, LEN, I32 = 0, 1, 2, 5
#: Models too slow to fuzz (a knob asks for seconds of work on purpose).
SLOW_MODELS = frozenset({"slow"})
_OPTION_FIELDS = {  # Model field number -> (name, value wire type)
    5: ("bool_options", VARINT),
    6: ("int_options", VARINT),
    7: ("float_options", I32),
    8: ("string_options", LEN),
    9: ("button_options", VARINT),
}
_INT32_EDGES = (0, -1, 1, 2**31 - 1, -(2**31), 65_536, 100_000, 2**30)


def varint(value: int) -> bytes:
    """Protobuf varint of ``value`` (negative numbers as 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, wire_type: int, value: int | float | bytes) -> bytes:
    """One protobuf field: key, then the value in ``wire_type``'s encoding."""
    key = varint(number << 3 | wire_type)
    if wire_type == VARINT:
        return key + varint(int(value))
    if wire_type == I32:
        return key + _float32(float(value))
    if wire_type == I64:
        return key + struct.pack("<d", float(value))
    data = bytes(value)  # type: ignore[arg-type]
    return key + varint(len(data)) + data


def _float32(value: float) -> bytes:
    """``value`` as a little-endian float32; past float32's range, an infinity."""
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


def framed(body: bytes) -> bytes:
    """``body`` after a correct 12-digit request header."""
    return b"%012d" % len(body) + body


@st.composite
def headers(draw: st.DrawFn) -> Probe:
    """Random bytes, or an odd 12-byte header with a body that may not match it."""
    kind = draw(st.sampled_from(["bytes", "header", "short", "lie"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=200))
    elif kind == "header":
        header = draw(
            st.one_of(
                st.sampled_from(
                    [
                        b"-00000000001",
                        b"+00000000005",
                        b"     0000005",
                        b"0x0000000005",
                        b"00000000005 ",
                        b"1e3000000000",
                        b"999999999999",
                        b"000000000000",
                        b"\x00" * 12,
                        b"\xd9\xa1" * 6,
                        b"00000000000\n",
                    ]
                ),
                st.binary(min_size=12, max_size=12),
            )
        )
        data = header + draw(st.binary(max_size=64))
    elif kind == "short":
        data = b"%012d" % draw(st.integers(0, 100))
        data = data[: draw(st.integers(0, 11))]
    else:
        body = draw(st.binary(max_size=64))
        announced = len(body) + draw(st.sampled_from([-5, -1, 1, 100, 10**6, 10**11]))
        data = b"%012d" % max(announced, 0) + body
    return Probe("mlclient", data, draw(half_close), f"mlclient {kind}")


def _wire_fields(depth: int) -> st.SearchStrategy[bytes]:
    number = st.one_of(st.integers(1, 12), st.sampled_from([0, 2**29 - 1, 2**29, 19000]))
    scalar = st.one_of(
        st.tuples(number, st.just(VARINT), st.integers(-(2**63), 2**64 - 1)).map(
            lambda f: field(*f)
        ),
        st.tuples(number, st.sampled_from([I32, I64]), st.floats()).map(lambda f: field(*f)),
        st.tuples(number, st.just(LEN), st.binary(max_size=40)).map(lambda f: field(*f)),
        st.sampled_from(
            [
                b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint that never ends
                b"\x12\xff\xff\xff\xff\x0f",  # a length far past the end
                b"\x12\x05ab",  # a length past the end
                b"\x1b",  # a start-group that never ends
                b"\x0e",  # wire type 6 does not exist
                b"\x1c",  # an end-group with no start
            ]
        ),
    )
    if depth == 0:
        return scalar
    inner = st.lists(_wire_fields(depth - 1), min_size=1, max_size=4).map(b"".join)
    nested = st.tuples(number, inner).map(lambda f: field(f[0], LEN, f[1]))
    return st.one_of(scalar, nested)


@st.composite
def protobuf_bodies(draw: st.DrawFn) -> Probe:
    """A correctly framed body of random protobuf wire data."""
    body = b"".join(draw(st.lists(_wire_fields(2), max_size=6)))
    return Probe("mlclient", framed(body), draw(half_close), "mlclient protobuf")


def _float32s() -> st.SearchStrategy[float]:
    return st.floats(width=32)


def _option_value(wire_type: int) -> st.SearchStrategy[bytes]:
    if wire_type == I32:
        return _float32s().map(_float32)
    if wire_type == VARINT:
        return st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(_INT32_EDGES)).map(
            varint
        )
    return st.one_of(
        odd_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"x" * 100_000]),
    )


@st.composite
def _option(draw: st.DrawFn, names: Sequence[str]) -> bytes:
    """One option message (bool/int/float/string/button) with hostile values."""
    number = draw(st.sampled_from(sorted(_OPTION_FIELDS)))
    _, wire_type = _OPTION_FIELDS[number]
    wire_type = draw(st.sampled_from([wire_type, wire_type, wire_type, VARINT, I32, LEN]))
    name = draw(st.one_of(st.sampled_from(list(names) or ["x"]), odd_text))
    values = draw(st.lists(_option_value(wire_type), max_size=4))
    count = draw(st.sampled_from([1, 1, 1, 1000]))
    body = field(1, LEN, name.encode("utf-8", "surrogatepass"))
    if wire_type == LEN:
        body += b"".join(field(2, LEN, value) for value in values) * count
    elif draw(st.booleans()):  # packed
        body += field(2, LEN, b"".join(values) * count)
    else:
        body += b"".join(varint(2 << 3 | wire_type) + value for value in values) * count
    return field(number, LEN, body)


def _model_message(draw: st.DrawFn, models: Sequence[pb.Model], *, hostile: bool) -> bytes:
    """A ``Model``: a real one sent back as the node does, changed in hostile ways unless
    ``hostile`` is false."""
    choices = [model for model in models if model.name not in SLOW_MODELS]
    base = pb.Model()
    if choices and (not hostile or draw(st.integers(0, 5))):
        base.CopyFrom(draw(st.sampled_from(choices)))
    else:
        base.name = draw(st.sampled_from(["nope", "broken_import", "", "identity "]))
    if not hostile:
        return bytes(base.SerializeToString())
    names = [o.name for f, _ in _OPTION_FIELDS.values() for o in getattr(base, f)]
    if draw(st.booleans()):
        for option_field, _ in _OPTION_FIELDS.values():
            if draw(st.booleans()):
                base.ClearField(option_field)
    body = bytes(base.SerializeToString())
    body += b"".join(draw(st.lists(_option(names), max_size=4)))
    if draw(st.integers(0, 5)) == 0:
        choice = field(1, LEN, draw(st.sampled_from([b"mode", b"edges", b"quality"])))
        choice += field(2, LEN, draw(odd_text).encode("utf-8", "surrogatepass"))
        body += field(10, LEN, choice)
    if draw(st.integers(0, 9)) == 0:
        body += field(1, LEN, draw(st.sampled_from([b"\xff\xfe", b"a\x00b", b"x" * 10_000])))
    return body


def _pixels(draw: st.DrawFn, count: int) -> bytes:
    """``count`` float32 pixels: random scene-linear values, or NaN, -inf, huge or zero."""
    fill = draw(st.sampled_from([None, math.nan, -math.inf, 3.0e38, 0.0]))
    if fill is None:
        array = np.random.default_rng(count).uniform(-1, 4, count)
    else:
        array = np.full(count, fill)
    return bytes(array.astype("<f4").tobytes())


@st.composite
def _image(draw: st.DrawFn, channels: int, *, exact: bool = False) -> bytes:
    """One ``Image`` message: a right-sized frame of ``channels`` if ``exact``, else perhaps
    one whose sizes and bytes disagree."""
    if exact:
        width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
        pixels = _pixels(draw, width * height * channels)
        sizes = (1, width), (2, height), (3, channels)
        return b"".join(field(number, VARINT, value) for number, value in sizes) + field(
            4, LEN, pixels
        )
    if draw(st.integers(0, 3)):
        width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
        channels = draw(st.sampled_from([channels, channels, channels, 1, 4, 0]))
    else:
        edge = st.one_of(st.sampled_from(_INT32_EDGES), st.integers(-(2**31), 2**31 - 1))
        width, height, channels = draw(edge), draw(edge), draw(edge)
    count = max(width, 0) * max(height, 0) * max(channels, 0)
    count = min(count, 1 << 16)
    pixels = _pixels(draw, count)
    cut = draw(st.sampled_from([0, 0, 0, 0, -1, 4, -4, len(pixels)]))
    if cut > 0:
        pixels += b"\0" * cut
    elif cut < 0:
        pixels = pixels[:cut]
    sizes = (1, width), (2, height), (3, channels)
    message = b"".join(field(number, VARINT, value) for number, value in sizes if value != 0)
    return message + field(4, LEN, pixels)


@st.composite
def inference_requests(draw: st.DrawFn, models: Sequence[pb.Model]) -> Probe:
    """A structurally valid inference request with hostile values, correctly framed.

    One in three is a request the model can run (a real model, its own knobs, one frame of
    the right channels per input; the pixels may be NaN or huge); the rest are hostile.
    """
    clean = draw(st.integers(0, 2)) == 0
    model = _model_message(draw, models, hostile=not clean)
    try:
        parsed = pb.Model.FromString(model)
    except Exception:  # the protobuf runtime's DecodeError: a hostile name
        parsed = pb.Model()
    wanted = [prototype.channels for prototype in parsed.inputs] or [3]
    channels = wanted[0]
    count = len(wanted)
    if not clean:
        count = draw(st.one_of(st.just(count), st.integers(0, 4), st.sampled_from([65, 20_000])))
    if clean:
        images = [field(2, LEN, draw(_image(c, exact=True))) for c in wanted]
    elif count > 8:  # many images: the same 1x1 one, repeated
        one = b"".join(field(number, VARINT, value) for number, value in ((1, 1), (2, 1), (3, 3)))
        images = [field(2, LEN, one + field(4, LEN, b"\0" * 12))] * count
    else:
        images = [field(2, LEN, draw(_image(channels))) for _ in range(count)]
    inference = field(1, LEN, model) + b"".join(images)
    wrapper = b""
    if clean or draw(st.integers(0, 5)):
        wrapper += field(1, VARINT, 1)  # info, as the node always sets it
    if not clean and draw(st.integers(0, 9)) == 0:
        wrapper += field(2, LEN, field(1, VARINT, 1))  # an info request as well
    wrapper += field(3, LEN, inference)
    if not clean and draw(st.integers(0, 9)) == 0:
        wrapper = wrapper[: draw(st.integers(0, len(wrapper)))]  # cut, but framed as whole
    data = framed(wrapper)
    if not clean and draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # cut: fewer bytes than announced
    return Probe("mlclient", data, draw(half_close), "mlclient inference")
