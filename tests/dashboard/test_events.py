"""The dashboard's HTTP side: its open page and assets, its token-guarded data, and the event
stream's bounds (auth, a cap on open streams, malformed requests, shutdown)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from frameserve.serve.dashboard import events
from frameserve.serve.server import FrameServer
from tests.support.servers import start_server

Team = tuple[FrameServer, dict[str, str]]


def get(
    server: FrameServer, path: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path``; status, headers and body (errors too)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(server.http_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def open_stream(
    server: FrameServer, query: str, token: str | None, method: str = "GET"
) -> socket.socket:
    """Send an event stream request on a raw socket; return the socket."""
    host, port = server.http_address
    sock = socket.create_connection((host, port), timeout=5)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"{method} /v2/dashboard/events{query} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    return sock


def read_until(
    sock: socket.socket, marker: bytes, seconds: float = 5.0, data: bytes = b""
) -> bytes:
    """Read until ``marker`` has arrived (or the peer closed, or time is up); return ``data``
    followed by what was read (``data``: bytes read before; if they hold ``marker``, nothing more
    is read)."""
    until = time.monotonic() + seconds
    while marker not in data and time.monotonic() < until:
        sock.settimeout(max(0.05, until - time.monotonic()))
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            break
        if not piece:
            break
        data += piece
    return data


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def test_the_page_and_its_assets_are_open_and_carry_a_content_security_policy(team: Team) -> None:
    server, _ = team
    status, headers, body = get(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/ui/app.js" in body and b"https://" not in body  # nothing from elsewhere
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = get(server, "/ui/vendor/uplot.min.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"uPlot" in body
    for missing in ("/ui/nope.js", "/ui/../route.py", "/ui/%2e%2e/route.py", "/ui/"):
        assert get(server, missing)[0] == 404, missing


def test_the_data_needs_a_token_and_says_who_it_names(team: Team) -> None:
    server, tokens = team
    for path in ("/v2/dashboard/overview", "/v2/dashboard/models", "/v2/dashboard/training"):
        assert get(server, path)[0] == 401, path
    status, _, body = get(server, "/v2/dashboard/whoami")  # open: it says a token is wanted
    assert status == 200 and json.loads(body) == {"user": None, "role": None, "auth": True}
    status, _, body = get(server, "/v2/dashboard/whoami", tokens["artist"])
    assert status == 200
    assert json.loads(body) == {"user": "maya", "role": "artist", "auth": True}
    assert json.loads(get(server, "/v2/dashboard/whoami", "fs_not_a_token")[2])["user"] is None


def test_overview_holds_the_queue_the_workers_and_the_recent_requests(team: Team) -> None:
    server, tokens = team
    frame = np.zeros((8, 8, 3), np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [8, 8, 3],
                    "parameters": {"binary_data_size": len(frame)},
                }
            ]
        }
    ).encode()
    request = urllib.request.Request(
        server.http_url + "/v2/models/identity/infer",
        data=header + frame,
        headers={
            "Authorization": f"Bearer {tokens['td']}",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    # the door records a request just after writing its answer: wait for it, never long
    deadline = time.monotonic() + 10
    while True:
        _, _, body = get(server, "/v2/dashboard/overview", tokens["td"])
        data = json.loads(body)
        if data["recent"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert data["health"]["ready"] is True
    assert set(data["queue"]) == {"interactive", "batch"}
    assert any(w["model"] == "identity" for w in data["workers"])
    newest = data["recent"][0]
    assert (newest["model"], newest["user"], newest["outcome"]) == ("identity", "tina", "ok")
    assert data["minutes"][-1]["count"] >= 1 and data["minutes"][-1]["p50_ms"] > 0
    # an artist sees that someone asked, not who
    _, _, body = get(server, "/v2/dashboard/overview", tokens["artist"])
    assert json.loads(body)["recent"][0]["user"] == "someone"


def test_a_stream_needs_a_token_and_sends_events(team: Team) -> None:
    server, tokens = team
    sock = open_stream(server, "?page=overview", None)
    assert status_of(read_until(sock, b"\r\n\r\n")) == 401
    sock.close()
    sock = open_stream(server, "?page=models", tokens["artist"])
    data = read_until(sock, b"event: models", 5)
    head, _, event = data.partition(b"event: models")
    event = read_until(sock, b"\n\n", 5, event)  # the rest of the event, if it is not all here
    sock.close()
    assert status_of(head) == 200 and b"text/event-stream" in head
    body = event.split(b"\ndata: ", 1)[1].split(b"\n\n", 1)[0]
    assert any(m["name"] == "blur" for m in json.loads(body)["models"])


@pytest.mark.parametrize(
    ("query", "method", "expected"),
    [
        ("", "GET", 400),
        ("?page=bogus", "GET", 400),
        ("?page=overview&page=models", "GET", 400),
        ("?page=overview&extra=1", "GET", 400),
        ("?page", "GET", 400),
        ("?%ff%fe=%00", "GET", 400),
        ("?page=overview", "POST", 405),
        ("?page=overview", "HEAD", 405),
    ],
)
def test_a_malformed_stream_request_is_a_4xx(
    team: Team, query: str, method: str, expected: int
) -> None:
    server, tokens = team
    sock = open_stream(server, query, tokens["artist"], method)
    head = read_until(sock, b"\r\n\r\n")
    sock.close()
    assert status_of(head) == expected


def test_open_streams_are_capped_and_a_closed_one_frees_its_place(team: Team) -> None:
    server, tokens = team
    streams = server.dashboard.streams
    saved, streams.limit = streams.limit, 2
    try:
        first = open_stream(server, "?page=overview", tokens["artist"])
        second = open_stream(server, "?page=overview", tokens["artist"])
        for sock in (first, second):
            assert b"event: overview" in read_until(sock, b"event: overview")
        third = open_stream(server, "?page=overview", tokens["artist"])
        head = read_until(third, b"\r\n\r\n")
        assert status_of(
            head
        ) == 503 and b"2 dashboard event streams are open" in head + read_until(third, b"}")
        third.close()
        first.close()
        until = time.monotonic() + 5
        while streams.open > 1 and time.monotonic() < until:
            time.sleep(0.05)
        assert streams.open == 1
        fourth = open_stream(server, "?page=overview", tokens["artist"])
        assert b"event: overview" in read_until(fourth, b"event: overview")
        fourth.close()
        second.close()
    finally:
        streams.limit = saved


def test_a_quiet_stream_sends_heartbeats(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    server, tokens = team
    monkeypatch.setattr(events, "HEARTBEAT_SECONDS", 0.3)
    sock = open_stream(server, "?page=models", tokens["artist"])
    data = read_until(sock, b": heartbeat", 5)
    sock.close()
    assert b": heartbeat\n\n" in data


def test_streams_end_when_the_server_shuts_down(tmp_path) -> None:
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None)
    try:
        sock = open_stream(server, "?page=overview", None)
        assert b"event: overview" in read_until(sock, b"event: overview")
    finally:
        server.close()
    started = time.monotonic()
    rest = read_until(sock, b"never", 3)  # returns at the end of the stream: the server closed it
    assert time.monotonic() - started < 2.5, rest[-200:]
    sock.close()
    assert server.dashboard.streams.open == 0


def test_a_page_whose_data_fails_ends_its_stream_and_the_door_serves_on(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, tokens = team

    def broken(page: str, request: object) -> object:
        return {"loss": float("nan")}  # not JSON: the stream cannot send it

    monkeypatch.setattr(server.dashboard, "_read", broken)
    sock = open_stream(server, "?page=overview", tokens["artist"])
    started = time.monotonic()
    data = read_until(sock, b"never", 3)  # until the server closes it
    sock.close()
    assert status_of(data) == 200 and b"event:" not in data
    assert time.monotonic() - started < 2.5
    monkeypatch.undo()
    assert get(server, "/v2/dashboard/whoami", tokens["artist"])[0] == 200
    assert server.dashboard.streams.open == 0
