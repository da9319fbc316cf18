"""A test client that frames MLClient requests exactly as Foundry's compiled Nuke node does.

The integration tests and the benchmarks talk to the server through this module, so it is
written against the real protobuf classes (``frameserve.serve.mlclient.messages``) and not
against the server's own codec. What the node does, and what this client copies
(``docs/mlclient-protocol.md``):

- one request per connection; the request is 12 zero-padded ASCII digits giving the body
  length, then the body, written with one ``send``;
- the response header is 12 digits giving **12 + the body length**;
- an info reply body is read with a single ``recv`` of the announced size: a server that lets
  it arrive in pieces breaks the real node, so this client raises ``NodeClientError``;
- an inference reply body is read in ``read_chunk``-sized reads until end-of-file, then parsed;
- images are float32 little-endian, planar, rows bottom to top.

Usage::

    client = NodeClient("127.0.0.1", 55555)
    blur = client.model("blur")
    reply = client.infer(blur, [frame], knobs={"size": 20.0})
    result = decode_image(reply.r2.images[0])

Socket errors (refused connections, timeouts) propagate as ``OSError``; replies that the node
could not use raise ``NodeClientError``.
"""

from __future__ import annotations

import logging
import socket

import numpy as np

from frameserve.serve.mlclient import messages as pb

__all__ = [
    "HEADER_SIZE",
    "NodeClient",
    "NodeClientError",
    "decode_image",
    "encode_image",
    "frame_request",
    "inference_request",
    "info_request",
    "parse_reply",
    "recv_until_eof",
]

logger = logging.getLogger(__name__)

HEADER_SIZE = 12
"""Length of the ASCII decimal length header that starts every request and response."""

_WIRE_DTYPE = np.dtype("<f4")
_VALUE_OPTION_FIELDS = ("bool_options", "int_options", "float_options", "string_options")
_PREALLOCATE_LIMIT = 1 << 31


class NodeClientError(Exception):
    """A reply that the compiled MLClient node could not have used."""


def encode_image(frame: np.ndarray) -> pb.Image:
    """Return the wire ``Image`` for a frame, laid out as the node sends it.

    Args:
        frame: float32 array of shape ``(C, H, W)``, top row first; any value range
            (scene-linear values above 1 are kept as they are).

    Returns:
        ``Image`` with ``width=W``, ``height=H``, ``channels=C`` and ``image`` holding the
        pixels as float32 little-endian, planar, rows bottom to top.

    Example:
        >>> frame = np.zeros((3, 2, 4), dtype=np.float32)
        >>> image = encode_image(frame)
        >>> (image.width, image.height, image.channels, len(image.image))
        (4, 2, 3, 96)
    """
    if frame.ndim != 3:
        raise ValueError(f"frame must have shape (C, H, W), got shape {frame.shape}")
    channels, height, width = frame.shape
    pixels = frame[:, ::-1, :].astype(_WIRE_DTYPE, copy=False).tobytes()
    return pb.Image(width=width, height=height, channels=channels, image=pixels)


def decode_image(image: pb.Image) -> np.ndarray:
    """Return the frame carried by a wire ``Image``, the inverse of ``encode_image``.

    Args:
        image: ``Image`` whose ``image`` bytes are float32 little-endian, planar, rows bottom
            to top, ``channels * height * width * 4`` bytes long.

    Returns:
        A new float32 array of shape ``(C, H, W)``, top row first.

    Raises:
        ValueError: the dimensions are negative or the byte count does not match them.
    """
    width, height, channels = image.width, image.height, image.channels
    if min(width, height, channels) < 0:
        raise ValueError(f"negative image size {channels}x{height}x{width} (C x H x W)")
    pixels = image.image
    expected = channels * height * width * _WIRE_DTYPE.itemsize
    if len(pixels) != expected:
        raise ValueError(
            f"image of {channels}x{height}x{width} (C x H x W) float32 needs {expected} bytes,"
            f" got {len(pixels)}"
        )
    planes = np.frombuffer(pixels, dtype=_WIRE_DTYPE).reshape(channels, height, width)
    return np.ascontiguousarray(planes[:, ::-1, :], dtype=np.float32)


def frame_request(wrapper: pb.RequestWrapper) -> bytes:
    """Return a request as the node writes it: 12 zero-padded digits of body length, then body."""
    body = wrapper.SerializeToString()
    return b"%012d" % len(body) + body


def info_request() -> pb.RequestWrapper:
    """Return the request the node sends when it connects: ``{info, r1: {info}}``."""
    return pb.RequestWrapper(info=True, r1=pb.RequestInfo(info=True))


