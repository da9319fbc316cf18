"""Each training run in a process of its own: a job killed, crashing or hanging never touches
serving, is reported with what happened, and resumes from its last checkpoint.

Every test runs a real server on loopback (or the real queue) and real training processes,
and hurts them the way the world does: ``kill -9``, the signals a segfault or ``os.abort``
end a process with, a process frozen mid-step (``SIGSTOP``), a damaged checkpoint, a
checkpoint folder that cannot be written. Each spawned process imports torch (a second or two
on a 2-core machine), so the tests start as few as they can.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.serve.server import FrameServer
from frameserve.training import TrainingSettings
from frameserve.training.checkpoints import load_checkpoint
from frameserve.training.jobs import TrainingJobs
from frameserve.training.jobs import process as process_module
from frameserve.training.jobs.limits import JobLimits
from frameserve.training.jobs.process import MAX_YIELD_SECONDS
from tests.support.servers import start_server
from tests.training.helpers import (
    ANSWER_GUARD,
    LONG,
    SETTINGS,
    api,
    door_answer_times,
    job_of,
    submit_long_job,
    wait_for_state,
    write_pairs,
)

#: How long either door may take to answer while a job's process dies: a liveness bound (the
#: doors never wait on training), not a speed target.
WITHIN_A_SECOND = 1.0
#: A job that would train for hours, with a checkpoint every two steps.


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    write_pairs(folder, 3)
    return folder


@pytest.fixture
def server(tmp_path: Path, root: Path) -> Iterator[FrameServer]:
    running = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(root,))
    yield running
    running.close()


def training_process(jobs: TrainingJobs, name: str, *, past_step: int) -> int:
    """Wait until job ``name`` has done more than ``past_step`` steps; return its process id."""
    deadline = time.monotonic() + ANSWER_GUARD
    while True:
        status, pid = jobs.status(name), jobs.process_id(name)
        assert status.state in ("queued", "running"), status
        if pid is not None and status.step > past_step:
            return pid
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def assert_serving(server: FrameServer) -> None:
    """Both doors answer, each within a second."""
    http_seconds, mlclient_seconds = door_answer_times(server)
    assert http_seconds < WITHIN_A_SECOND and mlclient_seconds < WITHIN_A_SECOND


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended and been reaped (no zombie left)."""
    return not Path(f"/proc/{pid}").exists()


def test_a_job_killed_with_sigkill_fails_naming_it_and_resumes_from_its_checkpoint(
    server: FrameServer, root: Path
) -> None:
    submit_long_job(server, root, "victim")
    pid = training_process(server.jobs, "victim", past_step=4)
    os.kill(pid, signal.SIGKILL)
    assert_serving(server)
    failed = wait_for_state(server, "victim", "failed")
    error = failed["error"]
    assert f"(pid {pid}) was killed by signal 9 (SIGKILL)" in error, error
    saved = int(failed["checkpoints"][-1].removeprefix("step_"))
    assert saved >= 4 and failed["step"] == saved, failed  # the steps after it are lost
    assert f"go on from its last checkpoint (step {saved})" in error, error
    assert failed["loss"] is not None and failed["validation_loss"] is not None
    assert gone(pid)
    assert_serving(server)
    assert (
        json.loads((server.jobs.folder / "victim" / "queue.json").read_text())["state"] == "failed"
    )

    status, resumed = api(server, "POST", "/v2/training/jobs/victim/resume", {"steps": saved + 3})
    assert status == 200, resumed
    done = wait_for_state(server, "victim", "done", "failed")
    assert done["state"] == "done" and done["error"] is None, done
    assert done["step"] == saved + 3
    steps = [int(name.removeprefix("step_")) for name in done["checkpoints"]]
    assert saved in steps and steps[-1] == saved + 3  # went on from it: the old ones stay
    last = load_checkpoint(server.jobs.folder / "victim" / "checkpoints" / f"step_{saved + 3}.pt")
    assert last["elapsed_seconds"] > failed["elapsed_seconds"]  # training time adds up


def test_crashes_and_damaged_checkpoints_are_reported_and_never_touch_serving(
    server: FrameServer, root: Path
) -> None:
    submit_long_job(server, root, "fragile")
    # What a segfault in a native library (or a CUDA driver) and os.abort() end a process with.
    for crash, name in ((signal.SIGSEGV, "SIGSEGV"), (signal.SIGABRT, "SIGABRT")):
        pid = training_process(
            server.jobs, "fragile", past_step=job_of(server, "fragile")["step"] + 2
        )
        os.kill(pid, crash)
        assert_serving(server)
        failed = wait_for_state(server, "fragile", "failed")
        assert f"was killed by signal {int(crash)} ({name})" in failed["error"], failed
        assert gone(pid)
        status, resumed = api(server, "POST", "/v2/training/jobs/fragile/resume", {})
        assert status == 200, resumed

    pid = training_process(server.jobs, "fragile", past_step=job_of(server, "fragile")["step"] + 2)
    status, stopped = api(server, "POST", "/v2/training/jobs/fragile/cancel")
    assert status == 200, stopped
    stopped = wait_for_state(server, "fragile", "cancelled", "failed")
    assert stopped["state"] == "cancelled" and gone(pid), stopped
    newest = server.jobs.folder / "fragile" / "checkpoints" / f"{stopped['checkpoints'][-1]}.pt"
    newest.write_bytes(b"not a checkpoint at all" * 100)  # a disk error, a bad copy
    status, resumed = api(server, "POST", "/v2/training/jobs/fragile/resume", {})
    assert status == 200, resumed
    failed = wait_for_state(server, "fragile", "failed")
    assert f"checkpoint {str(newest)!r} cannot be read" in failed["error"], failed
    assert_serving(server)
    assert api(server, "DELETE", "/v2/training/jobs/fragile")[0] == 200
    assert not (server.jobs.folder / "fragile").exists()


