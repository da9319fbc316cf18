"""Shared fixtures: a real frameserve server on loopback, a client framed like the node, devices."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

# Training jobs of test servers (and of commands the tests start) never touch ~/.frameserve.
_JOBS = tempfile.mkdtemp(prefix="frameserve-test-jobs-")
os.environ["FRAMESERVE_JOBS_FOLDER"] = _JOBS
atexit.register(shutil.rmtree, _JOBS, True)

import pytest  # noqa: E402 - after the environment is set for the frameserve imports
import torch  # noqa: E402

from frameserve.serve.server import FrameServer  # noqa: E402
from tests.support.devices import devices_under_test, exact_float32  # noqa: E402
from tests.support.node_client import NodeClient  # noqa: E402
from tests.support.servers import start_server  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[FrameServer]:
    """A server shared by the tests of one module."""
    running = start_server()
    yield running
    running.close()


@pytest.fixture
def node(server: FrameServer) -> NodeClient:
    """A client that frames requests exactly as the compiled MLClient node does."""
    host, port = server.mlclient_address
    return NodeClient(host, port, timeout=30.0)


@pytest.fixture(params=devices_under_test())
def device(request: pytest.FixtureRequest) -> Iterator[torch.device]:
    """Each device the tests run on: the CPU, and CUDA when there is one (tests/support/devices).

    On CUDA, TF32 is off while the test runs, so float32 results compare with the CPU's.
    """
    chosen = torch.device(request.param)
    with exact_float32(chosen):
        yield chosen
