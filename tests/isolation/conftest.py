"""Fixtures of the isolation tests: a real server whose model folders hold misbehaving plug-ins.

Each test module gets its own server, started with :data:`ISOLATED` updated by the module's
``SETTINGS`` dict. It serves the test models and a *copy* of ``tests/models_misbehaving``: the
tests fix plug-ins by saving a good ``model.py`` over a bad one, and the originals must stay
bad. Every worker process imports torch (1-2 s on a small machine), so one server serves a
whole module and the frames are small. Tests run in file order; those that fix a plug-in come
last in their module.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from frameserve.serve.server import FrameServer
from tests.support.misbehaving import DOORS, GOOD_MODELS, Doors, new_frame
from tests.support.paths import MISBEHAVING, TEST_MODELS
from tests.support.servers import start_server

#: The settings of every isolation test server (a module's ``SETTINGS`` overrides them).
ISOLATED: dict[str, object] = {
    "isolation": True,
    # Bounds a model that declares no timeout; ``loops`` declares 2 s.
    "model_timeout": 10.0,
    # A model whose worker dies twice within 5 minutes is marked failed.
    "max_crashes": 2,
    "crash_window": 300.0,
    # The cap of a model that declares none; ``hog`` declares 400 MB, and that must apply.
    "worker_memory_bytes": 1 << 30,
    # A fixed plug-in is back within about two looks at its folder.
    "reload_interval": 0.2,
}
#: The loggers of the two doors' request log lines (one INFO line per request).
DOOR_LOGGERS = ("frameserve.serve.http.server", "frameserve.serve.mlclient.server")


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tests/models_misbehaving`` that the tests may fix while the server runs."""
    root = tmp_path_factory.mktemp("misbehaving")
    shutil.copytree(
        MISBEHAVING, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, plugins: Path) -> Iterator[FrameServer]:
    """The module's server: the built-ins, the test models and the misbehaving plug-ins."""
    settings = {**ISOLATED, "model_folders": (TEST_MODELS, plugins)}
    settings.update(getattr(request.module, "SETTINGS", {}))
    running = start_server(**settings)
    yield running
    running.close()


@pytest.fixture(scope="module")
def doors(server: FrameServer) -> Doors:
    """Calls through both doors; the good models have answered once (their workers are up)."""
    calling = Doors(server)
    for door in DOORS:
        for model in GOOD_MODELS:
            answer = calling.call(door, model, new_frame())
            assert answer.ok, f"{model} through the {door} door: {answer.error}"
    return calling


@pytest.fixture
def served_by(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[str]]:
    """Return a function giving the ``worker=`` field of each inference log line for a model.

    Only the lines logged since the test started count, oldest first, from both doors.
    """
    for name in DOOR_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)

    def workers(model: str) -> list[str]:
        found = []
        for record in caplog.records:
            line = record.getMessage()
            inference = "/infer " in line or " infer model=" in line
            if record.name in DOOR_LOGGERS and inference and f" model={model} " in line:
                match = re.search(r"\bworker=(\S+)", line)
                assert match, f"a request log line names no worker: {line!r}"
                found.append(match[1])
        return found

    return workers
