"""Training jobs on a real local Ray cluster: each run a Ray task on the node it asks for.

One server with ``--ray auto`` on the session's cluster (``conftest.py``: a head with
``node_a`` and a second node with ``node_b``, started with ``ray start``) is shared by the
module; its deployment file's ``[training]`` asks for ``node_b``. Jobs are tiny (two 40x48
pairs, the small network, a checkpoint every two steps) and reached over HTTP, as a client
does. Each run starts a Ray worker of its own (it imports torch: seconds on a 2-core machine),
so the tests start as few runs as they can. Ray is a test extra: these fail, never skip,
without it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frameserve.engine.cluster.connect import import_ray
from frameserve.engine.cluster.deployments import TrainingResources, load_deployments
from frameserve.errors import ConfigError
from frameserve.serve.server import FrameServer
from frameserve.training.checkpoints import CONTACT_SHEET_FOLDER, load_checkpoint
from frameserve.training.inference import model_id_for
from frameserve.training.jobs import TrainingJobs
from frameserve.training.jobs.cluster import ClusterTraining
from frameserve.training.jobs.process import MAX_YIELD_SECONDS
from tests.support.model_folders import frame, http_infer, write_file
from tests.support.ray_cluster import RayCluster
from tests.support.servers import start_server
from tests.training.helpers import (
    api,
    fast_settings,
    job_of,
    small_pairs,
    submit_long_job,
    wait_for_state,
    write_pairs,
)

#: Ray starts a task's worker (importing torch) in seconds; waits on the cluster get this long.
CLUSTER_GUARD = 90.0
#: A job that would train for hours, with a checkpoint every two steps.


@pytest.fixture(scope="module")
def folder(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's files: frames in a data root; jobs run on ``ray_cluster``."""
    root = tmp_path_factory.mktemp("training_on_ray")
    (root / "frames").mkdir()
    write_pairs(root / "frames", 3)
    return root


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[FrameServer]:
    """A server whose training jobs run as Ray tasks on ``node_b``."""
    plan = folder / "deployments.toml"
    write_file(plan, "[training]\nnum_cpus = 0.5\nresources = { node_b = 1 }\n")
    server = start_server(
        model_folders=(),
        builtin_models=False,
        ray_address="auto",
        ray_deployments=plan,
        reload_interval=None,
        jobs_folder=folder / "jobs",  # on storage every node shares: this machine's disk
        data_roots=(folder / "frames",),
    )
    try:
        yield server
    finally:
        server.close()


def node_with(resource: str) -> str:
    """The id of the Ray node that advertises ``resource``."""
    ray, _ = import_ray()
    (node,) = [n for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]
    return str(node["NodeID"])


def wait_for(server: FrameServer, name: str, *states: str) -> dict[str, Any]:
    """Job ``name``'s status once it is in one of ``states`` (Ray may take a while)."""
    return wait_for_state(server, name, *states, timeout=CLUSTER_GUARD)


def training_task(server: FrameServer, name: str, *, past_step: int) -> int:
    """Wait until job ``name`` has done more than ``past_step`` steps; return the process id
    of its Ray task's worker."""
    deadline = time.monotonic() + CLUSTER_GUARD
    while True:
        status, pid = server.jobs.status(name), server.jobs.process_id(name)
        assert status.state in ("queued", "running"), status
        if pid is not None and status.step > past_step:
            return pid
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def test_a_job_trains_on_its_node_cancels_resumes_and_is_served(
    server: FrameServer, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="frameserve.training.jobs.cluster")
    submit_long_job(server, folder / "frames", "on_b")
    pid = training_task(server, "on_b", past_step=4)
    assert pid != os.getpid()  # a Ray worker, not the server
    said = [r.getMessage() for r in caplog.records if "runs on Ray node" in r.getMessage()]
    assert said and f"node {node_with('node_b')} " in said[-1] and f"pid {pid}" in said[-1], said
    running = job_of(server, "on_b")
    assert running["state"] == "running" and running["loss"] is not None, running
    assert running["device"] == "cpu"

    # Interactive work waiting on the gateway: the task naps after each step (at most
    # MAX_YIELD_SECONDS), so it gains about one step a second instead of dozens.
    server.jobs.busy = lambda: True
    try:
        time.sleep(0.5)  # the flag reaches the task within a step
        before = server.jobs.status("on_b").step
        time.sleep(2.0)
        napping = server.jobs.status("on_b").step - before
    finally:
        server.jobs.busy = lambda: False
    assert napping <= 2.0 / MAX_YIELD_SECONDS + 1, napping
    before = server.jobs.status("on_b").step
    time.sleep(1.0)
    assert server.jobs.status("on_b").step - before > napping  # awake again

    status, stopped = api(server, "POST", "/v2/training/jobs/on_b/cancel")
    assert status == 200, stopped
    stopped = wait_for(server, "on_b", "cancelled", "failed")
    assert stopped["state"] == "cancelled" and stopped["error"] is None, stopped
    saved = int(stopped["checkpoints"][-1].removeprefix("step_"))
    assert saved == stopped["step"] and saved > 4, stopped  # a checkpoint of the last step
    job = server.jobs.folder / "on_b"
    assert (job / "losses.jsonl").is_file() and list((job / CONTACT_SHEET_FOLDER).glob("*.png"))

    status, resumed = api(server, "POST", "/v2/training/jobs/on_b/resume", {"steps": saved + 3})
    assert status == 200, resumed
    done = wait_for(server, "on_b", "done", "failed")
    assert done["state"] == "done" and done["error"] is None, done
    assert done["step"] == saved + 3
    steps = [int(name.removeprefix("step_")) for name in done["checkpoints"]]
    assert saved in steps and steps[-1] == saved + 3  # went on from the shared checkpoint
    last = load_checkpoint(job / "checkpoints" / f"step_{saved + 3}.pt")
    first = load_checkpoint(job / "checkpoints" / f"step_{saved}.pt")
    assert last["elapsed_seconds"] > first["elapsed_seconds"]  # training time adds up

    image = frame(4, height=40, width=48)
    code, answer = http_infer(server, model_id_for("on_b"), image)  # served on the gateway
    assert code == 200, answer
    assert answer[1].shape == image.shape and np.isfinite(answer[1]).all()


