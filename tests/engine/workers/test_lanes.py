"""The scheduler over each host: a hung model holds its own turns only; sys.exit kills no thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frameserve.engine.runner import Runner
from frameserve.engine.scheduler import Scheduler
from frameserve.errors import ModelRunError
from tests.engine.workers.lab import (
    HANG_GUARD,
    constant,
    open_host,
    request,
    values,
    wait_until,
)


def test_a_model_holding_every_turn_of_its_own_leaves_other_models_theirs(
    tmp_path: Path,
) -> None:
    registry, host, _ = open_host(tmp_path / "models")
    scheduler = Scheduler(host, workers=1, batch_workers=1)
    gate = tmp_path / "release"
    try:
        scheduler.submit(request(registry, "double", constant(1.0))).result(HANG_GUARD)
        held = scheduler.submit(request(registry, "hold", constant(1.0), until=str(gate)))
        wait_until(lambda: Path(f"{gate}.started").exists(), what="the hold to start")
        queued = scheduler.submit(request(registry, "hold", constant(2.0), until=str(gate)))
        for value in (2.0, 3.0):  # its one interactive turn is taken: others still run
            result = scheduler.submit(request(registry, "double", constant(value)))
            assert np.all(values(result.result(HANG_GUARD)) == 2 * value)
        assert not held.done() and not queued.done()
        gate.touch()
        assert np.all(values(held.result(HANG_GUARD)) == 1.0)
        assert np.all(values(queued.result(HANG_GUARD)) == 2.0)
    finally:
        gate.touch()
        scheduler.close()
        host.close()


def test_in_process_a_plugin_calling_sys_exit_fails_its_request_and_the_thread_lives(
    tmp_path: Path,
) -> None:
    registry, host, _ = open_host(tmp_path / "models")
    host.close()  # only its registry is needed: this scheduler runs models in-process
    scheduler = Scheduler(Runner(registry), workers=1, batch_workers=1)
    try:
        failed = scheduler.submit(request(registry, "crash", constant(1.0), how="exit"))
        with pytest.raises(ModelRunError, match=r"model 'crash' failed: it raised SystemExit\(3\)"):
            failed.result(HANG_GUARD)
        after = scheduler.submit(request(registry, "double", constant(4.0)))
        assert np.all(values(after.result(HANG_GUARD)) == 8.0)  # the one worker thread lives
    finally:
        scheduler.close()
