"""Messages between the server and a worker process: small pickles and file descriptors.

Pixels never travel here (they are in shared memory, :mod:`frameserve.engine.workers.transport`);
a message is a tuple of plain values — a request's knob values and frame references, a reply's
result objects — pickled, framed by an 8-byte header, over one end of a Unix socket pair. A
message may carry up to :data:`MAX_FDS` file descriptors (new shared-memory segments), passed
with ``SCM_RIGHTS`` alongside its header, so the receiver gets its own descriptors for them.

Any number of threads may :meth:`Channel.send` (one lock keeps messages whole); one thread
reads with :meth:`Channel.recv`.
"""

from __future__ import annotations

import array
import contextlib
import os
import pickle
import socket
import struct
import threading
from collections.abc import Sequence

__all__ = ["MAX_FDS", "Channel", "ChannelClosed"]

_HEADER = struct.Struct("<II")  # payload bytes, descriptors carried
#: The most file descriptors one message carries (Linux allows 253).
MAX_FDS = 64
_FD_BYTES = array.array("i").itemsize


class ChannelClosed(EOFError):
    """The other end closed its side (the process exited or was killed)."""


class Channel:
    """One end of a socket pair between the server and a worker (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: object, fds: Sequence[int] = ()) -> None:
        """Send ``message`` (picklable) with ``fds`` (at most :data:`MAX_FDS`).

        Raises:
            OSError: the other end is gone.
        """
        if len(fds) > MAX_FDS:
            raise ValueError(f"a message carries at most {MAX_FDS} descriptors, not {len(fds)}")
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        data = memoryview(_HEADER.pack(len(payload), len(fds)) + payload)
        with self._send_lock:
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sent = self.sock.sendmsg([data], ancillary)
                data = data[sent:]
            if data:
                self.sock.sendall(data)

    def recv(self) -> tuple[object, list[int]]:
        """Return the next message and the descriptors that came with it (now this process's).

        Raises:
            ChannelClosed: the other end closed.
            OSError: the socket failed.
        """
        header = bytearray(_HEADER.size)
        fds: list[int] = []
        got = 0
        while got < len(header):
            data, ancillary, flags, _ = self.sock.recvmsg(
                len(header) - got, socket.CMSG_SPACE(MAX_FDS * _FD_BYTES)
            )
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % _FD_BYTES
                    fds.extend(array.array("i", payload[:usable]))
            if not data:
                _close_all(fds)
                raise ChannelClosed("the other end closed the channel")
            if flags & socket.MSG_CTRUNC:
                _close_all(fds)
                raise OSError("a message carried more file descriptors than allowed")
            header[got : got + len(data)] = data
            got += len(data)
        length, count = _HEADER.unpack(header)
        if count != len(fds):
            _close_all(fds)
            raise OSError(f"a message announced {count} descriptors and carried {len(fds)}")
        body = bytearray(length)
        view = memoryview(body)
        got = 0
        while got < length:
            received = self.sock.recv_into(view[got:])
            if not received:
                _close_all(fds)
                raise ChannelClosed("the other end closed the channel mid-message")
            got += received
        return pickle.loads(body), fds

    def close(self) -> None:
        """Close this end (the other end's :meth:`recv` then raises :class:`ChannelClosed`)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
