"""A TCP listener that serves each connection on its own thread, within limits.

Both front doors use it: a slow or silent client only ever holds its own thread. At accept:

1. an address outside ``allow`` (when the door has an allow-list) is reset at once, without a
   reply, and logged at most once a minute per address;
2. past ``max_connections_per_address`` open connections from the same address, or past
   ``max_connections`` in all, the connection is handed to the door's ``refuse`` callback
   with the reason, which answers with the protocol's "busy" error and closes. So one host
   cannot take every connection: the others still get in.

::

    listener = ConnectionListener(name="MLClient protocol", host="127.0.0.1", port=0,
                                  serve=serve, refuse=refuse, max_connections=256,
                                  max_connections_per_address=32,
                                  allow=[ipaddress.ip_network("127.0.0.0/8")])
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

from frameserve.errors import ConfigError
from frameserve.serve.door_settings import Network

__all__ = ["ConnectionListener", "FrontDoor", "address_allowed"]

log = logging.getLogger(__name__)

#: ``serve(conn, client)``: serve one connection ("host:port" names the client).
Handler = Callable[[socket.socket, str], None]
#: ``refuse(conn, client, reason)``: answer "busy, because ``reason``" and close.
Refuser = Callable[[socket.socket, str, str], None]

#: Seconds between two log lines about the same refused address.
REFUSAL_LOG_INTERVAL = 60.0
#: Refusals answered at once; past this, a refused connection is closed without an answer
#: (a flood of connections never turns into a flood of threads).
_MAX_REFUSING = 32
#: Addresses remembered for throttling refusal log lines.
_MAX_REMEMBERED = 4096


def address_allowed(address: str, networks: Sequence[Network]) -> bool:
    """Whether a client at ``address`` (as ``accept`` reports it) is inside ``networks``.

    An IPv4 client of an IPv6 socket (``::ffff:10.1.2.3``) is judged by its IPv4 address;
    an IPv6 scope (``fe80::1%eth0``) is ignored. Text that is not an address is not allowed.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)


class _AddressCounts:
    """Open connections per client address (thread-safe)."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, address: str) -> bool:
        """Count one more connection from ``address``; ``False`` (not counted) at the limit."""
        with self._lock:
            count = self._counts.get(address, 0)
            if self._limit is not None and count >= self._limit:
                return False
            self._counts[address] = count + 1
            return True

    def give_back(self, address: str) -> None:
        """Count one connection from ``address`` less."""
        with self._lock:
            count = self._counts.pop(address, 0) - 1
            if count > 0:
                self._counts[address] = count

    def total(self) -> int:
        """Connections counted, from every address."""
        with self._lock:
            return sum(self._counts.values())


class _RefusalLog:
    """Says whether a refusal of an address should be logged: once per interval at most."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}

    def due(self, address: str, now: float) -> bool:
        last = self._last.get(address)
        if last is not None and now - last < self._interval:
            return False
        if len(self._last) >= _MAX_REMEMBERED:
            self._last = {a: t for a, t in self._last.items() if now - t < self._interval}
            if len(self._last) >= _MAX_REMEMBERED:  # a flood from many addresses: start over
                self._last.clear()
        self._last[address] = now
        return True


