"""Hostile requests to the dashboard's paths: whatever bytes come, a 4xx (never a 5xx, never a
stream), and the door serves on."""

from __future__ import annotations

import socket
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dashboard.test_events import Team, read_until, status_of

_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.sampled_from(["/ui/", "/v2/dashboard/", "/v2/dashboard/events", "/"]),
    tail=_TEXT,
    query=st.one_of(st.just(""), _TEXT.map(lambda t: "?" + quote(t, safe="=&%"))),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS"]),
)
def test_hostile_dashboard_requests_are_answered_with_a_4xx(
    team: Team, prefix: str, tail: str, query: str, method: str
) -> None:
    server, tokens = team
    if prefix == "/v2/dashboard/events" and query.startswith("?page=") and method == "GET":
        query = "?page=x" + query[6:]  # (a valid page would open a stream, which is no error)
    target = quote(prefix + tail, safe="/%") + query
    host, port = server.http_address
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {tokens['artist']}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        head = read_until(sock, b"\r\n\r\n")
    status = status_of(head)
    assert status < 500, (target, head[:300])
    if status == 200:  # only the page, the assets and the data pages answer 200
        assert prefix != "/v2/dashboard/events", target