def inference_request(
    model: pb.Model,
    frames: list[np.ndarray],
    *,
    knobs: dict[str, object] | None = None,
    press: str | None = None,
) -> pb.RequestWrapper:
    """Return the inference request the node sends for a render or a button press.

    Args:
        model: the ``Model`` from the info reply; it is copied, never changed.
        frames: one float32 ``(C, H, W)`` frame per model input, in the order of ``inputs``.
        knobs: current knob values by option name. Each matching bool, int, float or string
            option gets ``values == [value]``; a name that matches no option is added as a
            new option whose kind follows the value's Python type (bool, int, float, str).
        press: name of the button being pressed: its value becomes ``[True]``. Every other
            button is ``[False]``; a name that matches no button is added as one.

    Raises:
        TypeError: a knob value that protobuf cannot store in the option's kind, or a new
            option whose value is not a bool, int, float or str.
    """
    request_model = pb.Model()
    request_model.CopyFrom(model)
    for name, value in (knobs or {}).items():
        _set_knob(request_model, name, value)
    _set_buttons(request_model, press)
    images = [encode_image(frame) for frame in frames]
    inference = pb.RequestInference(model=request_model, images=images)
    return pb.RequestWrapper(info=True, r2=inference)


def _set_knob(model: pb.Model, name: str, value: object) -> None:
    """Set every option called ``name`` to ``[value]``, adding one if there is none."""
    matched = False
    for field in _VALUE_OPTION_FIELDS:
        for option in getattr(model, field):
            if option.name == name:
                del option.values[:]
                option.values.append(value)
                matched = True
    if not matched:
        getattr(model, _option_field_for(value)).add(name=name, values=[value])


def _option_field_for(value: object) -> str:
    """Return the ``Model`` field that holds a new option for a value of this Python type."""
    if isinstance(value, bool):
        return "bool_options"
    if isinstance(value, int):
        return "int_options"
    if isinstance(value, float):
        return "float_options"
    if isinstance(value, str):
        return "string_options"
    raise TypeError(f"knob value must be a bool, int, float or str, got {type(value).__name__}")


def _set_buttons(model: pb.Model, press: str | None) -> None:
    """Set the pressed button to ``[True]`` and every other button to ``[False]``."""
    found = False
    for button in model.button_options:
        pressed = button.name == press
        del button.values[:]
        button.values.append(pressed)
        found = found or pressed
    if press is not None and not found:
        model.button_options.add(name=press, values=[True])


def parse_reply(raw: bytes) -> pb.RespondWrapper:
    """Parse a whole framed reply (header and body), checking that the header is 12 + body.

    Raises:
        NodeClientError: the reply is shorter than a header, the header is not 12 digits, or
            its value is not the reply's total length.
    """
    if len(raw) < HEADER_SIZE:
        raise NodeClientError(f"reply of {len(raw)} bytes is shorter than the 12-byte header")
    announced = _parse_header(bytes(raw[:HEADER_SIZE]))
    if announced != len(raw):
        raise NodeClientError(
            f"reply header announces {announced} bytes (12 + body) but the reply is"
            f" {len(raw)} bytes"
        )
    return pb.RespondWrapper.FromString(memoryview(raw)[HEADER_SIZE:])


def _parse_header(header: bytes) -> int:
    """Return the value of a 12-digit ASCII length header."""
    if len(header) != HEADER_SIZE or not header.isdigit():
        raise NodeClientError(f"reply header must be 12 ASCII digits, got {header!r}")
    return int(header)


def recv_until_eof(sock: socket.socket, *, size_hint: int, chunk: int) -> bytearray:
    """Read from ``sock`` until end-of-file, in reads of at most ``chunk`` bytes.

    The first ``size_hint`` bytes go into a buffer allocated up front (``recv_into``, no
    concatenation); anything past it is appended. The result may be shorter or longer than
    ``size_hint``: checking it is the caller's job.
    """
    buffer = bytearray(size_hint if 0 <= size_hint <= _PREALLOCATE_LIMIT else 0)
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        received = sock.recv_into(view[filled : filled + chunk])
        if received == 0:
            view.release()
            del buffer[filled:]
            return buffer
        filled += received
    view.release()
    while data := sock.recv(chunk):
        buffer += data
    return buffer


def _recv_exactly(sock: socket.socket, size: int, what: str) -> bytes:
    """Read exactly ``size`` bytes, raising ``NodeClientError`` if the peer closes first."""
    data = bytearray()
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise NodeClientError(
                f"connection closed after {len(data)} of {size} bytes of the {what}"
            )
        data += piece
    return bytes(data)


