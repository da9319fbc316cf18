"""The listener both doors share: who gets in, and how many connections one address may hold.

A real :class:`ConnectionListener` on loopback, with a ``serve`` that holds each connection
until its client closes and a ``refuse`` that answers the reason: an address outside the
allow-list is reset at accept without a reply (and logged once a minute at most); one address
past its cap is refused while another address still gets in; a flood of refusals never turns
into a flood of threads.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from frameserve.serve.net import listener as listener_module
from frameserve.serve.net.listener import ConnectionListener, address_allowed
from frameserve.serve.settings import LOOPBACK_NETWORKS
from tests.serve.net.peers import connect_from, second_loopback_address
from tests.support.scheduling import wait_until

HANG_GUARD = 20.0


class Door:
    """A listener whose connections answer ``served`` and wait until the client closes."""

    def __init__(self, **limits: object) -> None:
        self.served: list[str] = []
        self.refused: list[str] = []
        self.refusing = threading.Event()  # cleared: refusals wait (to pile them up)
        self.refusing.set()
        self.listener = ConnectionListener(
            name="test door",
            host="127.0.0.1",
            port=0,
            serve=self._serve,
            refuse=self._refuse,
            **limits,  # type: ignore[arg-type]
        )

    def _serve(self, conn: socket.socket, client: str) -> None:
        self.served.append(client)
        with conn:
            conn.settimeout(HANG_GUARD)
            conn.sendall(b"served\n")
            try:
                while conn.recv(1024):
                    pass
            except OSError:
                pass

    def _refuse(self, conn: socket.socket, client: str, reason: str) -> None:
        self.refusing.wait(HANG_GUARD)
        self.refused.append(reason)
        with conn:
            conn.sendall(f"busy: {reason}\n".encode())

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        return connect_from(source, self.listener.address, timeout=HANG_GUARD)


@pytest.fixture
def door_factory() -> Iterator[type[Door]]:
    doors: list[Door] = []

    class Started(Door):
        def __init__(self, **limits: object) -> None:
            super().__init__(**limits)
            self.listener.start()
            doors.append(self)

    yield Started
    for door in doors:
        door.listener.close()


def first_line(sock: socket.socket) -> str:
    data = bytearray()
    while not data.endswith(b"\n"):
        piece = sock.recv(1024)
        if not piece:
            break
        data += piece
    return data.decode()


def reset_or_closed_without_a_reply(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


# --- the decision -----------------------------------------------------------------------------

TEN = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    ("address", "networks", "allowed"),
    [
        ("127.0.0.1", LOOPBACK_NETWORKS, True),
        ("127.8.9.10", LOOPBACK_NETWORKS, True),
        ("::1", LOOPBACK_NETWORKS, True),
        ("::ffff:127.0.0.1", LOOPBACK_NETWORKS, True),  # IPv4 client of a dual-stack socket
        ("192.0.2.2", LOOPBACK_NETWORKS, False),
        ("10.1.2.3", LOOPBACK_NETWORKS, False),
        ("fd00::2", LOOPBACK_NETWORKS, False),
        ("::ffff:10.1.2.3", LOOPBACK_NETWORKS, False),
        ("10.1.2.3", TEN, True),
        ("::ffff:10.1.2.3", TEN, True),
        ("11.1.2.3", TEN, False),
        ("fd00::2", TEN, True),
        ("fe80::1%eth0", TEN, False),
        ("127.0.0.1", TEN, False),
        ("not an address", LOOPBACK_NETWORKS, False),
        ("", LOOPBACK_NETWORKS, False),
        ("10.1.2.3", (), False),
    ],
)
def test_address_allowed(address: str, networks: tuple, allowed: bool) -> None:  # type: ignore[type-arg]
    assert address_allowed(address, networks) is allowed


# --- allow-list at accept ---------------------------------------------------------------------


def test_an_address_outside_the_allow_list_is_reset_without_a_reply(
    door_factory: type[Door], caplog: pytest.LogCaptureFixture
) -> None:
    door = door_factory(max_connections=8, allow=[ipaddress.ip_network("10.0.0.0/8")])
    with caplog.at_level(logging.WARNING, logger=listener_module.__name__):
        for _ in range(3):
            try:
                refused = door.connect()
            except ConnectionResetError:
                continue  # reset before connect() even returned
            with refused:
                assert reset_or_closed_without_a_reply(refused)
    assert door.served == [] and door.refused == []
    assert door.listener.open_connections == 0
    lines = [r.getMessage() for r in caplog.records if r.name == listener_module.__name__]
    assert len(lines) == 1, lines  # once per address per minute
    assert "127.0.0.1" in lines[0] and "10.0.0.0/8" in lines[0]


def test_an_allowed_address_is_served(door_factory: type[Door]) -> None:
    door = door_factory(max_connections=8, allow=LOOPBACK_NETWORKS)
    with door.connect() as client:
        assert first_line(client) == "served\n"


def test_the_refusal_log_forgets_an_address_after_the_interval() -> None:
    log = listener_module._RefusalLog(interval=60.0)
    assert log.due("10.0.0.1", 0.0)
    assert not log.due("10.0.0.1", 59.0)
    assert log.due("10.0.0.2", 59.0)
    assert log.due("10.0.0.1", 60.5)


# --- connections per address --------------------------------------------------------------------


def test_one_address_past_its_cap_is_refused_while_another_gets_in(
    door_factory: type[Door],
) -> None:
    other = second_loopback_address()
    if other is None:
        pytest.skip("this machine has no second loopback address (127.0.0.2)")
    door = door_factory(max_connections=8, max_connections_per_address=2)
    held = [door.connect(), door.connect()]
    try:
        for sock in held:
            assert first_line(sock) == "served\n"
        with door.connect() as third:
            assert first_line(third) == (
                "busy: 127.0.0.1 holds 2 connections already, the most one address may hold\n"
            )
        with door.connect(other) as elsewhere:
            assert first_line(elsewhere) == "served\n"
        held.pop().close()  # a place of 127.0.0.1 is free again
        wait_until(lambda: door.listener.open_connections == 1, timeout=HANG_GUARD)
        with door.connect() as again:
            assert first_line(again) == "served\n"
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: door.listener.open_connections == 0, timeout=HANG_GUARD)


def test_the_cap_per_address_counts_only_open_connections(door_factory: type[Door]) -> None:
    door = door_factory(max_connections=8, max_connections_per_address=1)
    for _ in range(5):  # one after another: each leaves before the next comes
        with door.connect() as client:
            assert first_line(client) == "served\n"
        wait_until(lambda: door.listener.open_connections == 0, timeout=HANG_GUARD)
    assert len(door.served) == 5 and door.refused == []


def test_the_total_cap_names_itself(door_factory: type[Door]) -> None:
    door = door_factory(max_connections=1, max_connections_per_address=4)
    with door.connect() as held:
        assert first_line(held) == "served\n"
        with door.connect() as second:
            assert first_line(second) == "busy: 1 connections are open already\n"


def test_a_flood_of_refusals_is_reset_instead_of_taking_a_thread_each(
    door_factory: type[Door],
) -> None:
    door = door_factory(max_connections=1, max_connections_per_address=1)
    door.refusing.clear()  # refusals wait, as they would behind a slow client
    held = door.connect()
    assert first_line(held) == "served\n"
    threads_before = threading.active_count()
    flood: list[socket.socket | None] = []
    for _ in range(listener_module._MAX_REFUSING + 20):
        try:
            flood.append(door.connect())
        except ConnectionResetError:
            flood.append(None)  # reset before connect() even returned
    try:
        # the ones past the refusals in progress are reset at once
        reset = 0
        for sock in flood[listener_module._MAX_REFUSING :]:
            reset += sock is None or reset_or_closed_without_a_reply(sock)
        assert reset == 20
        assert threading.active_count() <= threads_before + listener_module._MAX_REFUSING
    finally:
        door.refusing.set()
        for sock in flood:
            if sock is not None:
                sock.close()
        held.close()
    wait_until(lambda: len(door.refused) == listener_module._MAX_REFUSING, timeout=HANG_GUARD)
    wait_until(lambda: door.listener.open_connections == 0, timeout=HANG_GUARD)