class ConnectionListener:
    """Accepts connections on ``host:port`` and runs ``serve(conn, client)`` for each.

    Args:
        name: the door's name, for log lines and thread names.
        host, port: where to listen (port 0 picks a free one).
        serve: serves one admitted connection (on its own thread); the listener closes
            nothing it hands over.
        refuse: answers a connection over a limit with the door's "busy" error and closes it.
        max_connections: connections served at once.
        max_connections_per_address: connections one client address may hold at once;
            ``None``: no limit but ``max_connections``.
        allow: the networks whose clients are served; others are reset at accept without a
            reply. ``None``: every address.
    """

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        serve: Handler,
        refuse: Refuser,
        max_connections: int,
        max_connections_per_address: int | None = None,
        allow: Sequence[Network] | None = None,
    ) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._serve = serve
        self._refuse = refuse
        self._max_connections = max_connections
        self._max_per_address = max_connections_per_address
        self._allow = tuple(allow) if allow is not None else None
        self._slots = threading.BoundedSemaphore(max_connections)
        self._per_address = _AddressCounts(max_connections_per_address)
        self._refusing = threading.BoundedSemaphore(_MAX_REFUSING)
        self._refusal_log = _RefusalLog()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually listened on (useful with port 0)."""
        if self._listener is None:
            raise RuntimeError(f"the {self.name} listener is not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing.is_set()

    @property
    def open_connections(self) -> int:
        """Connections being served right now (refused ones not counted)."""
        return self._per_address.total()

    def start(self) -> None:
        """Bind, listen and accept on a background thread.

        Raises:
            ConfigError: the address cannot be listened on (in use, not this machine's, a
                port below 1024 without the right); the message names the door and port.
        """
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._host, self._port))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port} for the {self.name}: "
                f"{exc.strerror or exc}"
            ) from exc
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept")
        self._thread.daemon = True
        self._thread.start()
        log.info("%s listening on %s:%d", self.name, *self.address)

    def close(self) -> None:
        """Stop accepting; connections in progress finish on their own."""
        self._closing.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept at once (Linux), not in 0.2 s
                self._listener.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                log.exception("%s: accepting a connection failed", self.name)
                continue
            try:
                self._admit(conn, str(peer[0]), f"{peer[0]}:{peer[1]}")
            except Exception:  # the accept loop outlives any one connection
                log.exception("%s: admitting %s:%s failed", self.name, peer[0], peer[1])
                _reset(conn)

    def _admit(self, conn: socket.socket, address: str, client: str) -> None:
        """Serve, refuse or turn away one accepted connection."""
        if self._allow is not None and not address_allowed(address, self._allow):
            _reset(conn)
            if self._refusal_log.due(address, time.monotonic()):
                log.warning(
                    "%s: refused %s: the address is not among the networks this door serves "
                    "(%s); further refusals of it are not logged for %g s",
                    self.name,
                    client,
                    ", ".join(str(network) for network in self._allow) or "none",
                    REFUSAL_LOG_INTERVAL,
                )
            return
        if not self._per_address.take(address):
            reason = (
                f"{address} holds {self._max_per_address} connections already, the most one "
                "address may hold"
            )
            self._start_refusal(conn, client, reason)
            return
        if not self._slots.acquire(blocking=False):
            self._per_address.give_back(address)
            reason = f"{self._max_connections} connections are open already"
            self._start_refusal(conn, client, reason)
            return
        worker = threading.Thread(
            target=self._serve_and_release, args=(conn, client, address), name=client, daemon=True
        )
        try:
            worker.start()
        except BaseException:
            self._release(address)
            raise

    def _start_refusal(self, conn: socket.socket, client: str, reason: str) -> None:
        if not self._refusing.acquire(blocking=False):
            _reset(conn)  # refusals are flooding in: no thread for this one
            return
        worker = threading.Thread(
            target=self._refuse_and_release, args=(conn, client, reason), name=client, daemon=True
        )
        try:
            worker.start()
        except BaseException:
            self._refusing.release()
            raise

    def _refuse_and_release(self, conn: socket.socket, client: str, reason: str) -> None:
        try:
            self._refuse(conn, client, reason)
        finally:
            self._refusing.release()

    def _serve_and_release(self, conn: socket.socket, client: str, address: str) -> None:
        try:
            self._serve(conn, client)
        finally:
            self._release(address)

    def _release(self, address: str) -> None:
        self._per_address.give_back(address)
        self._slots.release()


def _reset(conn: socket.socket) -> None:
    """Close ``conn`` at once with a reset: no reply, and no TIME_WAIT left behind here."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class FrontDoor:
    """A protocol server: a listener whose connections the subclass serves.

    Subclasses write ``_serve_connection(conn, client)`` and ``_refuse(conn, client, reason)``
    (the protocol's "busy" answer, naming ``reason``); starting, stopping, the address and the
    connection limits are the same for every door.
    """

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        max_connections: int,
        max_connections_per_address: int | None = None,
        allow: Sequence[Network] | None = None,
    ) -> None:
        self._listener = ConnectionListener(
            name=name,
            host=host,
            port=port,
            serve=self._serve_connection,
            refuse=self._refuse,
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            allow=allow,
        )

    @property
    def name(self) -> str:
        """What log lines and errors call this door ("MLClient protocol", "HTTP API")."""
        return self._listener.name

    @property
    def closing(self) -> bool:
        """Whether the door is closing: connections kept alive end after their answer."""
        return self._listener.closing

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually listened on (useful with port 0)."""
        return self._listener.address

    @property
    def open_connections(self) -> int:
        """Connections being served right now."""
        return self._listener.open_connections

    def start(self) -> None:
        """Bind, listen and accept connections on a background thread."""
        self._listener.start()

    def close(self) -> None:
        """Stop accepting connections; connections in progress finish on their own."""
        self._listener.close()

    def _serve_connection(self, conn: socket.socket, client: str) -> None:
        raise NotImplementedError

    def _refuse(self, conn: socket.socket, client: str, reason: str) -> None:
        raise NotImplementedError
