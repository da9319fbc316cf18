"""Bodies a route reads as they arrive, and JSON bodies parsed safely, on a real door.

A door started here serves three routes of this module: ``/sink`` streams its body
(``Route.streams_body``) and answers its length and hash, ``/ignore`` streams but never reads,
``/json`` parses its body with :func:`json_body`. Streams hold to the same limits, framing
rules and deadlines as bodies read whole; a route that leaves its body unread gets its answer
sent and the connection closed. Hostile JSON (not UTF-8, not JSON, nested a megabyte deep,
``NaN``) is a 400 naming the problem, never a 500.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from frameserve.serve.http.bodies import MAX_JSON_DEPTH, json_body, json_depth
from frameserve.serve.http.routes import Route, json_response
from frameserve.serve.http.server import HttpServer
from frameserve.serve.http.wire import HttpRequest, HttpResponse
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import DoorSettings
from tests.support.http_client import HANG_GUARD, RawClient, Reply

SINK_LIMIT = 4 << 20


class Sink(Route):
    """``POST /sink``: reads the stream, keeping every piece, then answers length and hash."""

    def matches(self, path: str) -> bool:
        return path == "/sink"

    def body_limit(self, method: str, path: str) -> int:
        return SINK_LIMIT

    def streams_body(self, method: str, path: str) -> bool:
        return True

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        assert request.stream is not None
        pieces = list(request.stream)  # every piece must stay valid after the next one came
        digest = hashlib.sha256()
        for piece in pieces:
            digest.update(piece)
        return json_response(
            200,
            {
                "bytes": sum(len(piece) for piece in pieces),
                "sha256": digest.hexdigest(),
                "pieces": len(pieces),
                "buffered": int(request.body.size),
            },
        )


class Ignore(Sink):
    """``POST /ignore``: streams, but answers without reading the body."""

    def matches(self, path: str) -> bool:
        return path == "/ignore"

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        return json_response(200, {"read": False})


class Json(Route):
    """``POST /json``: the keys of the JSON object in the body."""

    def matches(self, path: str) -> bool:
        return path == "/json"

    def handle(self, request: HttpRequest, client: str) -> HttpResponse:
        return json_response(200, {"keys": sorted(json_body(request))})


@pytest.fixture(scope="module")
def door(server: FrameServer) -> Iterator[HttpServer]:
    settings = DoorSettings(host="127.0.0.1", port=0, read_timeout=2.0, request_timeout=10.0)
    built = HttpServer(settings, engine=server.engine, routes=[Sink(), Ignore(), Json()])
    built.start()
    yield built
    built.close()


@pytest.fixture
def raw(door: HttpServer) -> Iterator[RawClient]:
    client = RawClient(SimpleNamespace(http_address=door.address))  # type: ignore[arg-type]
    yield client
    client.close()


def post(door: HttpServer, path: str, body: Any, headers: dict[str, str] | None = None) -> Reply:
    host, port = door.address
    conn = http.client.HTTPConnection(host, port, timeout=HANG_GUARD)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def head(path: str, headers: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()


BODY = bytes(range(256)) * 4099  # a little over 1 MiB: several pieces


# --- streamed bodies --------------------------------------------------------------------------


def test_a_content_length_body_streams_in_pieces(door):
    answer = post(door, "/sink", BODY).json()
    assert answer == {
        "bytes": len(BODY),
        "sha256": hashlib.sha256(BODY).hexdigest(),
        "pieces": answer["pieces"],
        "buffered": 0,
    }
    assert answer["pieces"] > 1


def test_a_chunked_body_streams_in_pieces(door):
    chunks = (BODY[i : i + 10_000] for i in range(0, len(BODY), 10_000))
    answer = post(door, "/sink", chunks).json()  # http.client sends an iterable chunked
    assert answer["bytes"] == len(BODY)
    assert answer["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert answer["buffered"] == 0


def test_an_empty_body_streams_as_no_pieces(door):
    answer = post(door, "/sink", b"").json()
    assert (answer["bytes"], answer["pieces"]) == (0, 0)


def test_two_streamed_bodies_on_one_connection(raw):
    for _ in range(2):
        raw.send(head("/sink", f"Content-Length: {len(BODY)}\r\n") + BODY)
        assert raw.read_response().json()["bytes"] == len(BODY)


def test_expect_100_continue_is_answered_when_the_route_reads(raw):
    raw.send(head("/sink", "Content-Length: 5\r\nExpect: 100-continue\r\n"))
    assert raw.read_head()[0] == 100
    raw.send(b"hello")
    assert raw.read_response().json()["bytes"] == 5


def test_a_streamed_body_above_the_limit_is_413_unread(raw):
    raw.send(head("/sink", f"Content-Length: {SINK_LIMIT + 1}\r\nExpect: 100-continue\r\n"))
    raw.read_response().error(413, f"above the limit of {SINK_LIMIT} bytes")
    assert raw.at_eof()


def test_a_chunked_stream_growing_past_the_limit_is_413(raw):
    raw.send(head("/sink", "Transfer-Encoding: chunked\r\n"))
    piece = b"x" * (1 << 20)
    for _ in range(5):
        raw.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    raw.read_response().error(413, "above the limit", "chunked")
    assert raw.at_eof()


def test_a_streamed_body_cut_short_is_400(raw):
    raw.send(head("/sink", "Content-Length: 1000\r\n") + b"x" * 300)
    raw.sock.shutdown(1)  # SHUT_WR: the client sends no more
    raw.read_response().error(400, "request body ended after 300 of 1000 bytes")


def test_malformed_chunks_in_a_stream_are_400(raw):
    raw.send(head("/sink", "Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\nzz\r\n")
    raw.read_response().error(400, "chunk size")
    assert raw.at_eof()


def test_a_body_the_route_leaves_unread_closes_the_connection(raw):
    smuggled = b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n"  # the body: never a request
    raw.send(head("/ignore", f"Content-Length: {len(smuggled)}\r\n") + smuggled)
    reply = raw.read_response()
    assert reply.json() == {"read": False}
    assert reply.headers["connection"] == "close"
    assert raw.at_eof(), "the bytes of the unread body were taken for a request"


# --- JSON bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b'{"name": "\xff\xfe"}', ["not UTF-8", "byte 10"]),
        (b'{"name": ', ["not JSON"]),
        (b"[1, 2]", ["must be a JSON object", "an array"]),
        (b'"text"', ["must be a JSON object", "a string"]),
        (b"[" * (1 << 20), ["more than 64 levels deep"]),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, ["more than 64 levels deep"]),
        (b'{"steps": NaN}', ["not JSON", "NaN"]),
        (b'{"steps": -Infinity}', ["not JSON", "Infinity"]),
        (b'{"steps": ' + b"9" * 5000 + b"}", ["not JSON"]),
        (b"\xef\xbb\xbf{}", ["not JSON"]),
    ],
    ids=[
        "not-utf8",
        "cut",
        "array",
        "string",
        "megabyte-deep",
        "65-deep",
        "nan",
        "infinity",
        "huge-int",
        "bom",
    ],
)
def test_hostile_json_is_400_naming_the_problem(door, body, fragments):
    reply = post(door, "/json", body)
    reply.error(400, *fragments)
    assert post(door, "/json", b'{"ok": 1}').json() == {"keys": ["ok"]}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"a": 1, "b": [1, {"c": null}]}',
        b'{"a": ' * 63 + b"[1]" + b"}" * 63,
        b'{"text": "' + b"[" * 10_000 + b'"}',
        b'{"text": "\\"[[[[\\\\", "b": "]]]]"}',
        json.dumps({"many": [{"x": i} for i in range(20_000)]}).encode(),
    ],
    ids=["empty", "nested", "64-deep", "brackets-in-a-string", "escapes", "many-objects"],
)
def test_valid_json_is_served(door, body):
    reply = post(door, "/json", body)
    assert reply.status == 200, reply.body[:300]
    assert reply.json()["keys"] == sorted(json.loads(body or b"{}"))


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'[{"a": [1]}]', 3),
        (b'["[[[", {"b": "]]]"}]', 2),
        (b'["\\"[[", "\\\\", [[]]]', 3),
        (b'["\\\\\\"[", []]', 2),
        (b"[" * 100 + b"]" * 100, 100),
    ],
)
def test_json_depth_skips_brackets_inside_strings(text, depth):
    assert json_depth(text) == depth
    assert json_depth(text, stop_above=MAX_JSON_DEPTH) >= min(depth, MAX_JSON_DEPTH + 1)
