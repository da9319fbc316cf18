"""HTTPS: with --tls-cert and --tls-key the HTTP door speaks TLS only.

A certificate authority made for the test signs the server's certificate; the standard
library, tritonclient (``ssl=True``) and frameserve's client reach the server through it,
checking the host name, and get the frames they sent back. Whatever else arrives at the port
(plain HTTP, a client that does not trust the certificate, a handshake that stalls, TLS that is
garbage) is turned away cleanly while the server serves on.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http

from frameserve.client import Client
from frameserve.errors import ConfigError
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.support.certificates import CertificateFiles, make_certificates
from tests.support.http_client import (
    HANG_GUARD,
    Reply,
    infer_body,
    outputs_of,
    random_frame,
    triton_identity,
)
from tests.support.paths import TEST_MODELS
from tests.support.servers import start_server

#: The TLS server's header deadline: the handshake must be done within it too.
HEADER_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certificates: CertificateFiles) -> Iterator[FrameServer]:
    server = start_server(
        tls_cert=certificates.cert,
        tls_key=certificates.key,
        header_timeout=HEADER_TIMEOUT,
        read_timeout=5.0,
    )
    yield server
    server.close()


def trusting(certificates: CertificateFiles) -> ssl.SSLContext:
    """A client context that trusts the test CA only, and checks host names."""
    return ssl.create_default_context(cafile=str(certificates.ca))


def https_request(
    server: FrameServer,
    context: ssl.SSLContext,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    host, port = server.http_address
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=HANG_GUARD)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        names = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, names, data)
    finally:
        conn.close()


def assert_serves_tls(server: FrameServer, certificates: CertificateFiles) -> None:
    """An identity request over TLS comes back with its frame."""
    frame = random_frame(31, height=5, width=7)
    body, headers = infer_body([("image", frame)])
    reply = https_request(
        server, trusting(certificates), "POST", "/v2/models/identity/infer", body, headers
    )
    np.testing.assert_array_equal(outputs_of(reply)["image"], frame)


# --- the clients ------------------------------------------------------------------------------


def test_the_standard_library_gets_its_pixels_back_over_tls(tls_server, certificates):
    host, port = tls_server.http_address
    conn = http.client.HTTPSConnection(
        host, port, context=trusting(certificates), timeout=HANG_GUARD
    )
    try:
        conn.request("GET", "/v2/health/live")
        live = conn.getresponse()
        assert (live.status, live.read()) == (200, b'{"live": true}')
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")
        frame = random_frame(32, height=300, width=400)  # 1.4 MB: the reply goes part by part
        body, headers = infer_body([("image", frame)])
        conn.request("POST", "/v2/models/identity/infer", body=body, headers=headers)
        response = conn.getresponse()
        reply = Reply(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
        np.testing.assert_array_equal(outputs_of(reply)["image"], frame)
        assert conn.sock is sock, "the TLS connection was not kept alive"
    finally:
        conn.close()


def test_tritonclient_gets_its_pixels_back_over_tls(tls_server, certificates):
    host, port = tls_server.http_address
    client = triton_http.InferenceServerClient(
        url=f"{host}:{port}",
        ssl=True,
        ssl_options={"ca_certs": str(certificates.ca)},
        network_timeout=HANG_GUARD,
    )
    try:
        assert client.is_server_live()
        frame = random_frame(33, height=200, width=300)
        np.testing.assert_array_equal(triton_identity(client, frame), frame)
    finally:
        client.close()


def test_the_frameserve_client_gets_its_pixels_back_over_tls(tls_server, certificates):
    host, port = tls_server.http_address
    frame = random_frame(34, height=120, width=160)
    with Client(
        f"https://{host}:{port}", verify=str(certificates.ca), timeout=HANG_GUARD, retries=0
    ) as client:
        result = client.infer("identity", frame)
    np.testing.assert_array_equal(result.frames["image"], frame)


# --- what else arrives at the port ------------------------------------------------------------


def test_the_dashboards_event_stream_flows_over_tls(tls_server, certificates):
    """Server-Sent Events through TLS: the stream opens, its first event arrives whole, and a
    request answered meanwhile shows in the next overview event."""
    host, port = tls_server.http_address
    raw = socket.create_connection((host, port), timeout=HANG_GUARD)
    with trusting(certificates).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(b"GET /v2/dashboard/events?page=overview HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        until = time.monotonic() + HANG_GUARD
        while data.count(b"event: overview") < 1 and time.monotonic() < until:
            data += sock.recv(65536)
        head, _, events = data.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"200" and b"text/event-stream" in head
        assert_serves_tls(tls_server, certificates)  # a request a later event shows

        def shown() -> bool:
            for event in events.split(b"\n\n"):
                if event.startswith(b"event: overview\ndata: "):
                    overview = json.loads(event.split(b"data: ", 1)[1])
                    if any(r["model"] == "identity" for r in overview["recent"]):
                        return True
            return False

        while not shown() and time.monotonic() < until:
            events += sock.recv(65536)
        assert shown()


def test_plain_http_to_the_tls_port_is_told_to_use_https(tls_server, certificates):
    host, port = tls_server.http_address
    conn = http.client.HTTPConnection(host, port, timeout=HANG_GUARD)
    try:
        conn.request("GET", "/v2/health/live")
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 400
    assert "HTTPS only" in answer["error"] and "https://" in answer["error"]
    assert response.getheader("Connection") == "close"
    assert_serves_tls(tls_server, certificates)


def test_a_plain_request_with_a_body_still_reads_its_answer(tls_server, certificates):
    """The door discards what the client still sends before closing, so no reset eats the 400."""
    host, port = tls_server.http_address
    body = b"x" * (1 << 20)
    with socket.create_connection((host, port), timeout=HANG_GUARD) as sock:
        head = f"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
        sock.sendall(head.encode() + b"\r\n\r\n")
        sock.sendall(body)
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"HTTPS only" in reply
    assert_serves_tls(tls_server, certificates)


def test_a_client_that_does_not_trust_the_certificate_is_turned_away(tls_server, certificates):
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request(tls_server, ssl.create_default_context(), "GET", "/v2/health/live")
    assert_serves_tls(tls_server, certificates)


def test_the_host_name_is_checked_against_the_certificate(tls_server, certificates):
    """The certificate names localhost and 127.0.0.1: another name is refused by the client."""
    host, port = tls_server.http_address
    raw = socket.create_connection((host, port), timeout=HANG_GUARD)
    with pytest.raises(ssl.SSLCertVerificationError):
        trusting(certificates).wrap_socket(raw, server_hostname="frames.example.com")
    raw.close()
    raw = socket.create_connection((host, port), timeout=HANG_GUARD)
    with trusting(certificates).wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "sent",
    [b"", b"\x16", b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x01\xff\xff" + b"\x00" * 100],
    ids=["nothing", "one-byte", "garbage-hello", "stalled-hello"],
)
def test_a_handshake_that_stalls_or_is_garbage_is_closed_by_the_header_deadline(
    tls_server, certificates, sent
):
    host, port = tls_server.http_address
    with socket.create_connection((host, port), timeout=HANG_GUARD) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        try:
            data = sock.recv(1000)
            while data and not data.startswith(b"HTTP"):  # a TLS alert, then the end
                data = sock.recv(1000)
        except ConnectionResetError:
            data = b""
        waited = time.monotonic() - started
    assert data == b"", f"expected the connection closed, got {data[:100]!r}"
    # Closed by the header deadline, well before the 5 s read timeout (a hang guard only).
    assert waited < 4.0, f"closed after {waited:.1f} s"
    assert_serves_tls(tls_server, certificates)


def test_a_stalled_handshake_holds_only_its_own_connection(certificates):
    """The handshake runs on the connection's thread: others are served while one stalls."""
    patient = start_server(tls_cert=certificates.cert, tls_key=certificates.key, header_timeout=30)
    host, port = patient.http_address
    try:
        with socket.create_connection((host, port), timeout=HANG_GUARD) as stalled:
            stalled.sendall(b"\x16\x03\x01")  # a handshake begun, never finished
            conn = http.client.HTTPSConnection(
                host, port, context=trusting(certificates), timeout=3.0
            )
            conn.request("GET", "/v2/health/live")  # 3 s, far less than the stall's 30 s
            assert conn.getresponse().read() == b'{"live": true}'
            conn.close()
    finally:
        patient.close()


def test_tls_1_2_is_the_oldest_version_offered(tls_server, certificates):
    assert tls_server.http is not None and tls_server.http.tls is not None
    assert tls_server.http.tls.minimum_version == ssl.TLSVersion.TLSv1_2
    context = trusting(certificates)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    reply = https_request(tls_server, context, "GET", "/v2/health/live")
    assert reply.status == 200


# --- certificates that cannot be used ---------------------------------------------------------


def test_a_key_that_does_not_match_the_certificate_refuses_to_start(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = make_certificates(tmp_path / "a"), make_certificates(tmp_path / "b")
    settings = ServerSettings(
        port=0, http_port=0, model_folders=(TEST_MODELS,), tls_cert=first.cert, tls_key=second.key
    )
    with pytest.raises(ConfigError, match=r"--tls-cert .* cannot be used"):
        FrameServer(settings)


def test_a_file_that_is_not_pem_refuses_to_start(tmp_path: Path, certificates):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    settings = ServerSettings(
        port=0, http_port=0, model_folders=(TEST_MODELS,), tls_cert=junk, tls_key=certificates.key
    )
    with pytest.raises(ConfigError, match="PEM"):
        FrameServer(settings)
