"""Fixtures of the HTTP door's tests: a raw-socket client and ``tritonclient.http``.

The server itself is the shared ``server`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.http as triton_http

from frameserve.serve.server import FrameServer
from tests.support.http_client import HANG_GUARD, RawClient


@pytest.fixture
def raw(server: FrameServer) -> Iterator[RawClient]:
    """A raw-socket client of the shared server."""
    client = RawClient(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def triton(server: FrameServer) -> Iterator[triton_http.InferenceServerClient]:
    """The standard third-party client, ``tritonclient.http``."""
    host, port = server.http_address
    client = triton_http.InferenceServerClient(url=f"{host}:{port}", network_timeout=HANG_GUARD)
    yield client
    client.close()
