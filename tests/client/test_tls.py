"""``frameserve.client`` over HTTPS, against a real server with a certificate the test makes.

- ``verify=CA_FILE`` trusts the studio's certificate authority; the default (the system's)
  refuses the server's certificate at once, without retries; ``verify=False`` skips the check;
- the token goes inside TLS, and a plain ``http://`` client at an HTTPS port is told to use TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from frameserve.client import AuthenticationError, BadRequestError, Client, ConnectError
from frameserve.serve.auth.tokens import TokenFile
from frameserve.serve.auth.users import Role
from frameserve.serve.server import FrameServer
from tests.support.servers import start_server

#: Upper bound on any wait: a guard against hanging, never a speed target.
HANG_GUARD = 20.0


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class Certificates:
    ca: Path  #: the certificate authority (PEM) clients trust
    cert: Path  #: the server's certificate, for 127.0.0.1 and localhost
    key: Path  #: its private key


def make_certificates(folder: Path) -> Certificates:
    """Write a CA and a server certificate signed by it (valid for a day)."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("frameserve test CA"))
        .issuer_name(name("frameserve test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alternative = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alternative, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    found = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    found.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    found.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    found.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return found


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tokens = TokenFile(tmp_path_factory.mktemp("tokens") / "tokens.json")
    return tokens.path, tokens.add("maya", Role.ARTIST)


@pytest.fixture(scope="module")
def https_server(certificates: Certificates, token_file: tuple[Path, str]) -> Iterator[FrameServer]:
    running = start_server(
        tls_cert=certificates.cert, tls_key=certificates.key, tokens_file=token_file[0]
    )
    yield running
    running.close()


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAMESERVE_TOKEN", raising=False)


def url(server: FrameServer, scheme: str = "https") -> str:
    host, port = server.http_address
    return f"{scheme}://{host}:{port}"


def test_a_client_trusting_the_ca_infers_over_https(
    https_server: FrameServer, certificates: Certificates, token_file: tuple[Path, str]
) -> None:
    frame = np.linspace(-0.5, 3.0, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    with Client(
        url(https_server), token=token_file[1], verify=certificates.ca, timeout=HANG_GUARD
    ) as client:
        assert client.ready()
        np.testing.assert_array_equal(client.infer("identity", frame).frames["image"], frame)
        np.testing.assert_array_equal(client.infer("identity", frame).frames["image"], frame)


def test_the_token_is_still_needed_over_https(
    https_server: FrameServer, certificates: Certificates
) -> None:
    with (
        Client(url(https_server), verify=str(certificates.ca), timeout=HANG_GUARD) as client,
        pytest.raises(AuthenticationError),
    ):
        client.models()


def test_an_untrusted_certificate_is_refused_at_once(https_server: FrameServer) -> None:
    with (
        Client(url(https_server), timeout=HANG_GUARD, retries=3) as client,
        pytest.raises(ConnectError, match="TLS handshake") as caught,
    ):
        client.live()
    assert "certificate" in str(caught.value).lower()


def test_verify_false_skips_the_check(
    https_server: FrameServer, token_file: tuple[Path, str]
) -> None:
    with Client(url(https_server), token=token_file[1], verify=False, timeout=HANG_GUARD) as c:
        assert c.model("identity").name == "identity"


def test_a_plain_http_client_at_an_https_port_is_told_to_use_tls(
    https_server: FrameServer,
) -> None:
    with (
        Client(url(https_server, "http"), timeout=HANG_GUARD, retries=0) as client,
        pytest.raises(BadRequestError, match="HTTPS"),
    ):
        client.server_metadata()


def test_a_ca_file_that_is_not_there_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CA file"):
        Client("https://127.0.0.1:9", verify=tmp_path / "missing.pem")
