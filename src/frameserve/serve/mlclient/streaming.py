"""Receiving a request's first image straight into its frame, rows flipped by the kernel.

The node sends each image as planes of bottom-up rows; models take top-down frames. Read into
a buffer and then flipped, a 1080p frame costs a 25 MB copy after it arrived; here its rows
land in their places as they arrive (``recvmsg_into`` with the frame's rows in wire order), so
the flip costs nothing beyond the receive itself.

To know where the pixels start, the protobuf fields before them are read first, a few bytes at
a time (:func:`locate_first_image`): ``RequestWrapper.r2`` → ``RequestInference.images[0]``
with its ``width``, ``height`` and ``channels`` before its ``image`` bytes, the order every
protobuf library writes. Anything else — an info request, fields in another order, a group, an
image the limits refuse — is not streamed: the door reads the body whole and decodes it as
before, so the checks and their messages are those of :mod:`.wirecodec` in every case. A
streamed image is also checked against the full decode afterwards (:func:`image_sources`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from frameserve.errors import FrameError, ProtocolError
from frameserve.serve.mlclient.convert import check_wire_image
from frameserve.serve.mlclient.wirecodec import MAX_MODEL_BYTES, DecodedRequest, WireImage
from frameserve.serve.net.sockets import recv_exact_into_views

__all__ = [
    "BodyLimits",
    "StreamedImage",
    "fill_rows",
    "image_sources",
    "locate_first_image",
    "receive_body",
    "wire_rows",
]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
#: Fields walked before the first image's pixels at most; past it, the body is read whole.
_MAX_FIELDS = 64
#: Bytes read at a time while looking for the pixels (past the model message, which is skipped
#: whole): enough for an ``Image`` header, little enough to rarely read into the pixels.
LOOKAHEAD = 48


@dataclass(frozen=True)
class StreamedImage:
    """The first image of a request, received into ``pixels`` (channels, height, width)."""

    image: WireImage
    pixels: np.ndarray


@dataclass(frozen=True)
class BodyLimits:
    """How a body must arrive (as :func:`~frameserve.serve.net.sockets.recv_exact_into`
    takes them) and which images may be streamed (the door's frame limits)."""

    idle_timeout: float
    deadline: float
    min_rate: float | None
    rate_from: float
    max_frame_bytes: int
    max_frame_pixels: int | None


def receive_body(
    sock: socket.socket,
    length: int,
    limits: BodyLimits,
    allocate: Callable[[int, int, int], np.ndarray],
) -> tuple[np.ndarray, StreamedImage | None]:
    """Receive a request body of ``length`` bytes; its first image straight into a frame from
    ``allocate(channels, height, width)`` when it can be (see the module docstring).

    Returns the body (where a streamed image's pixels would be, its bytes are undefined: read
    them from the :class:`StreamedImage`) and the streamed image, or ``None``.

    Raises:
        ClientGone, ClientStalled: as :func:`~frameserve.serve.net.sockets.recv_exact_into`
            raises them (their byte counts are of the whole body).
    """
    body = np.empty(length, dtype=np.uint8)
    reader = _Reader(sock, body, limits)
    streamed = None
    want = min(length, LOOKAHEAD)
    while True:
        reader.read_to(want)
        found = locate_first_image(body.data[: reader.received], length)
        if isinstance(found, int) and found > reader.received:
            want = found
            continue
        if isinstance(found, WireImage) and _streamable(found, limits):
            pixels = allocate(found.channels, found.height, found.width)
            early = body.data[found.start : min(reader.received, found.end)]
            reader.scatter(fill_rows(wire_rows(pixels), early), found.end)
            streamed = StreamedImage(found, pixels)
        break
    reader.read_to(length)
    return body, streamed


class _Reader:
    """Fills a body in order, part by part, with one set of deadlines for the whole."""

    def __init__(self, sock: socket.socket, body: np.ndarray, limits: BodyLimits) -> None:
        self.sock = sock
        self.body = body
        self.limits = limits
        self.received = 0

    def read_to(self, end: int) -> None:
        """Receive the body's bytes up to ``end`` into the body."""
        if end > self.received:
            self._receive([self.body.data[self.received : end]], end)

    def scatter(self, views: list[memoryview], end: int) -> None:
        """Receive the body's bytes up to ``end`` into ``views`` instead of the body."""
        if end > self.received:
            self._receive(views, end)

    def _receive(self, views: list[memoryview], end: int) -> None:
        limits = self.limits
        recv_exact_into_views(
            self.sock,
            views,
            idle_timeout=limits.idle_timeout,
            deadline=limits.deadline,
            min_rate=limits.min_rate,
            rate_from=limits.rate_from,
            already=self.received,
            total=len(self.body),
        )
        self.received = end


def _streamable(image: WireImage, limits: BodyLimits) -> bool:
    """Whether ``image`` passes the checks the door makes before it allocates a frame."""
    if image.nbytes > limits.max_frame_bytes:
        return False
    try:
        check_wire_image(image, what="image 0", max_pixels=limits.max_frame_pixels)
    except FrameError:
        return False
    return True


def locate_first_image(prefix: memoryview, total: int) -> WireImage | int | None:
    """Find the first image's pixel bytes from the first bytes of a request body.

    Args:
        prefix: the body's first bytes (``total`` in all).
        total: the body's length.

    Returns:
        The image (its sizes as declared, its pixels at ``start:end`` of the body); or how
        many bytes of the body are needed to go on looking; or ``None``: this request is not
        streamed (read it whole).
    """
    try:
        return _locate(prefix, total)
    except _Overlong:
        return None


def _locate(prefix: memoryview, total: int) -> WireImage | int | None:
    fields = 0
    pos, end = 0, total
    depth = 0  # 0: RequestWrapper, 1: RequestInference (r2), 2: Image
    sizes = {1: 0, 2: 0, 3: 0}
    while pos < end:
        fields += 1
        if fields > _MAX_FIELDS:
            return None
        tag = _varint(prefix, pos)
        if tag is None:
            return _more(pos, total)
        key, after_tag = tag
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value = _varint(prefix, after_tag)
            if value is None:
                return _more(after_tag, total)
            if depth == 2 and number in sizes:
                sizes[number] = _int32(value[0])
            pos = value[1]
        elif wire_type in (_I64, _I32):
            pos = after_tag + (8 if wire_type == _I64 else 4)
        elif wire_type == _LEN:
            length = _varint(prefix, after_tag)
            if length is None:
                return _more(after_tag, total)
            size, start = length
            if size > end - start:
                return None  # the full decode says what is wrong
            if depth == 0 and number == 2:
                return None  # an info request
            if (depth, number) in ((0, 3), (1, 2)):  # into r2, then into its first image
                depth, end = depth + 1, start + size
                pos = start
                continue
            if depth == 2 and number == 4:
                if min(sizes.values()) < 1:
                    return None  # the sizes come after the pixels: read it whole
                return WireImage(sizes[1], sizes[2], sizes[3], start, start + size)
            if depth == 1 and number == 1 and size > MAX_MODEL_BYTES:
                return None
            pos = start + size
        else:
            return None  # groups and unknown wire types: the full decode handles them
        if pos > len(prefix) and pos < end:
            return _more(pos, total)
    return None


def wire_rows(pixels: np.ndarray) -> list[memoryview]:
    """The rows of ``pixels`` (channels, height, width; float32, C-contiguous) as byte views
    in the order the wire sends them: each plane's bottom row first."""
    channels, height, width = pixels.shape
    flat = pixels.reshape(-1).view(np.uint8).data
    row = width * 4
    return [
        flat[(plane * height + y) * row : (plane * height + y + 1) * row]
        for plane in range(channels)
        for y in range(height - 1, -1, -1)
    ]


def fill_rows(rows: list[memoryview], data: memoryview) -> list[memoryview]:
    """Copy ``data`` (the first wire bytes of the pixels) into ``rows``; return the views still
    to fill (a row partly filled comes first, cut to what is left of it)."""
    left = list(rows)
    pos = 0
    while pos < len(data) and left:
        head = left[0]
        count = min(len(head), len(data) - pos)
        head[:count] = data[pos : pos + count]
        pos += count
        left[0] = head[count:]
        if not len(left[0]):
            left.pop(0)
    return left


def _more(pos: int, total: int) -> int:
    return min(total, pos + LOOKAHEAD)


class _Overlong(Exception):
    """A varint longer than 10 bytes (the full decode refuses it)."""


def _varint(data: memoryview, pos: int) -> tuple[int, int] | None:
    """The varint at ``pos`` and the position after it; ``None`` if ``data`` ends inside."""
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise _Overlong


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def image_sources(
    decoded: DecodedRequest, streamed: StreamedImage | None
) -> list[WireImage | StreamedImage]:
    """Each decoded image's pixels: the streamed frame for the image that was streamed, the
    body's bytes (its :class:`WireImage`) for the others.

    A decoded image that claims the streamed bytes with other sizes is refused (its bytes never
    reached the body). A streamed image the decode does not use (a message that repeats its
    pixel field: the last one counts) is dropped: nothing reads its bytes in the body.

    Raises:
        ProtocolError: the first image's pixels come with sizes other than those streamed.
    """
    sources: list[WireImage | StreamedImage] = []
    for image in decoded.images:
        if streamed is not None and image == streamed.image:
            sources.append(streamed)
        elif streamed is not None and _overlap(streamed.image, image):
            raise ProtocolError(
                "the request's first image declares its sizes more than once, differently; "
                "send each image's width, height and channels once"
            )
        else:
            sources.append(image)
    return sources


def _overlap(a: WireImage, b: WireImage) -> bool:
    return a.start < b.end and b.start < a.end