def test_a_checkpoint_that_cannot_be_written_fails_the_job_alone(
    server: FrameServer, root: Path
) -> None:
    submit_long_job(server, root, "unwritable")
    pid = training_process(server.jobs, "unwritable", past_step=2)
    folder = server.jobs.folder / "unwritable" / "checkpoints"
    shutil.rmtree(folder)
    folder.write_bytes(b"")  # a file where the checkpoints go: the next one cannot be written
    failed = wait_for_state(server, "unwritable", "failed")
    assert "checkpoints" in failed["error"] and "signal" not in failed["error"], failed
    assert gone(pid)
    assert_serving(server)
    status, again = api(server, "POST", "/v2/training/jobs/unwritable/cancel")
    assert status == 409 and "failed" in again["error"]
    assert api(server, "DELETE", "/v2/training/jobs/unwritable")[0] == 200


def test_closing_the_server_stops_every_training_process(tmp_path: Path, root: Path) -> None:
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(root,))
    try:
        submit_long_job(server, root, "closing")
        pid = training_process(server.jobs, "closing", past_step=1)
    finally:
        server.close()
    assert gone(pid)
    record = json.loads((tmp_path / "jobs" / "closing" / "queue.json").read_text())
    assert record["state"] == "running"  # goes on at the next start
    saved = record["progress"]["step"]
    assert saved >= 1

    again = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(root,))
    try:
        resumed = training_process(again.jobs, "closing", past_step=saved)
        assert resumed != pid
        # queued behind it on the same device: no process yet
        submit_long_job(again, root, "waiting")
        assert again.jobs.process_id("waiting") is None
    finally:
        again.close()
    assert gone(resumed)


def test_a_frozen_process_is_killed_on_cancel_and_on_close(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process_module, "STOP_GRACE_SECONDS", 1.0)  # 30 s in service
    pairs = [(root / "in.1001.exr", root / "gt.1001.exr")]
    jobs = TrainingJobs(tmp_path / "jobs", limits=JobLimits(data_roots=(root,)))
    try:
        jobs.submit("frozen", pairs, TrainingSettings.from_dict(LONG))
        pid = training_process(jobs, "frozen", past_step=1)
        os.kill(pid, signal.SIGSTOP)  # hung in a native call: it can no longer stop itself
        jobs.cancel("frozen")
        stopped = jobs.wait("frozen", timeout=ANSWER_GUARD)
        assert stopped.state == "cancelled" and stopped.error is None, stopped
        assert gone(pid) and stopped.step == int(stopped.checkpoints[-1].removeprefix("step_"))

        jobs.resume("frozen")
        pid = training_process(jobs, "frozen", past_step=stopped.step)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        jobs.close(timeout=1.0)
        assert time.monotonic() - started < ANSWER_GUARD
        assert gone(pid)
    finally:
        jobs.close()
    record = json.loads((tmp_path / "jobs" / "frozen" / "queue.json").read_text())
    assert record["state"] == "running"  # killed by the close: queued again at the next start


def test_a_job_naps_while_interactive_work_waits(tmp_path: Path, root: Path) -> None:
    pairs = [(root / "in.1001.exr", root / "gt.1001.exr")]
    waiting = threading.Event()
    jobs = TrainingJobs(
        tmp_path / "jobs", busy=waiting.is_set, limits=JobLimits(data_roots=(root,))
    )
    try:
        settings = {**SETTINGS, "steps": 100_000, "checkpoint_interval": 0}
        jobs.submit("polite", pairs, TrainingSettings.from_dict(settings))
        training_process(jobs, "polite", past_step=0)
        waiting.set()
        time.sleep(MAX_YIELD_SECONDS)  # the step under way ends, then its process naps
        start, started = jobs.status("polite").step, time.monotonic()
        time.sleep(3 * MAX_YIELD_SECONDS)
        napped = jobs.status("polite").step - start
        seconds = time.monotonic() - started
        # At most one step per nap (and one more under way), however fast the steps are.
        assert napped <= seconds / MAX_YIELD_SECONDS + 2, (napped, seconds)
        waiting.clear()
        training_process(jobs, "polite", past_step=start + napped + 10)  # goes on at once
    finally:
        jobs.close()
