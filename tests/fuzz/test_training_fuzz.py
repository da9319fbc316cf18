"""Fuzzing the training API: hostile jobs, uploads and job paths.

Besides what every fuzz test checks (no hang, no 5xx but the deliberate ones, the server
whole), no reply may quote a planted secret and nothing may be written outside the jobs folder
(:func:`~tests.support.fuzz_training.leaks`). Each example's jobs and uploads are removed after
it (:func:`~tests.support.fuzz_training.clean_up`).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fuzz_http import compose, escape
from tests.support.fuzz_json import dumps
from tests.support.fuzz_probes import SUITE, Probe
from tests.support.fuzz_server import FuzzServer
from tests.support.fuzz_training import (
    ESCAPING_IDS,
    HOSTILE_FILES,
    KEPT_JOB,
    job_paths,
    jobs,
    uploads,
)


@SUITE
@given(probes=uploads())
def test_uploads_of_odd_bytes_and_names(fuzz_server: FuzzServer, probes: list[Probe]) -> None:
    fuzz_server.assert_survives(probes, training=True)


@SUITE
@given(data=st.data())
def test_jobs_with_hostile_json(fuzz_server: FuzzServer, data: st.DataObject) -> None:
    probes = data.draw(jobs(fuzz_server.data_root), label="probes")
    fuzz_server.assert_survives(probes, training=True)


@SUITE
@given(data=st.data())
def test_job_and_upload_paths(fuzz_server: FuzzServer, data: st.DataObject) -> None:
    probes = data.draw(job_paths(fuzz_server.data_root), label="probes")
    fuzz_server.assert_survives(probes, training=True)


@pytest.mark.parametrize("kind", ["pairs", "labels", "values"])
@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_every_hostile_file_in_every_kind_of_job(
    fuzz_server: FuzzServer, name: str, kind: str
) -> None:
    """Each hostile file of the data root (a FIFO, a 12000 x 12000 PNG header, links out of
    the root, planted secrets, devices) named by each kind of job, on every run."""
    path = str(fuzz_server.data_root / name) if not name.startswith("/") else name
    data: object = [[path, str(fuzz_server.data_root / "pair/target.png")]]
    if kind != "pairs":
        data = path
    body = {"name": "fuzz-job", kind: data, "settings": {"steps": 1, "crop_size": 8}}
    probe = Probe("http", compose("POST", "/v2/training/jobs", (), dumps(body)), True, "training")
    fuzz_server.assert_survives([probe], training=True)


@pytest.mark.parametrize("identity", ESCAPING_IDS)
def test_package_ids_pointing_out_of_the_jobs_folder(
    fuzz_server: FuzzServer, identity: str
) -> None:
    """An export whose id points out of the jobs folder writes nothing there (the job exists
    and is finished, so the export really runs)."""
    if identity.startswith("/"):
        identity = str(fuzz_server.workdir) + identity
    target = f"/v2/training/jobs/{KEPT_JOB}/package?id={escape(identity, safe='/')}"
    probe = Probe("http", compose("GET", target), True, "training package")
    fuzz_server.assert_survives([probe], training=True)
