"""Fast protobuf wire handling for the two big messages: the inference request and reply.

A generic protobuf parser copies every ``bytes`` field; for a 4K frame that is 100 MB of copies
per request. Here the request body stays in the buffer it was received into: the decoder walks
the protobuf wire format (varints, tags, lengths) of ``RequestWrapper → RequestInference →
Image`` and returns each image's pixels as a view of that buffer. Small parts (the ``Model``
with its options) are handed to the regular protobuf classes. The decoder counts what it
walks and stops at the caps (images, fields, model bytes) before building anything past them.

The reply is written the other way round: small headers are encoded here and the pixel buffers
are passed to the socket as they are (see :func:`encode_inference_reply`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from frameserve.errors import FrameError, ProtocolError, RequestTooLargeError

__all__ = [
    "DecodedRequest",
    "RequestKind",
    "WireImage",
    "WirePixels",
    "decode_request",
    "encode_inference_reply",
    "field_budget",
]

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_MAX_GROUP_DEPTH = 100  # as protobuf's own parsers


class RequestKind(enum.Enum):
    """What an MLClient request asks for; the value is how its log line names it."""

    INFO = "info"  #: the models the server offers (``r1``)
    INFER = "infer"  #: run a model on the images sent (``r2``)


@dataclass(frozen=True)
class WireImage:
    """An ``Image`` message whose pixels are ``buffer[start:end]`` of the request body."""

    width: int
    height: int
    channels: int
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Length of the ``image`` bytes field."""
        return self.end - self.start


@dataclass(frozen=True)
class WirePixels:
    """An image's pixels for a reply, as byte views to gather in order (not joined)."""

    nbytes: int
    views: list[memoryview]


@dataclass
class DecodedRequest:
    """A decoded ``RequestWrapper``: an info request, or an inference request's parts."""

    kind: RequestKind
    model_parts: list[memoryview] = field(default_factory=list)
    images: list[WireImage] = field(default_factory=list)


def decode_request(body: memoryview, *, max_images: int | None = None) -> DecodedRequest:
    """Decode a ``RequestWrapper`` body without copying image bytes.

    Like the original server, an ``r1`` (info) field wins over ``r2`` (inference).

    The work is bounded before it is done: at most ``max_images`` images (decoding stops at
    the first image past it, before building it), :data:`MAX_MESSAGE_PARTS` occurrences of
    the ``r2`` and ``model`` messages, :data:`MAX_MODEL_BYTES` of model message, and a number
    of fields in all that a request of that many images needs (:func:`field_budget`), so a
    small body of many tiny fields cannot cost much time or memory.

    Raises:
        ProtocolError: the bytes are not a valid message, hold neither ``r1`` nor ``r2``, or
            hold far more fields than a request needs.
        FrameError: more images than ``max_images``.
        RequestTooLargeError: a model message above :data:`MAX_MODEL_BYTES`.
    """
    body = body.cast("B") if body.format != "B" else body
    walker = _Walker(body, field_budget(max_images))
    has_info = False
    inference_parts: list[tuple[int, int]] = []
    for number, wire_type, value in walker.fields(0, len(body)):
        if number == 2 and wire_type == _LEN:
            has_info = True
        elif number == 3 and wire_type == _LEN:
            _check_parts(inference_parts, "r2")
            inference_parts.append(value)
    if has_info:
        return DecodedRequest(RequestKind.INFO)
    if not inference_parts:
        raise ProtocolError(
            "request message holds neither r1 (an info request) nor r2 (an inference request)"
        )
    decoded = DecodedRequest(RequestKind.INFER)
    model_bytes = 0
    for start, end in inference_parts:
        for number, wire_type, value in walker.fields(start, end):
            if number == 1 and wire_type == _LEN:
                _check_parts(decoded.model_parts, "model")
                model_bytes += value[1] - value[0]
                if model_bytes > MAX_MODEL_BYTES:
                    raise RequestTooLargeError(
                        f"the request's model message is above {MAX_MODEL_BYTES} bytes, the "
                        "most accepted"
                    )
                decoded.model_parts.append(body[value[0] : value[1]])
            elif number == 2 and wire_type == _LEN:
                if max_images is not None and len(decoded.images) >= max_images:
                    raise FrameError(
                        f"request carries more than {max_images} images; at most {max_images} "
                        "are accepted (--max-request-images)"
                    )
                decoded.images.append(walker.image(*value))
    return decoded


#: How many times the ``r2`` and ``model`` messages may occur in one request (protobuf merges
#: repeated occurrences; clients send each once).
MAX_MESSAGE_PARTS = 16
#: The largest ``Model`` message accepted in an inference request (its name and knob values).
MAX_MODEL_BYTES = 1 << 20
#: Fields a request may hold besides its images'; each image adds :data:`_FIELDS_PER_IMAGE`.
_BASE_FIELDS = 256
_FIELDS_PER_IMAGE = 16
#: Fields walked when no image cap is given (tests and tools decoding their own messages).
_UNCAPPED_FIELDS = 1 << 24


def field_budget(max_images: int | None) -> int:
    """Return how many fields (at every level) a request of ``max_images`` images may hold.

    A request needs a few fields around its images and four per image (width, height,
    channels, pixels); the budget leaves room for fields a newer client adds.
    """
    if max_images is None:
        return _UNCAPPED_FIELDS
    return _BASE_FIELDS + _FIELDS_PER_IMAGE * max_images


