"""A studio network on loopback: a proxy that delivers a server's bytes in TCP-segment pieces.

Loopback carries up to 64 KB per segment, so every reply arrives whole there; on Ethernet a TCP
segment carries about 1,448 bytes, and a reply longer than that arrives in pieces. The
compiled MLClient node reads the info reply with a single ``recv`` and parses what that one
call returned (zero bytes after it), so pieces matter::

    with SegmentingProxy(server.mlclient_address) as proxy:
        announced, parsed = info_as_the_node_reads_it(proxy.address)
        assert parsed == announced

The proxy passes the client's bytes to the server as they come, and the server's bytes to the
client in ``segment`` -byte sends (``TCP_NODELAY``, so each is its own segment) with ``pause``
seconds between them: the node's single read returns the first piece only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

from frameserve.serve.mlclient import messages as pb
from tests.support.node_client import HEADER_SIZE, frame_request, info_request

__all__ = ["SEGMENT", "SegmentingProxy", "info_as_the_node_reads_it", "models_in_prefix"]

#: What a TCP segment carries on Ethernet (MTU 1500, TCP timestamps on).
SEGMENT = 1448


class SegmentingProxy:
    """Forwards connections to ``upstream``, cutting what comes back into segments."""

    def __init__(
        self, upstream: tuple[str, int], *, segment: int = SEGMENT, pause: float = 0.05
    ) -> None:
        self.upstream = upstream
        self.segment = segment
        self.pause = pause
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect."""
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def __enter__(self) -> SegmentingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream, timeout=10) as server:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upward = threading.Thread(target=_pump, args=(client, server), daemon=True)
            upward.start()
            while True:
                data = server.recv(1 << 16)
                if not data:
                    break
                for start in range(0, len(data), self.segment):
                    client.sendall(data[start : start + self.segment])
                    time.sleep(self.pause)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)
            upward.join(timeout=5)


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)


def info_as_the_node_reads_it(address: tuple[str, int]) -> tuple[int, int]:
    """Ask for the model list as the node does; return ``(num_models, models it parses)``.

    One ``recv`` for the header and one for the body, like the node's code; the body buffer
    is the announced size, zero after what that read returned, and parsing keeps the models
    read before the first broken field (what protobuf's C++ parser leaves in the message).
    """
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(frame_request(info_request()))
        header = sock.recv(HEADER_SIZE)
        body_size = int(header.decode("ascii")) - HEADER_SIZE
        received = sock.recv(body_size)
    announced, parsed = models_in_prefix(received)
    return announced, parsed


def models_in_prefix(body: bytes) -> tuple[int, int]:
    """``(num_models, complete models)`` in the first bytes of a ``RespondWrapper`` body.

    Walks the wire format: ``RespondWrapper.r1`` (field 2) → ``RespondInfo.num_models`` (1)
    and ``models`` (2); a model counts when all its bytes are there and it parses.
    """
    r1 = _length_delimited_fields(body).get(2, [b""])[0]
    announced = 0
    parsed = 0
    position = 0
    while position < len(r1):
        tag, position = _varint(r1, position)
        if tag is None:
            break
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            value, position = _varint(r1, position)
            if value is None:
                break
            if number == 1:
                announced = value
        elif kind == 2:
            length, position = _varint(r1, position)
            if length is None or position + length > len(r1):
                break
            if number == 2:
                pb.Model.FromString(r1[position : position + length])
                parsed += 1
            position += length
        else:
            break
    return announced, parsed


def _length_delimited_fields(data: bytes) -> dict[int, list[bytes]]:
    """The length-delimited fields of a message, each cut to the bytes present."""
    fields: dict[int, list[bytes]] = {}
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        if tag is None:
            break
        if tag & 7 == 0:
            _, position = _varint(data, position)
        elif tag & 7 == 2:
            length, position = _varint(data, position)
            if length is None:
                break
            fields.setdefault(tag >> 3, []).append(data[position : position + length])
            position += length
        else:
            break
    return fields


def _varint(data: bytes, position: int) -> tuple[int | None, int]:
    value = 0
    shift = 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    return None, position
