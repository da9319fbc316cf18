"""``python -m frameserve run`` as a real command: exit statuses, messages, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.builtin_models.blur.model import gaussian_blur
from frameserve.cli.run import TERMINATED_EXIT_CODE
from frameserve.media.imageio import read_image, write_image
from tests.shots.plates import (
    Plates,
    output,
)
from tests.support.paths import REPO


def test_command_line(plates: Plates, tmp_path: Path) -> None:
    (plates.folder / "plate.1005.exr").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("FRAMESERVE_MODELS", None)
    base = [sys.executable, "-m", "frameserve", "run", "blur", "--input", plates.pattern]
    good = [*base, "--output", str(tmp_path / "soft.####.exr"), "--frames", "1001-1004"]
    bad = [*base, "--output", str(tmp_path / "bad.####.exr"), "--frames", "1001-1005"]
    started = [
        subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for args in ([*good, "--knob", "size=2"], bad)
    ]
    good_err, bad_err = (process.communicate(timeout=120)[1] for process in started)
    good_code, bad_code = (process.returncode for process in started)
    assert good_code == 0, good_err
    assert "done: 4 frames: 4 written" in good_err
    expected = gaussian_blur(torch.from_numpy(plates.pixels[1004]), 2.0).numpy()
    np.testing.assert_allclose(
        read_image(output(tmp_path, 1004, "soft")).pixels, expected, atol=1e-6
    )
    assert bad_code == 2
    assert "frameserve run: 1 input file(s) missing for 1 frame(s) (1005)" in bad_err
    assert "Traceback" not in bad_err
    assert not list(tmp_path.glob("bad.*"))


# -- stopped and killed runs -------------------------------------------------------------------

BIG = 512  # frames big enough that writing one takes a while: time to catch a run mid-write
BIG_FRAMES = 6


@pytest.fixture
def big_plates(tmp_path: Path) -> str:
    """``big.1001-1006.exr``: 512x512 RGB float frames of noise."""
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for frame in range(1001, 1001 + BIG_FRAMES):
        write_image(folder / f"big.{frame}.exr", rng.random((3, BIG, BIG), dtype=np.float32))
    return str(folder / "big.####.exr")


def start_run(pattern: str, out: Path) -> subprocess.Popen[str]:
    """Start ``frameserve run identity`` over the big plates into ``out``, one frame at a time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("FRAMESERVE_MODELS", None)
    command = [sys.executable, "-m", "frameserve", "run", "identity", "--input", pattern]
    command += ["--output", str(out / "o.####.exr"), "--jobs", "1", "--device", "cpu"]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, cwd=out.parent)


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp-*")) if folder.is_dir() else []


def stopped(process: subprocess.Popen[str]) -> None:
    """Wait until every thread of ``process`` has stopped after a SIGSTOP."""
    tasks = Path(f"/proc/{process.pid}/task")
    if not tasks.is_dir():
        time.sleep(0.5)  # no /proc: give the stop time to reach every thread
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):
                states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)
    raise AssertionError("the run did not stop")


def stop_mid_write(process: subprocess.Popen[str], out: Path) -> Path:
    """Stop ``process`` (SIGSTOP) while it holds a temporary file in ``out``; return the file."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it was caught writing"
        if temporaries(out):
            process.send_signal(signal.SIGSTOP)
            stopped(process)
            caught = temporaries(out)
            if caught:
                return caught[0]
            process.send_signal(signal.SIGCONT)
        time.sleep(0.0005)
    raise AssertionError("the run was never caught writing a frame")


def written_frames(out: Path) -> list[str]:
    """The visible files in ``out``, each checked to be a whole frame."""
    found = sorted(path.name for path in out.iterdir() if not path.name.startswith("."))
    for name in found:
        assert read_image(out / name).hwc.shape == (BIG, BIG, 3)
    return found


def test_sigterm_stops_the_run_and_removes_the_file_it_was_writing(
    big_plates: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = start_run(big_plates, out)
    caught = stop_mid_write(run, out)
    run.send_signal(signal.SIGTERM)
    run.send_signal(signal.SIGCONT)
    _, errors = run.communicate(timeout=120)
    assert run.returncode == TERMINATED_EXIT_CODE == 143, errors
    assert "frameserve run: interrupted: 6 frames:" in errors
    assert "Traceback" not in errors
    assert not caught.exists()
    assert temporaries(out) == []
    assert len(written_frames(out)) < BIG_FRAMES


def test_a_killed_run_leaves_a_temporary_file_that_the_next_run_removes(
    big_plates: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = start_run(big_plates, out)
    caught = stop_mid_write(run, out)
    run.send_signal(signal.SIGKILL)  # no chance to clean up
    run.communicate(timeout=120)
    assert caught.exists()
    done = written_frames(out)
    assert len(done) < BIG_FRAMES

    again = start_run(big_plates, out)
    _, errors = again.communicate(timeout=300)
    assert again.returncode == 0, errors
    skipped = f", {len(done)} skipped (outputs exist)" if done else ""
    assert f"{BIG_FRAMES - len(done)} written{skipped} in" in errors
    assert temporaries(out) == []
    assert len(written_frames(out)) == BIG_FRAMES
