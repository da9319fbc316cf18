"""Training jobs: the queue, the HTTP endpoints and serving each job as a model."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frameserve.cli.main import main
from frameserve.client import Client
from frameserve.engine.devices import resolve_device
from frameserve.serve.server import FrameServer
from frameserve.training.jobs import TrainingJobs
from frameserve.training.jobs.limits import JobLimits
from tests.support.servers import start_server
from tests.training.helpers import SETTINGS, files_under, write_pairs


def call(server: FrameServer, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """Send one JSON request; return the status and the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.http_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw, status = answer.read(), answer.status
            kind = answer.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        raw, status, kind = exc.read(), exc.code, "application/json"
        exc.close()
    return status, json.loads(raw) if kind.startswith("application/json") else raw


def wait_for(server: FrameServer, name: str, states: tuple[str, ...]) -> dict[str, Any]:
    """Poll job ``name`` until it is in one of ``states``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, job = call(server, "GET", f"/v2/training/jobs/{name}")
        assert status == 200, job
        if job["state"] in states:
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"job {name} never reached {states}: {job}")


def wait_for_step(server: FrameServer, name: str, step: int) -> dict[str, Any]:
    """Poll job ``name`` until it has done ``step`` steps."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, job = call(server, "GET", f"/v2/training/jobs/{name}")
        assert status == 200 and job["state"] == "running", job
        if job["step"] >= step:
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"job {name} never reached step {step}: {job}")


@pytest.fixture
def trainer_server(tmp_path: Path) -> Iterator[FrameServer]:
    running = start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(tmp_path,)
    )
    yield running
    running.close()


def test_job_trains_is_served_and_checkpoint_knob_changes_results(
    trainer_server: FrameServer, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path, 3)
    body = {
        "name": "look",
        "pairs": pairs[:2],
        "validation": pairs[2:],
        "settings": {**SETTINGS, "steps": 8},
    }
    status, job = call(trainer_server, "POST", "/v2/training/jobs", body)
    assert status == 201, job
    with Client(trainer_server.http_url) as client:
        assert "look" in [m.name for m in client.models()]  # served from submission on
        done = wait_for(trainer_server, "look", ("done", "failed"))
        assert done["state"] == "done", done
        assert done["step"] == 8 and done["checkpoints"] == ["step_4", "step_8"]
        assert done["loss"] is not None and done["validation_loss"] is not None
        assert "look" in [m.name for m in client.models()]
        frame = np.random.default_rng(9).random((40, 48, 3), dtype=np.float32)
        early = client.infer("look", frame, knobs={"checkpoint": "step_4"}).frames["image"]
        late = client.infer("look", frame, knobs={"checkpoint": "latest"}).frames["image"]
        assert early.shape == late.shape == (40, 48, 3)
        assert not np.allclose(early, late)
    status, jobs = call(trainer_server, "GET", "/v2/training/jobs")
    assert [j["name"] for j in jobs["jobs"]] == ["look"]
    status, sheet = call(trainer_server, "GET", "/v2/training/jobs/look/contact_sheet")
    assert status == 200 and sheet[:8] == b"\x89PNG\r\n\x1a\n"
    status, answer = call(trainer_server, "POST", "/v2/training/jobs/look/cancel")
    assert status == 409 and "done" in answer["error"]


def test_cancel_is_quick_and_resume_goes_on(trainer_server: FrameServer, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path)
    body = {"name": "long", "pairs": pairs, "settings": {**SETTINGS, "steps": 100000}}
    assert call(trainer_server, "POST", "/v2/training/jobs", body)[0] == 201
    wait_for_step(trainer_server, "long", 1)  # its process trains: a cancel leaves a checkpoint
    started = time.monotonic()
    assert call(trainer_server, "POST", "/v2/training/jobs/long/cancel")[0] == 200
    stopped = wait_for(trainer_server, "long", ("cancelled", "failed"))
    # The job stops before its next step (milliseconds here) and writes a checkpoint; the
    # bound leaves room for polling and a loaded 2-core CI machine.
    assert time.monotonic() - started < 3.0
    assert stopped["state"] == "cancelled" and stopped["checkpoints"]
    assert stopped["eta_seconds"] is None and stopped["loss"] is not None
    done_steps = stopped["step"]
    status, resumed = call(trainer_server, "POST", "/v2/training/jobs/long/resume", {"steps": 0})
    assert status == 400 and "steps" in resumed["error"]
    target = done_steps + 3
    status, resumed = call(
        trainer_server, "POST", "/v2/training/jobs/long/resume", {"steps": target}
    )
    assert status == 200, resumed
    finished = wait_for(trainer_server, "long", ("done", "failed"))
    assert finished["state"] == "done" and finished["step"] == target


def test_jobs_survive_a_restart(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path)
    folder = tmp_path / "jobs"
    first = TrainingJobs(folder, limits=JobLimits(data_roots=(tmp_path,)))
    first.submit("again", [(a, b) for a, b in pairs], _settings(steps=100000))
    deadline = time.monotonic() + 20
    while first.status("again").step < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.close()
    saved = first.status("again").step
    loss = first.status("again").loss
    second = TrainingJobs(folder, limits=JobLimits(data_roots=(tmp_path,)))
    try:
        listed = second.status("again")
        assert listed.state in ("queued", "running")
        if listed.state == "queued":  # not run here yet: what its last checkpoint recorded
            assert (listed.step, listed.loss) == (saved, loss) and loss is not None
        second.cancel("again")
        status = second.wait("again", timeout=10)
        assert status.state == "cancelled" and status.step >= saved
    finally:
        second.close()


