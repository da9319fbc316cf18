"""``POST /v2/repository/models/{name}/load``: an admin loads changed model folders on demand.

With hot reload off, a changed ``model.py`` is served only once an admin asks; the answer is
the model's state, and a model that is not there (or failed) says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.client import Client, NotFoundError, PermissionDeniedError
from frameserve.serve.server import FrameServer
from tests.serve.auth.conftest import Tokens, bearer, make_tokens
from tests.support.http_client import HANG_GUARD, request
from tests.support.model_folders import scale_source, write_model
from tests.support.servers import start_server


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_model(tmp_path / "models" / "tweak", scale_source("tweak", 2.0, label="Before"))
    return tmp_path / "models"


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return make_tokens(tmp_path)


@pytest.fixture
def served(folder: Path, tokens: Tokens) -> Iterator[FrameServer]:
    running = start_server(
        model_folders=(folder,), builtin_models=False, reload_interval=None, tokens_file=tokens.path
    )
    yield running
    running.close()


def label(server: FrameServer, token: str) -> str:
    reply = request(server, "GET", "/v2/models/tweak/config", headers=bearer(token))
    assert reply.status == 200, reply.body
    return str(reply.json()["label"])


def test_a_changed_model_is_served_once_an_admin_loads_it(
    served: FrameServer, folder: Path, tokens: Tokens
) -> None:
    assert label(served, tokens.artist) == "Before"
    write_model(folder / "tweak", scale_source("tweak", 3.0, label="After the change"))
    assert label(served, tokens.artist) == "Before"  # hot reload is off
    reply = request(served, "POST", "/v2/repository/models/tweak/load", b"", bearer(tokens.admin))
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["name"] == "tweak" and answer["ready"] is True and answer["changes"]
    assert label(served, tokens.artist) == "After the change"


def test_loading_a_model_that_is_not_there_is_404_and_other_methods_405(
    served: FrameServer, tokens: Tokens
) -> None:
    admin = bearer(tokens.admin)
    request(served, "POST", "/v2/repository/models/nope/load", b"", admin).error(404, "nope")
    request(served, "GET", "/v2/repository/models/tweak/load", None, admin).error(405, "POST")


def test_a_model_that_fails_after_the_change_is_503_with_its_reason(
    served: FrameServer, folder: Path, tokens: Tokens
) -> None:
    write_model(folder / "tweak", "raise RuntimeError('broken on purpose')\n")
    reply = request(served, "POST", "/v2/repository/models/tweak/load", b"", bearer(tokens.admin))
    reply.error(503, "broken on purpose")


def test_the_client_loads_models_with_an_admin_token_only(
    served: FrameServer, folder: Path, tokens: Tokens
) -> None:
    write_model(folder / "tweak", scale_source("tweak", 3.0, label="Through the client"))
    with Client(served.http_url, token=tokens.td, timeout=HANG_GUARD, retries=0) as client:
        with pytest.raises(PermissionDeniedError) as denied:
            client.load_model("tweak")
        assert denied.value.status == 403 and "needs role admin" in denied.value.message
        assert client.model("tweak").label == "Before"
    with Client(served.http_url, token=tokens.admin, timeout=HANG_GUARD, retries=0) as client:
        assert client.load_model("tweak").label == "Through the client"
        with pytest.raises(NotFoundError):
            client.load_model("nope")
