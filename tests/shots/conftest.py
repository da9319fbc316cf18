"""Fixtures of the ``frameserve run`` tests: plates on disk, extra models, a served HTTP door."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.shots.plates import EXTRA_MODELS, Plates, write_plates
from tests.support.paths import TEST_MODELS


@pytest.fixture
def plates(tmp_path: Path) -> Plates:
    return write_plates(tmp_path / "plates")


def _write_models(root: Path) -> Path:
    for name, source in EXTRA_MODELS.items():
        (root / name).mkdir()
        (root / name / "model.py").write_text(source)
    return root


@pytest.fixture(scope="session")
def extra_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_models(tmp_path_factory.mktemp("run_models"))


@pytest.fixture(autouse=True)
def _no_env_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAMESERVE_MODELS", raising=False)


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrameServer]:
    """A server with the test models and the extra ones, HTTP on a free port."""
    root = _write_models(tmp_path_factory.mktemp("server_models"))
    settings = ServerSettings(
        port=0, http_port=0, model_folders=(TEST_MODELS, root), read_timeout=5.0
    )
    server = FrameServer(settings).start()
    yield server
    server.close()
