"""HTTPS for the HTTP door: the server's TLS context and each connection's handshake.

::

    context = server_context(Path("server.pem"), Path("server.key"))   # TLS 1.2 or newer
    sock = handshake(conn, context, deadline=time.monotonic() + 5.0)

With ``--tls-cert`` and ``--tls-key`` the door speaks HTTPS only. The handshake runs on the
connection's own thread (never the accept thread) and must finish by the deadline the request
head has too, however the client spreads its bytes. A client that speaks plain HTTP to the
port is told so in plain HTTP (:class:`PlainHttpError`) and the connection is closed.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from pathlib import Path

from frameserve.errors import ConfigError, ProtocolError
from frameserve.serve.net.sockets import ClientGone, ClientStalled

__all__ = ["PlainHttpError", "handshake", "server_context"]

#: The first byte of every TLS connection: a handshake record.
_HANDSHAKE_RECORD = 0x16


class PlainHttpError(ProtocolError):
    """The client spoke something other than TLS (plain HTTP, most likely) to the HTTPS port."""


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Return the server side TLS context for the PEM ``cert`` (chain) and ``key``.

    TLS 1.2 is the oldest version offered; ciphers are Python's defaults.

    Raises:
        ConfigError: a file that cannot be read, is not PEM, or a key that does not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ConfigError(
            f"--tls-cert {str(cert)!r} with --tls-key {str(key)!r} cannot be used ({reason}): "
            "give a PEM certificate (chain) and the PEM private key that matches it"
        ) from None
    return context


def handshake(conn: socket.socket, context: ssl.SSLContext, *, deadline: float) -> ssl.SSLSocket:
    """Run the server side TLS handshake on ``conn``; return the TLS socket (which owns it).

    ``deadline`` (a ``time.monotonic()`` value) bounds the whole handshake.

    Raises:
        PlainHttpError: the client's first byte does not start a TLS handshake (``conn`` is
            untouched and still usable, for a plain answer).
        ClientStalled: the handshake did not finish by ``deadline``.
        ClientGone: the client closed before sending anything.
        ssl.SSLError, OSError: the handshake failed.
    """
    first = _peek(conn, deadline)
    if first != _HANDSHAKE_RECORD:
        raise PlainHttpError(f"first byte {first:#04x} does not start a TLS handshake")
    sock = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                _wait(sock, deadline, write=False)
            except ssl.SSLWantWriteError:
                _wait(sock, deadline, write=True)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(True)
    return sock


def _peek(conn: socket.socket, deadline: float) -> int:
    """The client's first byte, left unread."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ClientStalled("TLS handshake not started in time")
    conn.settimeout(remaining)
    try:
        data = conn.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        raise ClientStalled("TLS handshake not started in time") from None
    if not data:
        raise ClientGone(0, -1)
    return data[0]


def _wait(sock: ssl.SSLSocket, deadline: float, *, write: bool) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ClientStalled("TLS handshake not complete in time")
    poller = select.poll()  # not select(): descriptors may be numbered past 1024
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    if not poller.poll(remaining * 1000):
        raise ClientStalled("TLS handshake not complete in time")
