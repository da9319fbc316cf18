"""Clients from other addresses and clients that vanish: real sockets for the door tests.

- :func:`abort` closes a socket the way a vanished process's connection ends: with a reset
  (``SO_LINGER`` 0), the one thing a server can tell apart from a half-close;
- :func:`connect_from` connects from a chosen local source address (another loopback address
  such as 127.0.0.2, or this machine's non-loopback address), so an allow-list and a
  per-address cap meet a real second client;
- :func:`second_loopback_address` and :func:`non_loopback_address` find such an address, or
  return ``None`` where the machine has none (the tests that need one are then skipped).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

__all__ = ["abort", "connect_from", "non_loopback_address", "second_loopback_address"]

#: Destinations used only to ask the kernel which local address it would send from (a UDP
#: "connect" sends nothing).
_PROBE_DESTINATIONS = ("192.0.2.1", "198.51.100.1", "10.255.255.254", "203.0.113.1")


def abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset, as a connection ends whose process died or gave up."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connect_from(source: str, address: tuple[str, int], *, timeout: float = 20.0) -> socket.socket:
    """Return a TCP connection to ``address`` whose local address is ``source``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def _can_reach_loopback_from(source: str) -> bool:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        try:
            with connect_from(source, listener.getsockname(), timeout=2.0):
                conn, _ = listener.accept()
                conn.close()
        except OSError:
            return False
    return True


def second_loopback_address() -> str | None:
    """``"127.0.0.2"`` where it is a local address that reaches 127.0.0.1 (Linux), else None."""
    return "127.0.0.2" if _can_reach_loopback_from("127.0.0.2") else None


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine outside 127.0.0.0/8 that reaches 127.0.0.1, or None."""
    for destination in _PROBE_DESTINATIONS:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((destination, 9))
            except OSError:
                continue
            source = str(probe.getsockname()[0])
        if ipaddress.ip_address(source).is_loopback or source == "0.0.0.0":
            continue
        if _can_reach_loopback_from(source):
            return source
    return None
