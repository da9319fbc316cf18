"""``frameserve train / jobs / cancel / resume / export`` against a real server on loopback.

Every command runs in-process through :func:`frameserve.cli.main.main` and talks HTTP to the server;
the MLClient door is checked with the node's own framing (:mod:`tests.support.node_client`).
Jobs are tiny (40x48 frames, 32-pixel crops, a few steps) so each test takes seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.main import main
from frameserve.client import Client, ConflictError, TrainingJob
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.media.imageio import read_image, write_image
from frameserve.serve.server import FrameServer
from tests.support.node_client import NodeClient, decode_image
from tests.support.servers import start_server
from tests.training.helpers import SETTINGS, write_pairs

FLAGS = [f"--setting={name}={value}" for name, value in SETTINGS.items()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrameServer]:
    folder = tmp_path_factory.mktemp("cli_train")
    running = start_server(
        jobs_folder=folder / "jobs",
        reload_interval=None,
        device="cpu",
        data_roots=(tmp_path_factory.getbasetemp(),),  # the frames these tests name by path
    )
    yield running
    running.close()


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``in.1001-1003.exr`` and ``gt.1001-1003.exr`` (a gain and offset to learn)."""
    folder = tmp_path_factory.mktemp("frames")
    write_pairs(folder, 3)
    return folder


def train_args(server: FrameServer, frames: Path, name: str, steps: int) -> list[str]:
    return [
        "train", "--server", server.http_url, "--name", name, "--steps", str(steps),
        "--input", str(frames / "in.####.exr"), "--target", str(frames / "gt.####.exr"),
        "--frames", "1001,1002", *FLAGS,
    ]  # fmt: skip


