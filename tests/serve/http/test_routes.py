"""The HTTP door is built with its routes: it asks them in order, and only them.

A door started here on loopback serves two routes written in this module before the
inference API: the first route that matches a path answers it and sets its body limit, a path
no route matches is a 404, and a route that fails unexpectedly is a 500 while the door serves on.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from frameserve.serve.http.api import InferenceApi
from frameserve.serve.http.routes import Route, json_response
from frameserve.serve.http.server import HttpServer
from frameserve.serve.http.wire import HttpRequest, HttpResponse
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import DoorSettings
from tests.support.http_client import HANG_GUARD


class Echo(Route):
    """``/echo/...``: answers the path and body length; bodies of at most 10 bytes."""

    def matches(self, path: str) -> bool:
        return path == "/echo" or path.startswith("/echo/")

    def body_limit(self, method: str, path: str) -> int:
        return 10

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        if request.path == "/echo/fail":
            raise RuntimeError("failing on purpose")
        return json_response(200, {"route": "echo", "length": int(request.body.size)})


class Shadow(Route):
    """Matches every path, but comes after ``Echo`` and the inference API."""

    def matches(self, path: str) -> bool:
        return True

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        return json_response(200, {"route": "shadow"})


def start_door(server: FrameServer, routes: list[Route]) -> HttpServer:
    """Start an HTTP door on a free loopback port over ``server``'s engine, with ``routes``."""
    settings = DoorSettings(
        host="127.0.0.1",
        port=0,
        max_connections=8,
        read_timeout=2.0,
        request_timeout=10.0,
        max_frame_bytes=1024,
    )
    door = HttpServer(settings, engine=server.engine, routes=routes)
    door.start()
    return door


@pytest.fixture(scope="module")
def door(server: FrameServer) -> Iterator[HttpServer]:
    """A door with ``Echo``, the inference API and ``Shadow``, in that order."""
    built = start_door(
        server, [Echo(), InferenceApi(server.engine, max_frame_bytes=1024), Shadow()]
    )
    yield built
    built.close()


@pytest.fixture(scope="module")
def bare_door(server: FrameServer) -> Iterator[HttpServer]:
    """A door with only the ``Echo`` route."""
    built = start_door(server, [Echo()])
    yield built
    built.close()


def ask(door: HttpServer, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """Send one request on a new connection; return its status and JSON answer."""
    host, port = door.address
    conn = http.client.HTTPConnection(host, port, timeout=HANG_GUARD)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_first_matching_route_answers(door) -> None:
    assert ask(door, "POST", "/echo/x", b"12345") == (200, {"route": "echo", "length": 5})
    assert ask(door, "GET", "/v2/health/live") == (200, {"live": True})
    assert ask(door, "GET", "/anything/else") == (200, {"route": "shadow"})


def test_the_matching_route_sets_the_body_limit(door) -> None:
    status, answer = ask(door, "POST", "/echo", b"x" * 11)
    assert status == 413 and "limit of 10 bytes" in answer["error"]
    assert ask(door, "POST", "/echo", b"x" * 10)[0] == 200


def test_a_path_no_route_matches_is_404(bare_door) -> None:
    status, answer = ask(bare_door, "GET", "/v2/health/live")
    assert status == 404 and "no such path '/v2/health/live'" in answer["error"]


def test_a_route_that_fails_is_500_and_the_door_serves_on(door) -> None:
    status, answer = ask(door, "GET", "/echo/fail")
    assert status == 500 and "RuntimeError: failing on purpose" in answer["error"]
    assert ask(door, "GET", "/echo/after")[0] == 200