def _check_parts(parts: list[Any], name: str) -> None:
    if len(parts) >= MAX_MESSAGE_PARTS:
        raise ProtocolError(
            f"request message sends {name} more than {MAX_MESSAGE_PARTS} times; send it once"
        )


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _varint(body: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError("request message is truncated inside a varint")
        byte = body[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtocolError("request message holds a varint longer than 10 bytes")


class _Walker:
    """Walks the protobuf wire format of one body, counting fields against a budget."""

    def __init__(self, body: memoryview, budget: int) -> None:
        self.body = body
        self.budget = budget
        self.left = budget

    def _count(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ProtocolError(
                f"request message holds more than {self.budget} fields, far more than a "
                "request needs"
            )

    def fields(self, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
        """Yield ``(field number, wire type, value)``; a length-delimited value is
        ``(start, end)``."""
        body = self.body
        while pos < end:
            self._count()
            tag, pos = _varint(body, pos, end)
            number, wire_type = tag >> 3, tag & 7
            if number == 0:
                raise ProtocolError("request message holds a field numbered 0")
            value: Any
            if wire_type == _VARINT:
                value, pos = _varint(body, pos, end)
            elif wire_type == _LEN:
                length, pos = _varint(body, pos, end)
                if length > end - pos:
                    raise ProtocolError(
                        f"request message field {number} claims {length} bytes; "
                        f"only {end - pos} remain"
                    )
                value, pos = (pos, pos + length), pos + length
            elif wire_type in (_I64, _I32):
                size = 8 if wire_type == _I64 else 4
                if size > end - pos:
                    raise ProtocolError(f"request message is truncated inside field {number}")
                value, pos = int.from_bytes(body[pos : pos + size], "little"), pos + size
            elif wire_type == _SGROUP:
                pos = self._skip_group(pos, end, number)
                continue
            else:
                raise ProtocolError(f"request message uses wire type {wire_type} in field {number}")
            yield number, wire_type, value

    def image(self, start: int, end: int) -> WireImage:
        """Decode the ``Image`` message at ``body[start:end]`` (its pixels are not copied)."""
        width = height = channels = 0
        pixels = (start, start)
        for number, wire_type, value in self.fields(start, end):
            if wire_type == _VARINT and number in (1, 2, 3):
                as_int32 = _int32(value)
                if number == 1:
                    width = as_int32
                elif number == 2:
                    height = as_int32
                else:
                    channels = as_int32
            elif number == 4 and wire_type == _LEN:
                pixels = value
        return WireImage(width, height, channels, pixels[0], pixels[1])

    def _skip_group(self, pos: int, end: int, group: int) -> int:
        """Return the position after the end tag of ``group`` (nested groups skipped too)."""
        body = self.body
        open_groups = [group]
        while pos < end:
            self._count()
            tag, pos = _varint(body, pos, end)
            number, wire_type = tag >> 3, tag & 7
            if wire_type == _EGROUP:
                if number != open_groups[-1]:
                    raise ProtocolError(
                        f"request message closes group {number} inside group {open_groups[-1]}"
                    )
                open_groups.pop()
                if not open_groups:
                    return pos
            elif wire_type == _SGROUP:
                if len(open_groups) >= _MAX_GROUP_DEPTH:
                    raise ProtocolError(
                        f"request message nests groups deeper than {_MAX_GROUP_DEPTH}"
                    )
                open_groups.append(number)
            elif wire_type == _VARINT:
                pos = _varint(body, pos, end)[1]
            elif wire_type == _LEN:
                length, pos = _varint(body, pos, end)
                if length > end - pos:
                    raise ProtocolError("request message is truncated inside a group")
                pos += length
            elif wire_type in (_I64, _I32):
                size = 8 if wire_type == _I64 else 4
                if size > end - pos:
                    raise ProtocolError("request message is truncated inside a group")
                pos += size
            else:
                raise ProtocolError(f"request message uses wire type {wire_type} inside a group")
        raise ProtocolError(f"request message never closes group {group}")


def _encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _encode_varint(number << 3 | wire_type)


def encode_inference_reply(
    images: Sequence[tuple[int, int, int, WirePixels]], objects: Sequence[bytes]
) -> tuple[list[bytes | WirePixels], int]:
    """Encode ``RespondWrapper{info: true, r2: RespondInference{...}}`` as a list of parts.

    Args:
        images: ``(width, height, channels, pixels)`` per image; the pixel views are passed
            on as they are, never copied.
        objects: serialized ``FieldValuePairAttrib`` messages.

    Returns:
        The parts to send in order (bytes and :class:`WirePixels`), and their total length.
    """
    inner: list[bytes | WirePixels] = [_tag(1, _VARINT) + _encode_varint(len(images))]
    length = len(inner[0])  # type: ignore[arg-type]
    for width, height, channels, pixels in images:
        head = b"".join(
            (
                _tag(1, _VARINT) + _encode_varint(width),
                _tag(2, _VARINT) + _encode_varint(height),
                _tag(3, _VARINT) + _encode_varint(channels),
                _tag(4, _LEN) + _encode_varint(pixels.nbytes),
            )
        )
        image_head = _tag(2, _LEN) + _encode_varint(len(head) + pixels.nbytes) + head
        inner += [image_head, pixels]
        length += len(image_head) + pixels.nbytes
    tail = bytearray(_tag(3, _VARINT) + _encode_varint(len(objects)))
    for obj in objects:
        tail += _tag(4, _LEN) + _encode_varint(len(obj)) + obj
    inner.append(bytes(tail))
    length += len(tail)
    head = _tag(1, _VARINT) + b"\x01" + _tag(3, _LEN) + _encode_varint(length)
    return [head, *inner], len(head) + length