def wait_until(client: Client, name: str, ready: str) -> TrainingJob:
    """Poll job ``name`` until ``ready`` holds: 'running', 'stepping' (running, a step done)
    or 'checkpoint' (one saved)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.training.job(name)
        if (
            (ready == "checkpoint" and job.checkpoints)
            or (ready == "stepping" and job.state == "running" and job.step > 0)
            or job.state == ready
        ):
            return job
        assert not job.finished, job
        time.sleep(0.05)
    raise AssertionError(f"job {name} never got {ready}")


def test_train_follow_then_run_list_and_export(
    server: FrameServer, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = train_args(server, frames, "follow", 6)
    assert main([*args, "--validation-frames", "1003", "--follow"]) == 0
    printed = capsys.readouterr()
    assert "submitted job 'follow' (6 steps on cpu)" in printed.out
    assert "job 'follow': done at step 6/6" in printed.out
    assert "[####################] 6/6" in printed.err and "val " in printed.err

    # The job is a model: frameserve run takes it over the sequence on the server.
    outputs = tmp_path / "out.####.exr"
    assert main([
        "run", "follow", "--server", server.http_url, "--input", str(frames / "in.####.exr"),
        "--output", str(outputs), "--frames", "1001-1003",
    ]) == 0  # fmt: skip
    written = read_image(tmp_path / "out.1003.exr").pixels
    assert written.shape == (3, 40, 48)

    assert main(["jobs", "--server", server.http_url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["NAME", "STATE", "STEP", "LOSS"]
    row = next(line.split() for line in table if line.startswith("follow "))
    assert row[1:3] == ["done", "6/6"] and row[-1] == "cpu"
    assert main(["jobs", "--server", server.http_url, "--json"]) == 0
    listed = {job["name"]: job for job in json.loads(capsys.readouterr().out)}
    assert listed["follow"]["state"] == "done" and listed["follow"]["validation_loss"] > 0
    assert listed["follow"]["checkpoints"] == ["step_4", "step_6"]

    # Exported from the server as a package, it gives the served model's pixels.
    package = tmp_path / "models" / "follow_pkg"
    export = ["export", "follow", "--server", server.http_url, "--out", str(package)]
    assert main([*export, "--id", "follow_pkg", "--format", "pt"]) == 0
    assert "follow_pkg 1.0.0" in capsys.readouterr().out
    runner = Runner(ModelRegistry([tmp_path / "models"], builtins=False), device="cpu")
    spec = runner.registry.get("follow_pkg").spec
    assert spec is not None
    packaged = runner.run(build_request(spec, [torch.from_numpy(written)], {})).frames["image"]
    with Client(server.http_url) as client:
        served = client.infer("follow", written.transpose(1, 2, 0)).frame
    np.testing.assert_allclose(packaged.numpy().transpose(1, 2, 0), served, rtol=0, atol=1e-5)
    assert main(export) == 2  # the folder exists: --force replaces it
    assert "already exists" in capsys.readouterr().err


def test_cancel_and_resume_from_the_command_line(
    server: FrameServer, frames: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(train_args(server, frames, "stoppable", 100000)) == 0
    with Client(server.http_url) as client:
        wait_until(client, "stoppable", "stepping")  # a cancel then leaves a checkpoint
        started = time.monotonic()
        assert main(["cancel", "stoppable", "--server", server.http_url]) == 0
        assert time.monotonic() - started < 3.0  # stops before its next step
        stopped = client.training.job("stoppable")
    assert stopped.state == "cancelled" and stopped.checkpoints, stopped
    assert f"cancelled at step {stopped.step}/100000" in capsys.readouterr().out
    assert main(["cancel", "stoppable", "--server", server.http_url]) == 1
    assert "not running" in capsys.readouterr().err
    target = str(stopped.step + 3)
    command = ["resume", "stoppable", "--server", server.http_url, "--steps", target]
    assert main([*command, "--follow"]) == 0
    assert f"done at step {target}/{target}" in capsys.readouterr().out


def test_upload_flag_and_the_hint_without_it(
    server: FrameServer, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*train_args(server, frames, "sent", 2), "--upload", "--follow"]) == 0
    printed = capsys.readouterr()
    assert "uploading 4/4: gt.1002.exr" in printed.err
    kept = sorted(p.name for p in (server.jobs.job_folder("sent") / "frames").glob("*/*"))
    assert kept == ["gt.1001.exr", "gt.1002.exr", "in.1001.exr", "in.1002.exr"]
    missing = train_args(server, tmp_path, "unseen", 2)  # no frames there
    assert main(missing) == 1
    error = capsys.readouterr().err
    assert "cannot read image" in error and "pass --upload" in error
    with Client(server.http_url) as client:
        assert "unseen" not in [job.name for job in client.training.jobs()]


def test_flags_that_do_not_fit_exit_2(
    server: FrameServer, frames: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = train_args(server, frames, "bad", 2)
    for extra, problem in [
        (["--labels", str(frames)], "not several"),
        (["--validation", str(frames)], "--validation-frames"),
        (["--setting", "crop_size"], "NAME=VALUE"),
    ]:
        assert main([*base, *extra]) == 2
        assert problem in capsys.readouterr().err
    assert main(["train", "--name", "x", "--input", "a.####.exr", "--local"]) == 2
    assert "--target, --frames" in capsys.readouterr().err


def test_node_lists_and_runs_a_job_while_it_trains(server: FrameServer, frames: Path) -> None:
    assert main(train_args(server, frames, "live", 100000)) == 0
    node = NodeClient(*server.mlclient_address, timeout=30.0)
    frame = read_image(frames / "in.1001.exr").pixels
    try:
        with Client(server.http_url) as client:
            wait_until(client, "live", "checkpoint")
            model = node.model("live")  # listed to the node while the job runs
            assert client.training.job("live").state == "running"
            reply = node.infer(model, [frame])
            assert not reply.HasField("error"), reply.error.msg
            result = decode_image(reply.r2.images[0])
            assert result.shape == frame.shape and np.isfinite(result).all()
            assert not np.allclose(result, frame)
            with pytest.raises(ConflictError, match="cancel it"):
                client.training.delete("live")  # running: not to be deleted
    finally:
        with Client(server.http_url) as client:
            client.training.cancel("live")


def write_labelled(folder: Path) -> Path:
    """``shots/day`` (bright) and ``shots/night`` (dark) 16x16 PNGs."""
    rng = np.random.default_rng(2)
    for label, level in (("day", 0.8), ("night", 0.1)):
        (folder / label).mkdir(parents=True)
        for index in range(2):
            pixels = np.clip(level + 0.1 * rng.standard_normal((3, 16, 16)), 0, 1)
            write_image(folder / label / f"{index}.png", pixels.astype(np.float32))
    return folder


def test_label_jobs_on_the_server_and_locally(
    server: FrameServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shots = write_labelled(tmp_path / "shots")
    flags = ["--setting", "crop_size=16", "--setting", "batch_size=2"]
    remote = ["train", "--server", server.http_url, "--name", "daynight", "--labels", str(shots)]
    assert main([*remote, "--steps", "3", *flags, "--follow"]) == 0
    capsys.readouterr()
    node = NodeClient(*server.mlclient_address, timeout=30.0)
    image = read_image(shots / "day" / "0.png").pixels
    reply = node.infer(node.model("daynight"), [image], press="show")
    assert [obj.name for obj in reply.r2.objects] == ["PythonScript", "label"]
    local = ["train", "--local", "--name", "counted", "--labels", str(shots), "--steps", "2"]
    assert main([*local, *flags, "--jobs-folder", str(tmp_path / "jobs")]) == 0
    assert (tmp_path / "jobs" / "counted" / "checkpoints" / "step_2.pt").is_file()
