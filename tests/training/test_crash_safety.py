"""A training process killed with SIGKILL loses at most one interval and no checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from frameserve.training import Trainer, list_checkpoints, load_trained
from frameserve.training.checkpoints import load_checkpoint
from tests.support.paths import REPO
from tests.training.helpers import small_pairs

REPO_ROOT = REPO
INTERVAL = 2

CHILD = textwrap.dedent(
    f"""
    import sys
    from frameserve.training import Trainer
    from tests.training.helpers import fast_settings, small_pairs

    settings = fast_settings(steps=1_000_000, checkpoint_interval={INTERVAL})
    trainer = Trainer(small_pairs(), settings, job_dir=sys.argv[1],
                      on_progress=lambda p: print(p.step, flush=True))
    trainer.run()
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_job_leaves_readable_checkpoints_and_resumes(tmp_path: Path) -> None:
    job = tmp_path / "job"
    environment = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}{os.pathsep}{REPO_ROOT}"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(job)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
    )
    assert child.stdout is not None
    last_step = 0
    deadline = time.monotonic() + 60
    try:
        while last_step < 25 and time.monotonic() < deadline:  # checkpoints keep coming
            line = child.stdout.readline()
            if not line:
                break
            last_step = int(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-step, often mid-write
        child.wait(timeout=30)
        rest = child.stdout.read().split()  # steps reported before the kill, still in the pipe
        child.stdout.close()
    last_step = max([last_step, *map(int, rest)])
    assert child.returncode == -signal.SIGKILL
    assert last_step >= 25, "the child did not train"

    saved = list_checkpoints(job)
    assert saved, "no checkpoint survived"
    for entry in saved:  # every complete file reads back
        assert load_checkpoint(entry.path)["step"] == entry.step
    assert saved[-1].step >= last_step - INTERVAL  # at most one interval lost
    network, metadata = load_trained(job)
    assert metadata.step == saved[-1].step and network is not None

    resumed = Trainer.resume(job, small_pairs())
    assert resumed.step_count == saved[-1].step
    resumed.run(3)
    assert list_checkpoints(job)[-1].step == saved[-1].step + 3
    assert not list((job / "checkpoints").glob(".*tmp*"))
