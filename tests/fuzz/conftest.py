"""The fuzz suite's server: one ``frameserve serve`` process shared by every fuzz test.

It runs in its own process (:class:`~tests.support.fuzz_server.FuzzServer`), so an example that
crashes or freezes it fails the test that sent it, and the server is started again for the
next one. Its data root holds hostile files (a FIFO, a link out of the root, a 12000 x 12000
PNG header, files with a planted secret), and a job trained for one step waits in its jobs
folder, so the package and contact sheet paths reach a real job.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fuzz_server import FuzzServer, ModelList
from tests.support.fuzz_training import keep_a_finished_job

#: Seconds a silent client is waited for: short, so probes that stay open end quickly.
CLIENT_TIMEOUT = 0.3
#: Seconds any exchange may take before it counts as a hang.
HANG_BOUND = 15.0


@pytest.fixture(scope="package")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """A ``frameserve serve`` process with the test models and a hostile data root."""
    with FuzzServer(
        tmp_path_factory.mktemp("fuzz"), timeout=CLIENT_TIMEOUT, bound=HANG_BOUND
    ) as server:
        keep_a_finished_job(server.http, server.data_root, timeout=HANG_BOUND)
        yield server


@pytest.fixture(scope="package")
def served_models(fuzz_server: FuzzServer) -> ModelList:
    """The models worth fuzzing, as the MLClient info reply lists them (see
    :meth:`~tests.support.fuzz_server.FuzzServer.fuzzable_models`)."""
    models = fuzz_server.fuzzable_models()
    assert models, "the fuzz server lists no models"
    return models
