"""The scheduler decides when requests run: priority, fairness, batching, cancellation, deadlines.

Every test runs the real scheduler, runner and registry on the recording plug-in of
``tests/support/scheduling.py``, with one interactive and one batch worker. A ``gate`` request
holds a worker busy while the test queues others, so the order they then run in is the
scheduler's choice alone; the models record what they ran. The front-door tests run a real
server on loopback.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.engine.request import InferenceRequest, InferenceResult, Priority
from frameserve.errors import DeadlineExceededError, ModelNotFoundError, RequestCancelledError
from frameserve.plugin.knobs import KnobValues
from frameserve.serve.server import FrameServer
from tests.serve.net.peers import abort
from tests.support.node_client import NodeClient, frame_request, inference_request
from tests.support.scheduling import (
    HANG_GUARD,
    SchedulerRig,
    constant_frame,
    http_infer,
    infer_body,
    open_rig,
    parse_metrics,
    wait_until,
    watch_log,
    write_plugin,
)
from tests.support.servers import start_server

BATCH = Priority.BATCH
INTERACTIVE = Priority.INTERACTIVE


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SchedulerRig]:
    """A scheduler with one interactive and one batch worker, and no cache."""
    opened = open_rig(tmp_path / "models", workers=1)
    yield opened
    opened.close()


def results(
    futures: list[Future[InferenceResult]], timeout: float = HANG_GUARD
) -> list[InferenceResult]:
    """Wait for every future; return the results in order."""
    return [future.result(timeout) for future in futures]


# -- priority and fairness ---------------------------------------------------------------------


def test_interactive_request_overtakes_queued_batch_requests(rig: SchedulerRig) -> None:
    gate = rig.hold_worker(BATCH)
    queued = [rig.scheduler.submit(rig.request(tag=tag, priority=BATCH)) for tag in (1, 2, 3)]
    urgent = rig.scheduler.submit(rig.request(tag=4, priority=INTERACTIVE))
    assert rig.scheduler.queue_depth(BATCH) == 3

    urgent.result(HANG_GUARD)  # it never waits for batch work
    assert not gate.done() and not any(future.done() for future in queued)
    rig.state.release.set()
    results([gate, *queued])
    assert rig.ran() == [4, 1, 2, 3]


def test_batch_work_runs_while_every_interactive_worker_is_busy(rig: SchedulerRig) -> None:
    gate = rig.hold_worker(INTERACTIVE)
    rig.scheduler.submit(rig.request(tag=1, priority=BATCH)).result(HANG_GUARD)
    assert not gate.done()
    rig.state.release.set()
    gate.result(HANG_GUARD)
    assert rig.ran() == [1]


def test_batch_workers_run_at_a_lower_cpu_priority(rig: SchedulerRig) -> None:
    rig.scheduler.submit(rig.request(tag=1, priority=INTERACTIVE)).result(HANG_GUARD)
    rig.scheduler.submit(rig.request(tag=2, priority=BATCH)).result(HANG_GUARD)
    niceness = {tag: nice for model, tag, _, nice in rig.state.runs if model == "recorder"}
    assert niceness[2] == min(19, niceness[1] + 10)


def test_requests_of_one_group_and_priority_run_in_arrival_order(rig: SchedulerRig) -> None:
    gate = rig.hold_worker()
    queued = [rig.scheduler.submit(rig.request(tag=tag, group="A")) for tag in range(1, 6)]
    rig.state.release.set()
    results([gate, *queued])
    assert rig.ran() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("priority", [BATCH, INTERACTIVE])
def test_groups_take_turns_so_a_long_job_does_not_starve_another(
    rig: SchedulerRig, priority: Priority
) -> None:
    gate = rig.hold_worker(priority)
    queued = [
        rig.scheduler.submit(rig.request(tag=tag, group="A", priority=priority))
        for tag in range(1, 7)
    ]
    queued += [
        rig.scheduler.submit(rig.request(tag=tag, group="B", priority=priority))
        for tag in (101, 102)
    ]
    rig.state.release.set()
    results([gate, *queued])

    order = rig.ran()
    assert sorted(order) == [1, 2, 3, 4, 5, 6, 101, 102]
    assert set(order[:4]) >= {101, 102}, f"group B waited behind group A: {order}"
    assert [tag for tag in order if tag < 100] == [1, 2, 3, 4, 5, 6]  # A's own order kept


@pytest.mark.parametrize("priority", [INTERACTIVE, BATCH])
def test_each_request_on_an_idle_scheduler_runs_at_once(
    rig: SchedulerRig, priority: Priority
) -> None:
    for tag in range(1, 5):
        future = rig.scheduler.submit(rig.request(tag=tag, priority=priority))
        future.result(timeout=2.0)  # milliseconds of work; 2 s means nobody picked it up
    assert rig.ran() == [1, 2, 3, 4]


# -- batching ----------------------------------------------------------------------------------


def test_compatible_queued_requests_run_as_one_batch_each_with_its_own_result(
    rig: SchedulerRig,
) -> None:
    gate = rig.hold_worker()
    frames = [constant_frame(value) for value in (1.0, 2.0, 3.0, 4.0)]
    queued = [rig.scheduler.submit(rig.request("batcher", frame, gain=2.0)) for frame in frames]
    rig.state.release.set()
    answers = results(queued)

    assert [size for size, *_ in rig.state.batches] == [4]
    for frame, answer in zip(frames, answers, strict=True):
        torch.testing.assert_close(answer.frames["image"], frame * 2.0, rtol=0, atol=0)
    assert len({float(answer.frames["image"][0, 0, 0]) for answer in answers}) == 4
    gate.result(HANG_GUARD)


def test_a_batch_holds_at_most_max_batch_size_requests(rig: SchedulerRig) -> None:
    gate = rig.hold_worker()
    frames = [constant_frame(value) for value in range(6)]
    queued = [rig.scheduler.submit(rig.request("batcher", frame)) for frame in frames]
    rig.state.release.set()
    answers = results(queued)

    assert [size for size, *_ in rig.state.batches] == [4, 2]
    for frame, answer in zip(frames, answers, strict=True):
        torch.testing.assert_close(answer.frames["image"], frame, rtol=0, atol=0)
    gate.result(HANG_GUARD)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_requests_with_different_knobs_or_sizes_are_not_batched_together(
    rig: SchedulerRig,
) -> None:
    gate = rig.hold_worker()
    wanted = [
        (constant_frame(1.0), 1.0),
        (constant_frame(2.0, width=16), 1.0),
        (constant_frame(3.0), 3.0),
        (constant_frame(4.0), 1.0),
        (constant_frame(5.0, width=16), 1.0),
        (constant_frame(6.0), 3.0),
    ]
    queued = [rig.scheduler.submit(rig.request("batcher", f, gain=g)) for f, g in wanted]
    rig.state.release.set()
    answers = results(queued, timeout=5.0)  # three 200 ms windows

    batches = sorted((gain, shape, size) for size, gain, shape, _ in rig.state.batches)
    assert batches == [(1.0, (3, 8, 8), 2), (1.0, (3, 8, 16), 2), (3.0, (3, 8, 8), 2)]
    for (frame, gain), answer in zip(wanted, answers, strict=True):
        torch.testing.assert_close(answer.frames["image"], frame * gain, rtol=0, atol=0)
    gate.result(HANG_GUARD)


def test_a_lone_batchable_request_runs_after_the_batch_window(rig: SchedulerRig) -> None:
    frame = constant_frame(7.0)
    started = time.monotonic()
    answer = rig.scheduler.submit(rig.request("batcher", frame, gain=0.5)).result(HANG_GUARD)
    waited = time.monotonic() - started

    assert [size for size, *_ in rig.state.batches] == [1]
    torch.testing.assert_close(answer.frames["image"], frame * 0.5, rtol=0, atol=0)
    assert waited >= 0.15, f"ran after {waited * 1000:.0f} ms: the 200 ms window was not waited"


def test_models_without_batching_never_wait_for_a_window(rig: SchedulerRig) -> None:
    started = time.monotonic()
    rig.scheduler.submit(rig.request(tag=1)).result(HANG_GUARD)
    assert time.monotonic() - started < 0.15


def test_batch_size_histogram_shows_the_batch(rig: SchedulerRig) -> None:
    gate = rig.hold_worker()
    queued = [rig.scheduler.submit(rig.request("batcher", constant_frame(v))) for v in range(4)]
    rig.state.release.set()
    results([gate, *queued])

    buckets = dict(rig.samples().buckets("frameserve_batch_size", model="batcher"))
    assert buckets[2] == 0
    assert buckets[4] == 1
    assert buckets[float("inf")] == 1
    gate_buckets = dict(rig.samples().buckets("frameserve_batch_size", model="gate"))
    assert gate_buckets[1] == 1


# -- cancellation, deadlines, shutdown ---------------------------------------------------------


def test_cancelled_queued_request_never_reaches_the_model(rig: SchedulerRig) -> None:
    gate = rig.hold_worker()
    doomed = rig.scheduler.submit(rig.request(tag=1))
    kept = rig.scheduler.submit(rig.request(tag=2))
    assert doomed.cancel()
    rig.state.release.set()
    results([gate, kept])

    assert rig.ran() == [2]
    assert doomed.cancelled()
    with pytest.raises(CancelledError):
        doomed.result(0)
    samples = rig.samples()
    assert samples.value("frameserve_requests_dropped_total", reason="cancelled") == 1
    assert samples.value("frameserve_requests_dropped_total", reason="deadline") == 0


def test_request_whose_deadline_passes_in_the_queue_fails_unrun(rig: SchedulerRig) -> None:
    gate = rig.hold_worker()
    deadline = time.monotonic() + 0.02
    late = rig.scheduler.submit(rig.request(tag=1, deadline=deadline))
    in_time = rig.scheduler.submit(rig.request(tag=2, deadline=time.monotonic() + HANG_GUARD))
    time.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
    rig.state.release.set()

    with pytest.raises(DeadlineExceededError, match="deadline passed"):
        late.result(HANG_GUARD)
    results([gate, in_time])
    assert rig.ran() == [2]
    assert rig.samples().value("frameserve_requests_dropped_total", reason="deadline") == 1


def test_closing_the_scheduler_fails_queued_requests(rig: SchedulerRig) -> None:
    gates = [rig.hold_worker(INTERACTIVE), rig.hold_worker(BATCH)]
    queued = [rig.scheduler.submit(rig.request(tag=tag)) for tag in (1, 2)]
    queued.append(rig.scheduler.submit(rig.request(tag=3, priority=BATCH)))
    # close() waits for the running work, so it runs beside the test until the gates open
    closing = threading.Thread(target=rig.scheduler.close, name="test-close")
    closing.start()

    for future in queued:
        with pytest.raises(RequestCancelledError, match="shutting down"):
            future.result(HANG_GUARD)
    with pytest.raises(RequestCancelledError):
        rig.scheduler.submit(rig.request(tag=4))
    assert closing.is_alive()  # still waiting for the two running requests
    rig.state.release.set()
    results(gates)  # running work is never interrupted
    closing.join(HANG_GUARD)
    assert not closing.is_alive()
    assert rig.ran() == []


def test_a_failing_request_fails_alone_and_the_worker_goes_on(rig: SchedulerRig) -> None:
    wrong = InferenceRequest(
        model_id="no-such-model", frames={"image": constant_frame(1.0)}, knobs=KnobValues({})
    )
    failed = rig.scheduler.submit(wrong)
    answer = rig.scheduler.submit(rig.request(tag=2)).result(HANG_GUARD)
    assert isinstance(failed.exception(HANG_GUARD), ModelNotFoundError)
    assert answer.frames["image"].shape == (3, 8, 8)
    assert rig.ran() == [2]


def test_an_idle_worker_takes_work_while_another_waits_out_a_batch_window(
    tmp_path: Path,
) -> None:
    rig = open_rig(tmp_path / "models", workers=2)
    try:
        gate = rig.hold_worker()  # worker 1 busy
        lone = rig.scheduler.submit(rig.request("batcher"))  # worker 2 waits 200 ms for more
        rig.state.release.set()
        gate.result(HANG_GUARD)
        time.sleep(0.03)  # worker 1 goes back to waiting for work
        rig.scheduler.submit(rig.request(tag=1)).result(HANG_GUARD)
        lone.result(HANG_GUARD)

        recorded = next(when for model, _, when, _ in rig.state.runs if model == "recorder")
        batch_ran = rig.state.batches[0][3]
        assert recorded < batch_ran, "the recorder request waited for the batch window"
    finally:
        rig.close()


# -- front doors -------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FrameServer, object]]:
    """A server with one worker on the recording plug-in, and the plug-in's state.

    In-process: these tests read the recording models' state in this process, and hold the
    one shared interactive worker with ``gate`` (tests/engine/workers checks the same rules
    with worker processes, where each model has turns of its own).
    """
    server = start_server(
        model_folders=(write_plugin(tmp_path / "models"),),
        builtin_models=False,
        workers=1,
        isolation=False,
    )
    state = server.registry.get("gate").model_class.state  # type: ignore[union-attr]
    yield server, state
    state.release.set()
    server.close()


def wire_frame(value: float) -> np.ndarray:
    return constant_frame(value).numpy()


def recorded(state: object, model: str = "recorder") -> list[int]:
    return [tag for ran, tag, *_ in state.runs if ran == model]  # type: ignore[attr-defined]


def test_mlclient_request_is_dropped_when_its_client_leaves_the_queue(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    gate, recorder = node.model("gate"), node.model("recorder")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(node.infer, gate, [wire_frame(0)])
        assert state.started.wait(HANG_GUARD)  # type: ignore[attr-defined]
        request = frame_request(inference_request(recorder, [wire_frame(1)], knobs={"tag": 7}))
        with watch_log("frameserve.serve.mlclient.server", "dropped") as gone:
            leaver = socket.create_connection(server.mlclient_address, timeout=HANG_GUARD)
            leaver.sendall(request)
            wait_until(lambda: server.scheduler.queue_depth(INTERACTIVE) == 1, what="queued")
            abort(leaver)  # a reset: a FIN alone could be a half-close (serve/net/sockets)
            assert gone.wait(HANG_GUARD), "the server did not notice the client leave"
        state.release.set()  # type: ignore[attr-defined]
        assert not held.result(HANG_GUARD).HasField("error")

    reply = node.infer(recorder, [wire_frame(2)], knobs={"tag": 8})
    assert not reply.HasField("error"), reply.error.msg
    assert recorded(state) == [8]
    samples = parse_metrics(server.metrics.render())
    assert samples.value("frameserve_requests_dropped_total", reason="cancelled") == 1


def test_http_request_is_dropped_when_its_connection_closes_in_the_queue(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(node.infer, node.model("gate"), [wire_frame(0)])
        assert state.started.wait(HANG_GUARD)  # type: ignore[attr-defined]
        body = infer_body(constant_frame(1.0), {"tag": 7})
        head = (
            "POST /v2/models/recorder/infer HTTP/1.1\r\nHost: test\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with watch_log("frameserve.serve.http.server", "dropped") as gone:
            leaver = socket.create_connection(server.http_address, timeout=HANG_GUARD)
            leaver.sendall(head.encode() + body)
            wait_until(lambda: server.scheduler.queue_depth(INTERACTIVE) == 1, what="queued")
            abort(leaver)  # a reset: a FIN alone could be a half-close (serve/net/sockets)
            assert gone.wait(HANG_GUARD), "the server did not notice the client leave"
        state.release.set()  # type: ignore[attr-defined]
        held.result(HANG_GUARD)

    status, answer = http_infer(server.http_address, "recorder", constant_frame(2.0), {"tag": 8})
    assert status == 200, answer
    assert recorded(state) == [8]
    samples = parse_metrics(server.metrics.render())
    assert samples.value("frameserve_requests_dropped_total", reason="cancelled") == 1


def test_http_deadline_that_passes_in_the_queue_is_a_504(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(node.infer, node.model("gate"), [wire_frame(0)])
        assert state.started.wait(HANG_GUARD)  # type: ignore[attr-defined]
        parameters = {"tag": 3, "deadline_ms": 30}
        late = pool.submit(
            http_infer, server.http_address, "recorder", constant_frame(1), parameters
        )
        wait_until(lambda: server.scheduler.queue_depth(INTERACTIVE) == 1, what="queued")
        time.sleep(0.04)
        state.release.set()  # type: ignore[attr-defined]
        status, answer = late.result(HANG_GUARD)
        held.result(HANG_GUARD)

    assert status == 504, answer
    assert "deadline" in answer["error"] and "unrun" in answer["error"], answer
    assert recorded(state) == []
    status, answer = http_infer(
        server.http_address, "recorder", constant_frame(1), {"tag": 4, "deadline_ms": 10_000}
    )
    assert status == 200, answer
    assert recorded(state) == [4]


@pytest.mark.parametrize("deadline", [0, -5, "soon", True])
def test_http_deadline_must_be_a_positive_number(
    served: tuple[FrameServer, object], deadline: object
) -> None:
    server, _ = served
    status, answer = http_infer(
        server.http_address, "recorder", constant_frame(1), {"deadline_ms": deadline}
    )
    assert status == 400
    assert "deadline_ms" in answer["error"]


def test_http_interactive_request_overtakes_queued_http_batch_requests(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    address = server.http_address
    with ThreadPoolExecutor(4) as pool:
        held = pool.submit(http_infer, address, "gate", constant_frame(0), {"priority": "batch"})
        assert state.started.wait(HANG_GUARD)  # type: ignore[attr-defined]
        queued = []
        for depth, tag in enumerate((1, 2), start=1):
            parameters = {"tag": tag, "priority": "batch"}
            queued.append(
                pool.submit(http_infer, address, "recorder", constant_frame(tag), parameters)
            )
            wait_until(lambda d=depth: server.scheduler.queue_depth(BATCH) == d, what="queued")
        urgent = {"tag": 3, "priority": "interactive"}
        status, answer = http_infer(address, "recorder", constant_frame(3), urgent)
        assert status == 200, answer
        assert not held.done()
        state.release.set()  # type: ignore[attr-defined]
        assert [reply.result(HANG_GUARD)[0] for reply in [held, *queued]] == [200, 200, 200]
    assert recorded(state) == [3, 1, 2]


def test_http_priority_must_be_interactive_or_batch(served: tuple[FrameServer, object]) -> None:
    server, _ = served
    status, answer = http_infer(
        server.http_address, "recorder", constant_frame(1), {"priority": "urgent"}
    )
    assert status == 400
    assert "'urgent'" in answer["error"] and "'batch'" in answer["error"]


def test_http_client_id_names_the_fairness_group(served: tuple[FrameServer, object]) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    with ThreadPoolExecutor(5) as pool:
        held = pool.submit(node.infer, node.model("gate"), [wire_frame(0)])
        assert state.started.wait(HANG_GUARD)  # type: ignore[attr-defined]
        replies = []
        for depth, (tag, client) in enumerate([(1, "farm"), (2, "farm"), (3, "farm"), (4, "me")]):
            parameters = {"tag": tag, "client_id": client}
            frame = constant_frame(tag)
            replies.append(
                pool.submit(http_infer, server.http_address, "recorder", frame, parameters)
            )
            wait_until(lambda d=depth: server.scheduler.queue_depth(INTERACTIVE) == d + 1)
        state.release.set()  # type: ignore[attr-defined]
        assert [reply.result(HANG_GUARD)[0] for reply in replies] == [200] * 4
        held.result(HANG_GUARD)
    assert recorded(state) == [1, 4, 2, 3]
