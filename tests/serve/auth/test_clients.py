"""Every client with tokens, against a real server that needs them.

- ``frameserve.client.Client``: ``token=`` or ``$FRAMESERVE_TOKEN``, sent with every request;
  401 and 403 are typed errors carrying the server's message;
- the commands (``frameserve run --server``, ``frameserve jobs``) with ``--token`` or the
  environment variable (run through the command line's ``main`` in this process);
- ``tritonclient.http`` with ``headers={"Authorization": "Bearer ..."}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from frameserve.client import AuthenticationError, Client, HTTPStatusError
from frameserve.media.imageio import read_image
from frameserve.serve.server import FrameServer
from tests.serve.auth.conftest import Tokens, bearer
from tests.shots.plates import write_plates
from tests.support.commands import frameserve_here
from tests.support.http_client import HANG_GUARD, random_frame, triton_identity

TOKEN_ENV = "FRAMESERVE_TOKEN"


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def client_of(server: FrameServer, token: str | None = None) -> Client:
    return Client(server.http_url, token=token, timeout=HANG_GUARD, retries=0)


# -- the Python client -------------------------------------------------------------------------


def test_the_client_sends_its_token_with_every_request(
    auth_server: FrameServer, tokens: Tokens
) -> None:
    frame = random_frame(7, height=5, width=6)
    with client_of(auth_server, tokens.artist) as client:
        assert client.ready() and client.server_metadata()["name"] == "frameserve"
        assert "identity" in {model.name for model in client.models()}
        np.testing.assert_array_equal(client.infer("identity", frame).frames["image"], frame)
        assert isinstance(client.training.jobs(), list)


def test_the_client_takes_the_token_from_the_environment(
    auth_server: FrameServer, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, tokens.artist)
    with client_of(auth_server) as client:
        assert client.model("identity").name == "identity"
    with client_of(auth_server, tokens.td) as client:  # the argument wins
        assert client.model("identity").name == "identity"


@pytest.mark.parametrize("token", [None, "fs_not-a-token-of-this-server"])
def test_without_a_valid_token_the_client_raises_authentication_error(
    auth_server: FrameServer, token: str | None
) -> None:
    with client_of(auth_server, token) as client:
        assert client.live()  # health is open
        with pytest.raises(AuthenticationError) as caught:
            client.models()
    error = caught.value
    assert isinstance(error, HTTPStatusError) and error.status == 401
    assert "Authorization: Bearer" in error.message


def test_a_large_upload_without_a_token_gets_the_401_not_a_broken_connection(
    auth_server: FrameServer, tokens: Tokens
) -> None:
    # The server answers from the head and closes while the client is still sending.
    body = b"\x89PNG\r\n\x1a\n" + bytes(48 << 20)
    with client_of(auth_server) as client, pytest.raises(AuthenticationError):
        client.training.upload(body, filename="plate.png")
    with client_of(auth_server, tokens.admin) as client:
        assert client.training.uploads() == []


def test_a_token_that_cannot_be_a_header_is_refused_before_sending() -> None:
    for bad in ("fs_two words", "fs_line\r\nX-Injected: 1", "fs_\x00"):
        with pytest.raises(ValueError, match="token"):
            Client("http://127.0.0.1:9", token=bad)


def test_the_token_is_not_in_the_clients_repr(tokens: Tokens) -> None:
    client = Client("http://127.0.0.1:9", token=tokens.admin)
    assert tokens.admin not in repr(client)


# -- the commands ------------------------------------------------------------------------------


def test_frameserve_run_on_a_server_with_a_token(
    auth_server: FrameServer, tokens: Tokens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plates = write_plates(tmp_path / "plates")
    common = ["run", "identity", "--server", auth_server.http_url, "--input", plates.pattern]
    common += ["--frames", "1001-1002"]
    with_flag, without = frameserve_here(
        [*common, "--output", tmp_path / "flag.####.exr", "--token", tokens.artist],
        [*common, "--output", tmp_path / "none.####.exr"],
    )
    monkeypatch.setenv(TOKEN_ENV, tokens.artist)
    (from_env,) = frameserve_here([*common, "--output", tmp_path / "env.####.exr"])
    assert with_flag.returncode == 0, with_flag.stderr
    assert from_env.returncode == 0, from_env.stderr
    for name in ("flag", "env"):
        result = read_image(tmp_path / f"{name}.1001.exr")
        np.testing.assert_array_equal(result.pixels, plates.pixels[1001])
    assert without.returncode == 1
    assert "token" in without.stderr and not list(tmp_path.glob("none.*"))


def test_frameserve_jobs_with_and_without_a_token(auth_server: FrameServer, tokens: Tokens) -> None:
    url = auth_server.http_url
    listed, refused, wrong = frameserve_here(
        ["jobs", "--server", url, "--token", tokens.td, "--json"],
        ["jobs", "--server", url],
        ["jobs", "--server", url, "--token", "fs_wrong"],
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip().startswith("[")
    for result in (refused, wrong):
        assert result.returncode == 1
        assert "401" in result.stderr and "token" in result.stderr


# -- tritonclient --------------------------------------------------------------------------------


def test_tritonclient_works_with_an_authorization_header(
    auth_server: FrameServer, tokens: Tokens
) -> None:
    host, port = auth_server.http_address
    triton = triton_http.InferenceServerClient(url=f"{host}:{port}", network_timeout=HANG_GUARD)
    try:
        assert triton.is_server_live()  # open without a token
        headers = bearer(tokens.artist)
        metadata = triton.get_model_metadata("identity", headers=headers)
        assert metadata["name"] == "identity"
        frame = random_frame(8, height=4, width=6)
        result = triton.infer(
            "identity",
            [triton_input_of(frame)],
            outputs=[triton_http.InferRequestedOutput("image", binary_data=True)],
            headers=headers,
        )
        np.testing.assert_array_equal(result.as_numpy("image"), frame)
        with pytest.raises(InferenceServerException) as refused:
            triton.get_model_metadata("identity")
        assert refused.value.status() == "401" and "token" in refused.value.message()
        with pytest.raises(InferenceServerException) as wrong:
            triton_identity(triton, frame)
        assert wrong.value.status() == "401"
    finally:
        triton.close()


def triton_input_of(frame: np.ndarray) -> triton_http.InferInput:
    tensor = triton_http.InferInput("image", list(frame.shape), "FP32")
    tensor.set_data_from_numpy(frame, binary_data=True)
    return tensor
