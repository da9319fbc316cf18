"""A TCP listener that serves each connection on its own thread, up to a limit.

Both front doors use it: a slow or silent client only ever holds its own thread. Past
``max_connections`` a connection is handed to the door's ``refuse`` callback, which answers
with the protocol's "busy" error and closes.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

__all__ = ["ConnectionListener", "FrontDoor"]

log = logging.getLogger(__name__)

Handler = Callable[[socket.socket, str], None]


class ConnectionListener:
    """Accepts connections on ``host:port`` and runs ``serve(conn, client)`` for each."""

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        serve: Handler,
        refuse: Handler,
        max_connections: int,
    ) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._serve = serve
        self._refuse = refuse
        self._slots = threading.BoundedSemaphore(max_connections)
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

    def start(self) -> None:
        """Bind, listen and accept on a background thread."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._host, self._port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept")
        self._thread.daemon = True
        self._thread.start()
        log.info("%s listening on %s:%d", self.name, *self.address)

    def close(self) -> None:
        """Stop accepting; connections in progress finish on their own."""
        self._closing.set()
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
            client = f"{peer[0]}:{peer[1]}"
            admitted = self._slots.acquire(blocking=False)
            target: Handler = self._serve_and_release if admitted else self._refuse
            worker = threading.Thread(target=target, args=(conn, client), name=client, daemon=True)
            worker.start()

    def _serve_and_release(self, conn: socket.socket, client: str) -> None:
        try:
            self._serve(conn, client)
        finally:
            self._slots.release()


class FrontDoor:
    """A protocol server: a listener whose connections the subclass serves.

    Subclasses write ``_serve_connection(conn, client)`` and ``_refuse(conn, client)`` (the
    protocol's "busy" answer); starting, stopping and the address are the same for every door.
    """

    def __init__(self, *, name: str, host: str, port: int, max_connections: int) -> None:
        self._listener = ConnectionListener(
            name=name,
            host=host,
            port=port,
            serve=self._serve_connection,
            refuse=self._refuse,
            max_connections=max_connections,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually listened on (useful with port 0)."""
        return self._listener.address

    def start(self) -> None:
        """Bind, listen and accept connections on a background thread."""
        self._listener.start()

    def close(self) -> None:
        """Stop accepting connections; connections in progress finish on their own."""
        self._listener.close()

    def _serve_connection(self, conn: socket.socket, client: str) -> None:
        raise NotImplementedError

    def _refuse(self, conn: socket.socket, client: str) -> None:
        raise NotImplementedError
