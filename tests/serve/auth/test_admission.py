"""A server with tokens, attacked on loopback: who gets in, what each role may do.

- without a valid token every path but ``/v2/health/*`` is a 401 (``WWW-Authenticate: Bearer``)
  that arrives before any body is read, and nothing the request asked for happens;
- a valid token of too low a role is a 403 that names the role needed and the token's;
- ``token add`` and ``token remove`` take effect on the running server;
- who asked is in the request log, and a bounded label of the request metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frameserve.engine.metrics import MAX_USER_LABELS, OTHER_USERS
from frameserve.serve.auth.users import Role
from frameserve.serve.server import FrameServer
from tests.serve.auth.conftest import Tokens, bearer, make_tokens
from tests.support.http_client import (
    HANG_GUARD,
    RawClient,
    Reply,
    http_head,
    infer_body,
    outputs_of,
    random_frame,
    request,
)
from tests.support.scheduling import parse_metrics, wait_until, watch_log
from tests.support.servers import start_server

#: Requests that must not reach their route without a token: method, path, body.
GUARDED = [
    ("GET", "/v2", b""),
    ("GET", "/v2/models/identity", b""),
    ("GET", "/v2/models/identity/config", b""),
    ("GET", "/v2/models/identity/ready", b""),
    ("POST", "/v2/repository/index", b"{}"),
    ("POST", "/v2/repository/models/identity/load", b""),
    ("GET", "/metrics", b""),
    ("GET", "/v2/training/jobs", b""),
    ("POST", "/v2/training/jobs", b'{"name": "sneaky", "pairs": [["/etc/passwd", "/x"]]}'),
    ("GET", "/v2/training/jobs/sneaky", b""),
    ("POST", "/v2/training/uploads?filename=a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
    ("GET", "/v2/training/uploads", b""),
    ("GET", "/v2/no/such/path", b""),  # a 401, not a 404: nothing about what exists
    ("GET", "/v2/health/other", b""),
]
#: A body far above anything the server holds, announced and never sent.
HUGE = 100_000_000


def identity_body() -> tuple[bytes, dict[str, str]]:
    return infer_body([("image", random_frame(3, height=4, width=5))])


def assert_unauthorised(reply: Reply, challenge: str = "Bearer") -> str:
    message = reply.error(401, "token", "Authorization: Bearer")
    assert reply.headers["www-authenticate"].startswith(challenge), reply.headers
    return message


# -- 401 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_no_token_is_401_everywhere_but_health(
    auth_server: FrameServer, method: str, path: str, body: bytes
) -> None:
    assert_unauthorised(request(auth_server, method, path, body or None))


def test_no_token_infers_nothing(auth_server: FrameServer) -> None:
    assert_unauthorised(request(auth_server, "POST", "/v2/models/identity/infer", *identity_body()))


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        ("Bearer fs_notATokenOfThisServer", 'error="invalid_token"'),
        ("Bearer fs_", 'error="invalid_token"'),
        ("Bearer " + "x" * 5000, 'error="invalid_token"'),
        ("Basic bWF5YTpwYXNzd29yZA==", 'error="invalid_request"'),
        ("Bearer", 'error="invalid_request"'),
        ("fs_token-without-scheme", 'error="invalid_request"'),
    ],
)
def test_a_bad_token_is_401_whatever_its_shape(
    auth_server: FrameServer, authorization: str, error: str
) -> None:
    reply = request(
        auth_server, "GET", "/v2/models/identity", headers={"Authorization": authorization}
    )
    assert_unauthorised(reply)
    assert error in reply.headers["www-authenticate"]


def test_the_401_never_says_whether_a_user_exists(auth_server: FrameServer, tokens: Tokens) -> None:
    one = request(auth_server, "GET", "/v2", headers=bearer(tokens.artist[:-2] + "zz"))
    other = request(auth_server, "GET", "/v2", headers=bearer("fs_" + "z" * 43))
    assert one.body == other.body and "maya" not in one.body.decode()


def test_nothing_asked_without_a_token_happened(auth_server: FrameServer, tokens: Tokens) -> None:
    for method, path, body in GUARDED:
        request(auth_server, method, path, body or None)
    admin = bearer(tokens.admin)
    jobs = request(auth_server, "GET", "/v2/training/jobs", headers=admin)
    assert jobs.status == 200 and "sneaky" not in jobs.body.decode()
    uploads = request(auth_server, "GET", "/v2/training/uploads", headers=admin)
    assert uploads.status == 200 and json.loads(uploads.body)["uploads"] == []
    assert [p.name for p in auth_server.settings.jobs_folder.rglob("*")] == []


@pytest.mark.parametrize(
    "path", ["/v2/models/identity/infer", "/v2/training/uploads?filename=a.png"]
)
def test_a_huge_body_without_a_token_is_refused_unread_and_the_connection_closed(
    auth_server: FrameServer, path: str
) -> None:
    raw = RawClient(auth_server)
    try:
        raw.send(http_head("POST", path, {"Content-Length": HUGE}))
        reply = raw.read_response()  # no body byte was sent: the answer comes from the head
        assert_unauthorised(reply)
        assert raw.at_eof(), "the connection stays open after a 401 with a body unread"
    finally:
        raw.close()


def test_a_huge_body_with_too_low_a_role_is_refused_unread(
    auth_server: FrameServer, tokens: Tokens
) -> None:
    raw = RawClient(auth_server)
    try:
        headers = {"Content-Length": HUGE, **bearer(tokens.artist)}
        raw.send(http_head("POST", "/v2/repository/models/identity/load", headers))
        reply = raw.read_response()
        reply.error(403, "needs role admin")
        assert raw.at_eof()
    finally:
        raw.close()


def test_a_token_refused_then_the_next_request_on_a_new_connection_works(
    auth_server: FrameServer, tokens: Tokens
) -> None:
    assert request(auth_server, "GET", "/v2").status == 401
    assert request(auth_server, "GET", "/v2", headers=bearer(tokens.artist)).status == 200


# -- open paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2/health/live/"])
@pytest.mark.parametrize("authorization", [None, "Bearer fs_wrong", "Basic x"])
def test_health_is_open(auth_server: FrameServer, path: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = request(auth_server, "GET", path, headers=headers)
    assert reply.status == 200, reply.body


# -- roles ------------------------------------------------------------------------------------


def test_an_artist_lists_models_and_runs_them(auth_server: FrameServer, tokens: Tokens) -> None:
    artist = bearer(tokens.artist)
    for method, path in [
        ("GET", "/v2"),
        ("GET", "/v2/models/identity"),
        ("GET", "/v2/models/identity/config"),
        ("POST", "/v2/repository/index"),
        ("GET", "/v2/training/jobs"),
    ]:
        reply = request(auth_server, method, path, b"{}" if method == "POST" else None, artist)
        assert reply.status == 200, (path, reply.body[:200])
    frame = random_frame(5, height=4, width=5)
    body, headers = infer_body([("image", frame)])
    reply = request(auth_server, "POST", "/v2/models/identity/infer", body, {**headers, **artist})
    np.testing.assert_array_equal(outputs_of(reply)["image"], frame)


@pytest.mark.parametrize(
    ("who", "method", "path", "needed"),
    [
        ("artist", "GET", "/metrics", "td"),
        ("artist", "POST", "/v2/repository/models/identity/load", "admin"),
        ("td", "POST", "/v2/repository/models/identity/load", "admin"),
        ("artist", "GET", "/v2/training/jobs/degrain/package", "td"),  # the training API's
    ],
)
def test_too_low_a_role_is_403_naming_the_role_needed(
    auth_server: FrameServer, tokens: Tokens, who: str, method: str, path: str, needed: str
) -> None:
    token = getattr(tokens, who)
    name = {"artist": "maya", "td": "tom"}[who]
    reply = request(auth_server, method, path, b"" if method == "POST" else None, bearer(token))
    reply.error(403, f"needs role {needed}; token {name!r} has {who}")


def test_a_td_reads_the_metrics_and_an_admin_loads_models(
    auth_server: FrameServer, tokens: Tokens
) -> None:
    for token in (tokens.td, tokens.admin):
        reply = request(auth_server, "GET", "/metrics", headers=bearer(token))
        assert reply.status == 200 and b"frameserve_requests_total" in reply.body
    reply = request(
        auth_server, "POST", "/v2/repository/models/identity/load", b"", bearer(tokens.admin)
    )
    assert reply.status == 200, reply.body
    assert reply.json()["name"] == "identity" and reply.json()["ready"] is True


# -- the token file changes while the server runs -------------------------------------------


def test_token_add_and_remove_take_effect_on_a_running_server(
    auth_server: FrameServer, tokens: Tokens
) -> None:
    new = tokens.file.add("zoe", Role.ARTIST)

    def status() -> int:
        return request(auth_server, "GET", "/v2", headers=bearer(new)).status

    wait_until(lambda: status() == 200, timeout=2.0, what="a token added to be accepted")
    tokens.file.remove("zoe")
    wait_until(lambda: status() == 401, timeout=2.0, what="a removed token to be refused")
    assert request(auth_server, "GET", "/v2", headers=bearer(tokens.artist)).status == 200


# -- who asked: the log line and the metrics -------------------------------------------------


def test_the_request_log_line_names_the_user(auth_server: FrameServer, tokens: Tokens) -> None:
    with watch_log("frameserve.serve.http.server", "user=tom") as seen:
        assert request(auth_server, "GET", "/v2", headers=bearer(tokens.td)).status == 200
        assert seen.wait(HANG_GUARD), "no request log line names user=tom"


def test_the_metrics_user_label_is_bounded(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    many = {f"user{i:02d}": tokens.file.add(f"user{i:02d}", Role.ARTIST) for i in range(60)}
    server = start_server(tokens_file=tokens.path, reload_interval=None)
    try:
        for token in many.values():
            reply = request(server, "GET", "/v2/models/identity/config", headers=bearer(token))
            assert reply.status == 200

        def counted() -> dict[frozenset[tuple[str, str]], float]:
            text = request(server, "GET", "/metrics", headers=bearer(tokens.td)).body.decode()
            return parse_metrics(text).matching("frameserve_requests_total", model="identity")

        wait_until(lambda: sum(counted().values()) >= 60, timeout=HANG_GUARD, what="60 counts")
        samples = counted()
        users = {dict(labels)["user"] for labels in samples}
        assert len(users) == MAX_USER_LABELS + 1 and OTHER_USERS in users
        assert users - {OTHER_USERS} <= set(many)
        by_user = {dict(labels)["user"]: value for labels, value in samples.items()}
        assert by_user[OTHER_USERS] == 60 - MAX_USER_LABELS
        assert sum(by_user.values()) == 60
    finally:
        server.close()


def test_without_tokens_every_request_is_anonymous_and_unlabelled(server: FrameServer) -> None:
    assert request(server, "GET", "/metrics").status == 200
    assert request(server, "GET", "/v2/models/identity/config").status == 200
    reply = request(server, "POST", "/v2/repository/models/identity/load", b"")
    assert reply.status == 200
    text = request(server, "GET", "/metrics").body.decode()
    for labels in parse_metrics(text).matching("frameserve_requests_total"):
        assert "user" not in dict(labels)
