"""The socket helpers of the front doors, on real TCP connections over loopback.

What a waiting door may conclude from its connection (``serve/net/sockets.py``): a client that
half-closed after sending is still there; a reset is the client leaving; a clean close cannot
be told from a half-close until the server writes. And reads keep to their deadlines, the
rate included, so a trickling client is cut as soon as it falls behind.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from frameserve.serve.net.sockets import (
    ClientGone,
    ClientStalled,
    peer_gone,
    recv_exact_into,
    wait_while_connected,
)
from tests.serve.net.peers import abort
from tests.support.scheduling import wait_until

#: Upper bound on any wait: a guard against hanging, never a speed target.
HANG_GUARD = 20.0


@pytest.fixture
def tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected ``(client, server)`` pair of TCP sockets on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=HANG_GUARD)
        server, _ = listener.accept()
    server.settimeout(HANG_GUARD)
    yield client, server
    client.close()
    server.close()


def read_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while piece := sock.recv(4096):
        data += piece
    return bytes(data)


# --- what a waiting door concludes from its connection -----------------------------------------


def test_a_half_closed_client_is_still_there(tcp: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert read_until_eof(server) == b"request"  # the server has read the end-of-file
    time.sleep(0.1)
    assert not peer_gone(server)
    server.sendall(b"reply")  # and the client still reads the reply
    server.shutdown(socket.SHUT_WR)
    assert read_until_eof(client) == b"reply"


@pytest.mark.parametrize("half_closed_first", [False, True], ids=["open", "half-closed"])
def test_a_reset_is_the_client_leaving(
    tcp: tuple[socket.socket, socket.socket], half_closed_first: bool
) -> None:
    client, server = tcp
    client.sendall(b"request")
    if half_closed_first:
        client.shutdown(socket.SHUT_WR)
        assert read_until_eof(server) == b"request"
        assert not peer_gone(server)
    abort(client)
    wait_until(lambda: peer_gone(server), timeout=HANG_GUARD, what="the reset to be seen")
    assert peer_gone(server), "a reset must stay visible to the next look"


def test_peer_gone_reads_nothing(tcp: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp
    client.sendall(b"next request")
    client.shutdown(socket.SHUT_WR)
    time.sleep(0.1)
    assert not peer_gone(server)
    assert read_until_eof(server) == b"next request"


def test_a_clean_close_shows_only_when_the_server_writes(
    tcp: tuple[socket.socket, socket.socket],
) -> None:
    """The documented cost: a closed client looks half-closed until a write fails."""
    client, server = tcp
    client.sendall(b"request")
    client.close()
    assert read_until_eof(server) == b"request"
    time.sleep(0.1)
    assert not peer_gone(server)  # TCP sent the same FIN as for a half-close
    with pytest.raises(OSError):  # the first write is answered with a reset; a later one fails
        for _ in range(100):
            server.sendall(b"reply")
            time.sleep(0.01)
    assert peer_gone(server)


def test_a_socket_closed_here_is_gone(tcp: tuple[socket.socket, socket.socket]) -> None:
    _, server = tcp
    server.close()
    assert peer_gone(server)


# --- wait_while_connected ----------------------------------------------------------------------


def finish_later(future: Future[str], value: str, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, future.set_result, args=(value,))
    timer.start()
    return timer


def test_waiting_for_a_half_closed_client_returns_the_result(
    tcp: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert read_until_eof(server) == b"request"
    future: Future[str] = Future()
    timer = finish_later(future, "result", 0.5)  # ten polls of the connection, at least
    try:
        assert wait_while_connected(server, future) == "result"
    finally:
        timer.cancel()


def test_waiting_for_a_client_that_resets_cancels_the_work(
    tcp: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp
    future: Future[str] = Future()
    threading.Timer(0.2, abort, args=(client,)).start()
    with pytest.raises(ClientGone):
        wait_while_connected(server, future)
    assert future.cancelled()


# --- reads with deadlines ----------------------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, *, every: float, stop: threading.Event) -> None:
    """Send ``data`` one byte at a time, every ``every`` seconds, until told to stop."""
    for index in range(len(data)):
        if stop.wait(every):
            return
        try:
            sock.sendall(data[index : index + 1])
        except OSError:
            return


def test_a_trickling_sender_is_cut_once_it_falls_behind_the_rate(
    tcp: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp
    stop = threading.Event()
    sender = threading.Thread(
        target=trickle, args=(client, bytes(1000)), kwargs={"every": 0.05, "stop": stop}
    )
    sender.start()
    started = time.monotonic()
    buffer = bytearray(1000)
    try:
        # idle and deadline alone would let it trickle for a minute: only the rate cuts it
        with pytest.raises(ClientStalled, match="slower than 1000 bytes/s"):
            recv_exact_into(
                server,
                memoryview(buffer),
                idle_timeout=60.0,
                deadline=started + 60.0,
                min_rate=1000.0,
                rate_from=started + 0.3,
            )
        assert time.monotonic() - started < 30.0
    finally:
        stop.set()
        sender.join(HANG_GUARD)


def test_a_sender_that_keeps_up_the_rate_is_read_whole(
    tcp: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp
    data = bytes(range(256)) * 64
    started = time.monotonic()

    def send_in_pieces() -> None:
        for start in range(0, len(data), 4096):
            client.sendall(data[start : start + 4096])
            time.sleep(0.01)

    sender = threading.Thread(target=send_in_pieces)
    sender.start()
    buffer = bytearray(len(data))
    recv_exact_into(
        server,
        memoryview(buffer),
        idle_timeout=HANG_GUARD,
        deadline=started + HANG_GUARD,
        min_rate=1000.0,
        rate_from=started + 1.0,
    )
    sender.join(HANG_GUARD)
    assert bytes(buffer) == data


def test_the_deadline_cuts_a_sender_that_never_goes_silent(
    tcp: tuple[socket.socket, socket.socket],
) -> None:
    client, server = tcp
    stop = threading.Event()
    sender = threading.Thread(
        target=trickle, args=(client, bytes(1000)), kwargs={"every": 0.05, "stop": stop}
    )
    sender.start()
    started = time.monotonic()
    try:
        with pytest.raises(ClientStalled, match="not complete in time"):
            recv_exact_into(
                server, memoryview(bytearray(1000)), idle_timeout=60.0, deadline=started + 0.5
            )
    finally:
        stop.set()
        sender.join(HANG_GUARD)
