"""A job trained with ``frameserve train --local`` is a model everywhere, as the README says.

``frameserve models``, ``infer`` and ``run --local`` list and run the jobs of the jobs folder
(``--jobs-folder``) exactly as a server serves them; a server started on that folder serves the
job too. Everything here runs the real commands on real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frameserve.cli.main import main
from frameserve.client import Client
from frameserve.media.imageio import read_image
from tests.support.servers import start_server
from tests.training.helpers import SETTINGS, write_pairs

FLAGS = [f"--setting={name}={value}" for name, value in SETTINGS.items()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A jobs folder holding ``my_fix`` (trained here, 3 steps), and its frames."""
    frames = tmp_path_factory.mktemp("frames")
    write_pairs(frames, 3)
    jobs = tmp_path_factory.mktemp("jobs")
    command = [
        "train", "--local", "--name", "my_fix", "--steps", "3", "--jobs-folder", str(jobs),
        "--input", str(frames / "in.####.exr"), "--target", str(frames / "gt.####.exr"),
        "--frames", "1001,1002", *FLAGS,
    ]  # fmt: skip
    assert main(command) == 0
    return jobs, frames


def test_models_lists_the_local_job_with_its_checkpoint_knob(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, _ = trained
    capsys.readouterr()
    assert main(["models", "--jobs-folder", str(jobs), "--json", "--no-builtins"]) == 0
    [entry] = [e for e in json.loads(capsys.readouterr().out) if e["id"] == "my_fix"]
    assert entry["error"] is None and entry["source"] == "training job my_fix"
    assert entry["knobs"][0]["name"] == "checkpoint"
    # another jobs folder: no such model
    assert main(["models", "--jobs-folder", str(jobs / "nowhere"), "--json"]) == 0
    assert "my_fix" not in {e["id"] for e in json.loads(capsys.readouterr().out)}


def test_infer_run_and_a_server_give_the_same_pixels(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    jobs, frames = trained
    source = frames / "in.1003.exr"
    assert main(["infer", "my_fix", str(source), str(tmp_path / "infer.exr"),
                 "--jobs-folder", str(jobs)]) == 0  # fmt: skip
    inferred = read_image(tmp_path / "infer.exr").pixels
    run = ["run", "my_fix", "--input", str(frames / "in.####.exr"), "--frames", "1003"]
    assert main([*run, "--output", str(tmp_path / "run.####.exr"), "--jobs-folder", str(jobs)]) == 0
    ran = read_image(tmp_path / "run.1003.exr").pixels
    np.testing.assert_allclose(ran, inferred, rtol=0, atol=1e-6)
    assert not np.allclose(inferred, read_image(source).pixels, atol=1e-3)  # it did something
    server = start_server(jobs_folder=jobs)
    try:
        with Client(server.http_url) as client:
            served = client.infer("my_fix", read_image(source).pixels.transpose(1, 2, 0)).frame
    finally:
        server.close()
    np.testing.assert_allclose(served.transpose(2, 0, 1), inferred, rtol=0, atol=1e-5)
