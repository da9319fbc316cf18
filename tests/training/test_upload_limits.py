"""Uploads stream to disk and are checked before they are kept: attacks on a real server.

A body is written to disk as it arrives (never held whole in memory), the size cap holds while
it streams, and the stored file's header is checked against the pixel cap before a pixel is
decoded; a refused upload leaves nothing behind.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.serve.server import FrameServer
from tests.support.servers import start_server
from tests.training.helpers import ANSWER_GUARD, PeakMemory, files_under, png_of_zeros

UPLOAD = "/v2/training/uploads"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FrameServer]:
    running = start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, max_frame_pixels=4096 * 4096
    )
    yield running
    running.close()


def post_file(server: FrameServer, path: str, source: Path) -> tuple[int, dict[str, object]]:
    """POST the file's bytes, read from disk as they are sent (Content-Length)."""
    host, port = server.http_address
    connection = http.client.HTTPConnection(host, port, timeout=ANSWER_GUARD)
    try:
        with source.open("rb") as body:
            connection.request(
                "POST", path, body=body, headers={"Content-Length": str(source.stat().st_size)}
            )
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def read_reply(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """Read one Content-Length response from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed without answering"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(lines[0].split()[1]), json.loads(body[:length])


def staged_bytes(server: FrameServer) -> int:
    """Bytes of the uploads being received (in hidden staging folders)."""
    folder = server.jobs.uploads.folder
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.glob(".*/*") if p.is_file())


def test_an_upload_above_the_pixel_cap_is_refused_from_its_header(
    server: FrameServer, tmp_path: Path
) -> None:
    big = png_of_zeros(tmp_path / "big.png", 8000, 8000)  # 187 KB; 768 MB decoded
    assert big.stat().st_size < 200_000
    with PeakMemory() as peak:
        status, answer = post_file(server, f"{UPLOAD}?filename=big.png", big)
    assert status == 413 and "8000x8000" in str(answer["error"]), answer
    assert peak.growth < 100 << 20, peak.growth  # decoding it would take 768 MB
    assert files_under(server.jobs.uploads.folder) == []
    huge = png_of_zeros(tmp_path / "huge.png", 40000, 40000, rows=4, padding=5 << 20)
    with PeakMemory() as peak:
        status, answer = post_file(server, f"{UPLOAD}?filename=huge.png", huge)
    assert status == 413 and "40000x40000" in str(answer["error"]), answer
    assert peak.growth < 100 << 20, peak.growth  # 19 GB as float32
    assert files_under(server.jobs.uploads.folder) == []


def test_an_upload_is_written_to_disk_as_it_arrives(server: FrameServer, tmp_path: Path) -> None:
    # A valid 64x64 PNG made 40 MB by a chunk readers skip: the body is large, the image small.
    source = png_of_zeros(tmp_path / "padded.png", 64, 64, padding=40 << 20)
    data = source.read_bytes()
    half = len(data) // 2
    with socket.create_connection(server.http_address, timeout=ANSWER_GUARD) as sock:
        sock.sendall(
            f"POST {UPLOAD}?filename=padded.png HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        sock.sendall(data[:half])
        deadline = time.monotonic() + ANSWER_GUARD
        while staged_bytes(server) < half // 2:  # on disk before the body is complete
            assert time.monotonic() < deadline, "the first half never reached the disk"
            time.sleep(0.01)
        sock.sendall(data[half:])
        status, answer = read_reply(sock)
    assert status == 201, answer
    stored = server.jobs.uploads.get(str(answer["id"]))
    assert stored.path.read_bytes() == data and (stored.width, stored.height) == (64, 64)
    assert files_under(server.jobs.uploads.folder) == sorted(
        [stored.id, f"{stored.id}/padded.png", f"{stored.id}/upload.json"]
    )


def test_a_large_upload_is_not_held_in_memory(server: FrameServer, tmp_path: Path) -> None:
    source = png_of_zeros(tmp_path / "padded.png", 64, 64, padding=96 << 20)
    with PeakMemory() as peak:
        status, answer = post_file(server, f"{UPLOAD}?filename=padded.png", source)
    assert status == 201, answer
    assert peak.growth < 48 << 20, peak.growth  # half the body: it was never held whole


def test_a_chunked_upload_streams_and_the_cap_holds_while_it_does(tmp_path: Path) -> None:
    server = start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, max_frame_bytes=1 << 10
    )
    try:
        limit = server.jobs.uploads.max_file_bytes
        source = png_of_zeros(tmp_path / "padded.png", 64, 64, padding=limit + (1 << 20))
        data = source.read_bytes()
        with socket.create_connection(server.http_address, timeout=ANSWER_GUARD) as sock:
            sock.sendall(
                f"POST {UPLOAD}?filename=padded.png HTTP/1.1\r\nHost: x\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            step = 64 << 10
            try:
                for start in range(0, len(data), step):
                    piece = data[start : start + step]
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server answered and closed before the end: that is the point
            status, answer = read_reply(sock)
        assert status == 413 and str(limit) in str(answer["error"]), answer
        assert files_under(server.jobs.uploads.folder) == []  # nothing half-written stays
        small = png_of_zeros(tmp_path / "small.png", 16, 16)
        with socket.create_connection(server.http_address, timeout=ANSWER_GUARD) as sock:
            sock.sendall(
                f"POST {UPLOAD}?filename=small.png HTTP/1.1\r\nHost: x\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            payload = small.read_bytes()
            for start in range(0, len(payload), 7):
                piece = payload[start : start + 7]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            status, answer = read_reply(sock)
        assert status == 201, answer
        assert server.jobs.uploads.get(str(answer["id"])).path.read_bytes() == payload
    finally:
        server.close()