def test_bad_requests_get_400_naming_the_problem(trainer_server: FrameServer) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"pairs": []}, "'name'"),
        ({"name": "x", "pairs": "no"}, "'pairs'"),
        ({"name": "x", "pairs": [["/no/such.exr", "/no/gt.exr"]]}, "/no/such.exr"),
        ({"name": "x", "pairs": [["a", "b"]], "settings": {"speed": 1}}, "speed"),
        ({"name": "../x", "pairs": [["a", "b"]]}, "job name"),
        ({"name": "x", "pairs": [["a", "b"]], "labels": "/shots"}, "exactly one"),
        ({"name": "x", "labels": 5}, "paths the server reads"),
        ({"name": "x", "values": "/no/table.csv"}, "/no/table.csv"),
        ({"name": "x", "pairs": [["a", "b"]], "settings": {"device": "tpu9"}}, "device"),
    ]
    for body, problem in cases:
        status, answer = call(trainer_server, "POST", "/v2/training/jobs", body)
        assert status == 400 and problem in answer["error"], (body, answer)
    status, answer = call(trainer_server, "GET", "/v2/training/jobs/nobody")
    assert status == 404 and "nobody" in answer["error"]
    for raw, problem in [
        (b"[" * 100_000 + b"]" * 100_000, "deep"),  # once a RecursionError: a 500
        ('{"name": "caf\xe9"}'.encode("latin-1"), "UTF-8"),
        (b'{"name": "x", "pairs": NaN}', "NaN"),
    ]:
        request = urllib.request.Request(
            trainer_server.http_url + "/v2/training/jobs", data=raw, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        error = json.loads(caught.value.read())["error"]
        caught.value.close()
        assert caught.value.code == 400 and problem in error, error
    assert files_under(trainer_server.jobs.folder) == []


def _settings(**overrides: Any) -> Any:
    from frameserve.training import TrainingSettings

    return TrainingSettings.from_dict({**SETTINGS, **overrides})


def test_cli_train_local_writes_checkpoints(tmp_path: Path) -> None:
    write_pairs(tmp_path, 2)
    code = main(
        [
            "train", "--local", "--name", "cli",
            "--input", str(tmp_path / "in.####.exr"), "--target", str(tmp_path / "gt.####.exr"),
            "--frames", "1001,1002", "--steps", "3", "--jobs-folder", str(tmp_path / "jobs"),
            "--setting", "crop_size=32", "--setting", "batch_size=1",
        ]
    )  # fmt: skip
    assert code == 0
    assert list((tmp_path / "jobs" / "cli" / "checkpoints").glob("step_3.pt"))


def test_auto_device_shares_the_queue_of_the_device_it_resolves_to(tmp_path: Path) -> None:
    pairs = [(a, b) for a, b in write_pairs(tmp_path)]
    device = str(resolve_device("auto"))  # "cpu" here, "cuda:0" on a GPU machine
    jobs = TrainingJobs(tmp_path / "jobs", limits=JobLimits(data_roots=(tmp_path,)))
    try:
        jobs.submit("named", pairs, _settings(steps=100000, device=device))
        deadline = time.monotonic() + 20
        while jobs.status("named").state != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        queued = jobs.submit("automatic", pairs, _settings(steps=2, device="auto"))
        assert queued.device == device
        start = jobs.status("named").step
        while jobs.status("named").step < start + 10 and time.monotonic() < deadline + 20:
            time.sleep(0.02)
        # Ten steps of the other job later it still waits: one device, one job at a time.
        assert jobs.status("automatic").state == "queued"
        jobs.cancel("named")
        assert jobs.wait("automatic", timeout=30).state == "done"
        record = json.loads((tmp_path / "jobs" / "automatic" / "queue.json").read_text())
        assert record["device"] == device and record["settings"]["device"] == "auto"
    finally:
        jobs.close()


def test_cancel_waits_for_the_job_to_stop(tmp_path: Path) -> None:
    pairs = [(a, b) for a, b in write_pairs(tmp_path)]
    jobs = TrainingJobs(tmp_path / "jobs", limits=JobLimits(data_roots=(tmp_path,)))
    try:
        jobs.submit("quick", pairs, _settings(steps=100000))
        deadline = time.monotonic() + 20
        while jobs.status("quick").step < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        status = jobs.cancel("quick", wait=10.0)
        assert status.state == "cancelled" and status.checkpoints == (f"step_{status.step}",)
    finally:
        jobs.close()


def test_a_delete_cut_short_is_finished_at_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "jobs"
    half = folder / ".deleted-gone-1-2"
    half.mkdir(parents=True)
    record = {"name": "gone", "state": "done", "error": None, "files": None}
    record["settings"] = _settings(steps=2).to_dict()
    (half / "queue.json").write_text(json.dumps(record))
    jobs = TrainingJobs(folder, limits=JobLimits(data_roots=(tmp_path,)))
    try:
        assert jobs.jobs() == [] and not half.exists()
    finally:
        jobs.close()


def test_a_job_may_not_take_a_models_name(trainer_server: FrameServer, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path, 1)
    before = sorted((e.id, e.source) for e in trainer_server.registry.entries())
    for name in ("blur", "identity", "broken_import"):  # built-in, installed, failed to load
        body = {"name": name, "pairs": pairs, "settings": SETTINGS}
        status, answer = call(trainer_server, "POST", "/v2/training/jobs", body)
        assert status == 409 and f"model called {name!r} exists" in answer["error"], answer
        assert not (trainer_server.jobs.folder / name).exists()
    after = sorted((e.id, e.source) for e in trainer_server.registry.entries())
    assert after == before  # every model still serves what it served
    status, answer = call(trainer_server, "POST", "/v2/training/jobs", {**body, "name": "mine"})
    assert status == 201, answer
    status, answer = call(trainer_server, "POST", "/v2/training/jobs", {**body, "name": "mine"})
    assert status == 409 and "exists already" in answer["error"]