class NodeClient:
    """Talks to an MLClient server the way the compiled Nuke node does, one connection a call.

    Args:
        host: server address.
        port: server TCP port.
        timeout: seconds allowed for connecting and for each socket operation.
        read_chunk: size of each ``recv`` of an inference reply; the node reads 1 KiB at a
            time, a benchmark passes ``1 << 20`` to stand for the node's C++ speed.

    Example::

        client = NodeClient("127.0.0.1", 55555, timeout=5.0)
        names = [model.name for model in client.info().r1.models]
    """

    def __init__(
        self, host: str, port: int, *, timeout: float = 30.0, read_chunk: int = 1024
    ) -> None:
        if read_chunk <= 0:
            raise ValueError(f"read_chunk must be positive, got {read_chunk}")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.read_chunk = read_chunk

    def _connect(self) -> socket.socket:
        """Open a new connection to the server, as the node does for every request."""
        return socket.create_connection((self.host, self.port), timeout=self.timeout)

    def info(self) -> pb.RespondWrapper:
        """Send an info request and return the parsed reply.

        The body is read with one ``recv`` of the announced size, as the node does.

        Raises:
            NodeClientError: the header is malformed, or the body did not arrive in one read.
        """
        with self._connect() as sock:
            sock.sendall(frame_request(info_request()))
            header = _recv_exactly(sock, HEADER_SIZE, "info reply header")
            body_size = _body_size(_parse_header(header))
            body = sock.recv(body_size) if body_size else b""
        if len(body) != body_size:
            raise NodeClientError(
                f"info reply arrived in pieces: the first read after the header returned"
                f" {len(body)} of the {body_size} announced bytes"
            )
        return pb.RespondWrapper.FromString(body)

    def model(self, name: str) -> pb.Model:
        """Return the ``Model`` called ``name`` from a fresh info reply.

        Raises:
            NodeClientError: the server answered with an error, or lists no such model.
        """
        reply = self.info()
        if reply.HasField("error"):
            raise NodeClientError(f"info request failed: {reply.error.msg}")
        models = list(reply.r1.models)
        for model in models:
            if model.name == name:
                return model
        available = ", ".join(repr(model.name) for model in models) or "none"
        raise NodeClientError(f"no model named {name!r}; the server lists {available}")

    def infer(
        self,
        model: pb.Model,
        frames: list[np.ndarray],
        *,
        knobs: dict[str, object] | None = None,
        press: str | None = None,
    ) -> pb.RespondWrapper:
        """Send an inference request built by ``inference_request`` and return the reply.

        Args:
            model: the ``Model`` from the info reply (copied, never changed).
            frames: one float32 ``(C, H, W)`` frame per model input, top row first.
            knobs: current knob values by option name (see ``inference_request``).
            press: name of the button being pressed, if any.

        Raises:
            NodeClientError: the header is malformed or does not equal 12 + the body length.
        """
        request = inference_request(model, frames, knobs=knobs, press=press)
        return self.send_inference(frame_request(request))

    def send_inference(self, request: bytes) -> pb.RespondWrapper:
        """Send an already framed inference request and return the parsed reply."""
        return pb.RespondWrapper.FromString(self.exchange(request))

    def exchange(self, request: bytes) -> bytearray:
        """Send framed request bytes and return the reply body, read the node's way.

        The reply header is read, then the body in ``read_chunk`` reads until end-of-file;
        the body is returned unparsed (a benchmark times this without protobuf parsing).

        Raises:
            NodeClientError: the header is malformed or does not equal 12 + the body length.
        """
        with self._connect() as sock:
            sock.sendall(request)
            header = _recv_exactly(sock, HEADER_SIZE, "inference reply header")
            body_size = _body_size(_parse_header(header))
            body = recv_until_eof(sock, size_hint=body_size, chunk=self.read_chunk)
        if len(body) != body_size:
            raise NodeClientError(
                f"reply header announces {body_size + HEADER_SIZE} bytes (12 + body) but"
                f" {len(body) + HEADER_SIZE} arrived before the server closed"
            )
        return body

    def send_raw(self, data: bytes, *, shutdown_write: bool = False) -> bytes:
        """Send arbitrary bytes and return everything received until end-of-file or timeout.

        For malformed-input tests: nothing is checked or parsed. A connection reset or a
        failed send ends the exchange quietly; whatever arrived before it is returned.
        """
        received = bytearray()
        with self._connect() as sock:
            try:
                sock.sendall(data)
                if shutdown_write:
                    sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                logger.debug("send_raw: sending stopped early: %s", exc)
            try:
                while piece := sock.recv(65536):
                    received += piece
            except TimeoutError:
                logger.debug("send_raw: timed out after %d bytes", len(received))
            except OSError as exc:
                logger.debug("send_raw: receiving stopped early: %s", exc)
        return bytes(received)


def _body_size(announced: int) -> int:
    """Return the body length from a reply header's value, which counts the header itself."""
    if announced < HEADER_SIZE:
        raise NodeClientError(
            f"reply header announces {announced} bytes, less than the 12-byte header itself"
        )
    return announced - HEADER_SIZE
