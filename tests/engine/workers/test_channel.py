"""Messages between the server and a worker: pickles and file descriptors over a socket pair."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from frameserve.engine.workers.channel import MAX_FDS, Channel, ChannelClosed


@pytest.fixture
def pair() -> tuple[Channel, Channel]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channels = Channel(left), Channel(right)
    yield channels
    for channel in channels:
        channel.close()


def test_a_message_arrives_whole_and_in_order(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    sender.send(("run", 1, {"knobs": {"size": 2.5}}))
    sender.send(("free", [1, 2, 3]))
    assert receiver.recv() == (("run", 1, {"knobs": {"size": 2.5}}), [])
    assert receiver.recv() == (("free", [1, 2, 3]), [])


def test_a_large_message_crosses_in_pieces(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    payload = os.urandom(8 << 20)  # far more than the socket buffer: sent while read
    thread = threading.Thread(target=sender.send, args=(("blob", payload),))
    thread.start()
    message, fds = receiver.recv()
    thread.join()
    assert message == ("blob", payload) and fds == []


def test_descriptors_travel_with_their_message_as_new_descriptors(
    pair: tuple[Channel, Channel],
) -> None:
    sender, receiver = pair
    read_end, write_end = os.pipe()
    try:
        sender.send(("map", [7]), [write_end])
        sender.send(("after",))
        message, fds = receiver.recv()
        assert message == ("map", [7]) and len(fds) == 1 and fds[0] != write_end
        os.write(fds[0], b"through the passed descriptor")
        os.close(fds[0])
        assert os.read(read_end, 100) == b"through the passed descriptor"
        assert receiver.recv() == (("after",), [])
    finally:
        os.close(read_end)
        os.close(write_end)


def test_too_many_descriptors_are_refused_before_anything_is_sent(
    pair: tuple[Channel, Channel],
) -> None:
    sender, receiver = pair
    with pytest.raises(ValueError, match=f"at most {MAX_FDS}"):
        sender.send(("map",), [0] * (MAX_FDS + 1))
    sender.send(("still fine",))
    assert receiver.recv() == (("still fine",), [])


def test_the_other_end_closing_is_channel_closed(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    sender.close()
    with pytest.raises(ChannelClosed):
        receiver.recv()
