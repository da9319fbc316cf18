"""Workers that hang, die or grow: timeouts, crashes, restarts, the failed state, memory caps.

The lab models (tests/engine/workers/lab.py) misbehave on request. The host allows two crashes
within a minute (``max_crashes=2``); every wait is bounded by :data:`HANG_GUARD`.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.metrics import Metrics
from frameserve.engine.workers.host import ModelState
from frameserve.engine.workers.processes import ProcessHost
from frameserve.errors import ModelCrashedError, ModelLoadError, ModelTimeoutError
from tests.engine.workers.lab import (
    HANG_GUARD,
    constant,
    frame_mappings,
    open_host,
    process_gone,
    request,
    values,
    wait_until,
)
from tests.support.scheduling import parse_metrics

Lab = tuple[ModelRegistry, ProcessHost, Metrics]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    opened = open_host(tmp_path_factory.mktemp("lab"))
    yield opened
    opened[1].close()


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    return parse_metrics(metrics.render()).value(name, **labels)


def ready_again(host: ProcessHost, registry: ModelRegistry, model: str) -> None:
    entry = registry.get(model)
    wait_until(lambda: host.status(entry).state is ModelState.READY, what=f"{model} restarted")


# -- timeouts ----------------------------------------------------------------------------------


def test_a_call_past_its_timeout_fails_and_the_worker_is_replaced(lab: Lab) -> None:
    registry, host, metrics = lab
    first = host.run(request(registry, "sleeper", constant(1.0)))
    started = time.monotonic()
    with pytest.raises(ModelTimeoutError, match=r"model 'sleeper' ran past its timeout of 1 s"):
        host.run(request(registry, "sleeper", constant(1.0), seconds=30.0))
    assert time.monotonic() - started < HANG_GUARD
    wait_until(lambda: process_gone(first.worker), what="the stuck worker to be killed")
    after = host.run(request(registry, "sleeper", constant(1.0)))
    assert after.worker != first.worker
    assert counted(metrics, "frameserve_model_timeouts_total", model="sleeper") == 1
    assert (
        counted(metrics, "frameserve_worker_restarts_total", model="sleeper", reason="timeout") == 1
    )
    assert (
        counted(metrics, "frameserve_worker_crashes_total", model="sleeper", reason="timeout") == 0
    )


def test_every_call_the_stopped_worker_held_gets_a_timeout(lab: Lab) -> None:
    registry, host, _ = lab
    ready_again(host, registry, "sleeper")
    errors: list[BaseException] = []

    def call(seconds: float) -> None:
        try:
            host.run(request(registry, "sleeper", constant(1.0), seconds=seconds))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(s,)) for s in (30.0, 20.0)]
    threads[0].start()
    time.sleep(0.5)  # the second call's own timeout would end it after the first's
    threads[1].start()
    for thread in threads:
        thread.join(HANG_GUARD)
    assert len(errors) == 2 and all(isinstance(e, ModelTimeoutError) for e in errors)
    assert any("its worker was stopped: a request on it ran past" in str(e) for e in errors)


def test_a_deadline_tighter_than_the_timeout_ends_the_call(lab: Lab) -> None:
    registry, host, _ = lab
    ready_again(host, registry, "sleeper")
    deadline = time.monotonic() + 0.3
    with pytest.raises(ModelTimeoutError, match=r"'sleeper' ran past the request's deadline"):
        host.run(request(registry, "sleeper", constant(1.0), seconds=0.9, deadline=deadline))
    assert time.monotonic() < deadline + 0.6


# -- crashes -----------------------------------------------------------------------------------


def test_a_segfault_fails_the_call_naming_the_signal_and_a_new_worker_starts(lab: Lab) -> None:
    registry, host, metrics = lab
    with pytest.raises(ModelCrashedError) as caught:
        host.run(request(registry, "crash", constant(1.0), how="segv"))
    assert str(caught.value) == (
        "model 'crash' crashed: its worker was killed by signal 11 (SIGSEGV)"
    )
    assert caught.value.worker is not None and process_gone(caught.value.worker)
    ready_again(host, registry, "crash")
    assert counted(metrics, "frameserve_worker_crashes_total", model="crash", reason="signal") == 1
    assert counted(metrics, "frameserve_worker_restarts_total", model="crash", reason="signal") == 1
    assert host.run(request(registry, "crash", constant(1.0))).worker != caught.value.worker


def test_max_crashes_in_the_window_mark_the_model_failed_until_reset(lab: Lab) -> None:
    registry, host, _ = lab
    entry = registry.get("crash")
    with pytest.raises(
        ModelCrashedError, match=r"exited with code 3 \(the model raised SystemExit\(3\)\)"
    ):
        host.run(request(registry, "crash", constant(1.0), how="exit"))
    status = host.status(entry)
    assert status.state is ModelState.FAILED and not status.ready
    assert status.error is not None and "died 2 times within 60 s" in status.error
    with pytest.raises(ModelLoadError, match="is marked failed"):
        host.run(request(registry, "crash", constant(1.0)))
    assert host.reset("crash") == ["model crash: cleared its failed state; it starts on demand"]
    assert host.status(entry).state is ModelState.IDLE
    assert np.all(values(host.run(request(registry, "crash", constant(2.0)))) == 2.0)


def test_an_abort_is_named_too(lab: Lab) -> None:
    registry, host, _ = lab
    with pytest.raises(ModelCrashedError, match=r"killed by signal 6 \(SIGABRT\)"):
        host.run(request(registry, "crash", constant(1.0), how="abort"))


def test_a_killed_workers_results_stay_valid_and_its_memory_goes_with_them(lab: Lab) -> None:
    registry, host, _ = lab
    kept = host.run(request(registry, "double", constant(3.0, height=64, width=64)))
    dead = kept.worker
    os.kill(dead, signal.SIGKILL)
    wait_until(
        lambda: host.status(registry.get("double")).worker not in (None, dead),
        what="a new double worker",
    )
    assert np.all(values(kept) == 6.0)
    gc.collect()
    mapped = frame_mappings()
    del kept  # the last use of the dead worker's output segment
    gc.collect()
    assert frame_mappings() == mapped - 1
    again = host.run(request(registry, "double", constant(1.0)))
    assert np.all(values(again) == 2.0)


# -- memory ------------------------------------------------------------------------------------


def test_a_worker_past_its_memory_limit_is_stopped(lab: Lab) -> None:
    registry, host, metrics = lab
    with pytest.raises(ModelCrashedError) as caught:
        host.run(request(registry, "hog", constant(1.0)))
    message = str(caught.value)
    assert message.startswith("model 'hog' crashed: its worker used ")
    used = int(message.split("used ")[1].split(" MiB")[0])
    assert used > 300  # what it held when it was stopped, in MiB
    assert "above its memory limit of 300 MiB" in message
    assert counted(metrics, "frameserve_worker_crashes_total", model="hog", reason="memory") == 1


# -- closing -----------------------------------------------------------------------------------


def test_closing_ends_every_worker_and_unmaps_every_segment(tmp_path: Path) -> None:
    gc.collect()
    before = frame_mappings()
    registry, host, _ = open_host(tmp_path)
    results = [host.run(request(registry, model, constant(1.0))) for model in ("double", "echo")]
    pids = [result.worker for result in results]
    host.close()
    assert all(process_gone(pid) for pid in pids)
    assert np.all(values(results[0]) == 2.0)  # a result held past the close stays valid
    del results
    gc.collect()
    assert frame_mappings() == before