def test_a_job_whose_ray_worker_is_killed_fails_naming_it_and_resumes(
    server: FrameServer, folder: Path
) -> None:
    submit_long_job(server, folder / "frames", "victim")
    pid = training_task(server, "victim", past_step=4)
    os.kill(pid, signal.SIGKILL)
    failed = wait_for(server, "victim", "failed")
    error = failed["error"]
    assert f"its Ray training task (pid {pid} on node {node_with('node_b')}" in error, error
    assert "died" in error, error
    saved = int(failed["checkpoints"][-1].removeprefix("step_"))
    assert saved >= 4 and failed["step"] == saved, failed  # the steps after it are lost
    assert f"go on from its last checkpoint (step {saved})" in error, error
    assert server.jobs.process_id("victim") is None

    status, resumed = api(server, "POST", "/v2/training/jobs/victim/resume", {"steps": saved + 2})
    assert status == 200, resumed
    done = wait_for(server, "victim", "done", "failed")
    assert done["state"] == "done" and done["error"] is None, done
    assert done["step"] == saved + 2


def test_the_training_table_sizes_each_task_and_refuses_what_it_does_not_know(
    tmp_path: Path,
) -> None:
    plan = tmp_path / "deployments.toml"
    write_file(plan, "[training]\nnum_cpus = 2\nresources = { a100 = 1 }\n")
    training = load_deployments(plan).training
    assert training.task_options("cuda:1") == {
        "num_cpus": 2.0,
        "num_gpus": 1.0,  # a job on a GPU reserves one unless the table says otherwise
        "resources": {"a100": 1.0},
    }
    assert training.task_options("cpu")["num_gpus"] == 0.0
    assert TrainingResources(num_gpus=0.5).task_options("cuda")["num_gpus"] == 0.5
    assert load_deployments(None).training == TrainingResources()
    for text, message in (
        ("[training]\nnum_gpu = 1\n", "unknown key(s) num_gpu; allowed: num_cpus, num_gpus"),
        ("[training]\nnum_cpus = -1\n", "[training]: num_cpus and num_gpus must be 0 or more"),
        ("[training]\nmin_replicas = 2\n", "unknown key(s) min_replicas"),
    ):
        write_file(plan, text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_deployments(plan)


def test_a_job_no_node_can_take_waits_in_ray_and_a_cancel_ends_it_at_once(
    ray_cluster: RayCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="frameserve.training.jobs.cluster")
    nowhere = TrainingResources(num_cpus=0.1, resources=(("node_c", 1.0),))
    jobs = TrainingJobs(tmp_path / "jobs", cluster=ClusterTraining(nowhere))
    try:
        jobs.submit("waiting", small_pairs(), fast_settings(steps=50))
        time.sleep(1.0)
        status = jobs.status("waiting")
        assert status.state == "running" and status.step == 0, status  # its task waits in Ray
        assert jobs.process_id("waiting") is None
        said = [r.getMessage() for r in caplog.records]
        assert any("asks for {'CPU': 0.1, 'node_c': 1.0}, which no node" in m for m in said), said
        started = time.monotonic()
        cancelled = jobs.cancel("waiting", wait=CLUSTER_GUARD)
        assert cancelled.state == "cancelled" and cancelled.error is None, cancelled
        assert time.monotonic() - started < 5.0  # not a stop grace: it had nothing to save
        assert cancelled.checkpoints == ()
    finally:
        jobs.close()


def test_a_node_that_cannot_see_the_jobs_folder_fails_the_job_saying_so(
    server: FrameServer, folder: Path
) -> None:
    submit_long_job(server, folder / "frames", "unshared")
    # As a node sees a jobs folder that is not shared: without the job.json the gateway wrote
    # (its task takes seconds to start a worker, long after this).
    (server.jobs.folder / "unshared" / "job.json").unlink()
    failed = wait_for(server, "unshared", "failed")
    error = failed["error"]
    assert f"the job folder {str(server.jobs.folder / 'unshared')!r} is not on node" in error
    assert "--jobs-folder) must be on storage every node of the cluster shares" in error, error
    assert (
        failed["checkpoints"] == []
        and not (server.jobs.folder / "unshared" / "checkpoints").exists()
    )
