"""A plug-in that never returns: its timeout ends it, its worker is killed, others answer.

``loops`` declares ``timeout_s = 2``; the server's ``model_timeout`` (6 s here) bounds a model
that declares none, and a request's ``deadline_ms`` may be tighter still. The client gets a
timeout naming the model (HTTP 504), the worker is killed and restarted, and while ``loops``
is stuck, even with a request stuck on each door, identity and blur keep answering on both
doors. The server is ``tests/isolation/conftest.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from frameserve.serve.server import FrameServer
from tests.support.misbehaving import (
    DOORS,
    Doors,
    bring_back,
    metric,
    new_frame,
    ready_status,
    while_misbehaving,
)
from tests.support.model_folders import wait_for

#: The server's timeout for models that declare none.
MODEL_TIMEOUT = 6.0
SETTINGS = {"model_timeout": MODEL_TIMEOUT}
#: What ``loops`` declares.
LOOPS_TIMEOUT = 2.0
#: Time beyond a timeout for the answer to come back, a worker to start (torch imported) on
#: the first request, and the machine being busy: a bound against hanging, not a target.
SLACK = 10.0
#: A timeout error says so.
TIMED_OUT = r"time(d)? ?out"


def test_a_looping_plugin_times_out_and_its_worker_is_restarted(
    server: FrameServer, doors: Doors
) -> None:
    restarts = metric(server, "frameserve_worker_restarts_total", model="loops", reason="timeout")
    timeouts = metric(server, "frameserve_model_timeouts_total", model="loops")
    # The first request also waits for the worker to start (torch imported, then setup);
    # whether its time runs out there or in predict, it is a timeout naming the model.
    first = doors.call("http", "loops", new_frame())
    first.error_naming(504, "loops", TIMED_OUT)
    assert LOOPS_TIMEOUT * 0.9 <= first.seconds < LOOPS_TIMEOUT + SLACK, first.seconds
    assert metric(server, "frameserve_model_timeouts_total", model="loops") == timeouts + 1
    wait_for(
        lambda: (
            metric(server, "frameserve_worker_restarts_total", model="loops", reason="timeout")
            > restarts
        ),
        what="a new worker for loops",
        timeout=SLACK,
    )
    wait_for(lambda: ready_status(server, "loops") == 200, what="loops ready", timeout=SLACK)


def test_others_keep_answering_while_a_request_is_stuck_on_each_door(
    server: FrameServer, doors: Doors, served_by: Callable[[str], list[str]]
) -> None:
    wait_for(lambda: ready_status(server, "loops") == 200, what="loops ready", timeout=SLACK)
    timeouts = metric(server, "frameserve_model_timeouts_total", model="loops")
    restarts = metric(server, "frameserve_worker_restarts_total", model="loops", reason="timeout")
    # In-process, two stuck requests took every scheduler thread (two): every model on
    # both doors hung.
    stuck, probes = while_misbehaving(
        doors, [partial(doors.call, door, "loops", new_frame()) for door in DOORS]
    )
    for answer in stuck:
        answer.error_naming(504, "loops", TIMED_OUT)
        # Its worker was ready: it ran loops' whole timeout, then was answered (the second
        # may wait for the first's new worker).
        assert answer.seconds >= LOOPS_TIMEOUT * 0.9, f"ended after {answer.seconds:.2f} s"
        assert answer.seconds < 2 * LOOPS_TIMEOUT + SLACK, f"ended after {answer.seconds:.2f} s"
    assert min(answer.seconds for answer in stuck) < LOOPS_TIMEOUT + 2.0
    # The good models were checked while loops was stuck, not just after.
    assert min(probe.finished for probe in probes) < min(answer.finished for answer in stuck)
    counted = metric(server, "frameserve_model_timeouts_total", model="loops") - timeouts
    assert counted in (1, 2), counted  # 1 if both ran on one worker, stopped for the first
    # The stopped worker is replaced: the model is ready again.
    wait_for(
        lambda: (
            metric(server, "frameserve_worker_restarts_total", model="loops", reason="timeout")
            > restarts
        ),
        what="a new worker for loops",
        timeout=SLACK,
    )
    wait_for(lambda: ready_status(server, "loops") == 200, what="loops ready", timeout=SLACK)
    # The stuck requests' worker was stopped: the next request runs on another.
    assert doors.call("http", "loops", new_frame(), {"deadline_ms": 200}).status == 504
    wait_for(lambda: len(served_by("loops")) == 3, what="a log line per request")
    *stuck_on, next_on = served_by("loops")
    assert all(pid.isdigit() for pid in served_by("loops")), served_by("loops")
    assert next_on not in stuck_on, served_by("loops")


def test_a_deadline_tighter_than_the_timeout_ends_the_request_at_the_deadline(
    server: FrameServer, doors: Doors
) -> None:
    wait_for(lambda: ready_status(server, "loops") == 200, what="loops ready", timeout=SLACK)
    answer = doors.call("http", "loops", new_frame(), {"deadline_ms": 500})
    answer.error_naming(504, "loops")
    # Ended by its deadline (0.5 s), not by loops' own timeout (2 s).
    assert answer.seconds < LOOPS_TIMEOUT - 0.5, f"ended after {answer.seconds:.2f} s"


def test_the_server_timeout_bounds_a_model_that_declares_none(
    server: FrameServer, doors: Doors
) -> None:
    # slow declares no timeout_s: the server's model_timeout (6 s) ends its 20 s of work.
    answer = doors.call("http", "slow", new_frame(), {"seconds": 20.0})
    answer.error_naming(504, "slow", TIMED_OUT)
    assert MODEL_TIMEOUT * 0.9 <= answer.seconds < MODEL_TIMEOUT + SLACK, answer.seconds
    doors.check_others()


# -- fixed on disk: last, since it changes the plug-in ------------------------------------------


def test_fixing_the_file_brings_the_model_back(doors: Doors, plugins: Path) -> None:
    bring_back(doors, plugins / "loops", "loops")
