"""Exports write only inside the jobs folder: attacks on a real server's package download.

The package's model id names a file the export writes; an id that is a path (absolute, or
climbing with ``..``) once wrote ``victim.pt`` wherever it pointed. It must be refused before
anything touches the disk, and a good export must leave nothing behind.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from frameserve.serve.server import FrameServer
from tests.support.servers import start_server
from tests.training.helpers import ANSWER_GUARD, SETTINGS, api, files_under, write_pairs


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the server's jobs folder and data root (and the tests' victims)."""
    return tmp_path_factory.mktemp("export_confined")


@pytest.fixture(scope="module")
def finished(base: Path) -> Iterator[FrameServer]:
    """A server with one finished job, ``done`` (one training run for the module)."""
    root = base / "root"
    root.mkdir()
    pairs = write_pairs(root, 1)
    server = start_server(jobs_folder=base / "jobs", reload_interval=None, data_roots=(root,))
    body = {"name": "done", "pairs": pairs, "settings": {**SETTINGS, "steps": 2}}
    assert api(server, "POST", "/v2/training/jobs", body)[0] == 201
    assert server.jobs.wait("done", timeout=ANSWER_GUARD).state == "done"
    yield server
    server.close()


def test_a_package_id_that_is_a_path_is_refused_before_anything_is_written(
    finished: FrameServer, base: Path
) -> None:
    victim = base / "victim_folder"
    victim.mkdir()
    before = files_under(base)
    for model_id in (
        str(victim / "victim"),
        "../victim",
        "../../victim_folder/victim",
        "a/b",
        ".hidden",
        "x" * 300,
    ):
        path = f"/v2/training/jobs/done/package?id={quote(model_id, safe='')}"
        status, answer = api(finished, "GET", path)
        assert status == 400 and "model id" in answer["error"], (model_id, answer)
        assert files_under(base) == before, f"id {model_id!r} wrote files"
    status, answer = api(finished, "GET", "/v2/training/jobs/done/package?version=..%2Fx")
    assert status == 400 and "version" in answer["error"]
    assert files_under(base) == before


def test_an_export_is_built_inside_the_jobs_folder_and_leaves_nothing(
    finished: FrameServer,
) -> None:
    status, package = api(finished, "GET", "/v2/training/jobs/done/package?id=studio_done")
    assert status == 200, package
    names = zipfile.ZipFile(io.BytesIO(package)).namelist()
    assert "studio_done.pt" in names and "model.toml" in names
    scratch = finished.jobs.folder / ".scratch"
    assert scratch.is_dir() and files_under(scratch) == []  # used, then emptied
