"""A real server with worker processes: readiness while loading, the admin load, clean stops.

Each test starts a server on loopback over the lab models (tests/engine/workers/lab.py) and
talks to it through its doors.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from frameserve.serve.server import FrameServer
from tests.engine.workers.lab import (
    HANG_GUARD,
    frame_mappings,
    process_gone,
    wait_until,
    worker_children,
    write_lab,
)
from tests.support.model_folders import index_of, node_infer
from tests.support.servers import start_server


def lab_server(root: Path, **settings: object) -> FrameServer:
    options: dict[str, object] = {
        "model_folders": (write_lab(root),),
        "builtin_models": False,
        "max_crashes": 2,
    }
    options.update(settings)
    return start_server(**options)


def call(
    server: FrameServer, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(*server.http_address, timeout=HANG_GUARD)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def infer(server: FrameServer, model: str, value: float, **knobs: object) -> tuple[int, Any]:
    tensor = {"name": "image", "datatype": "FP32", "shape": [2, 2, 3], "data": [value] * 12}
    return call(
        server, "POST", f"/v2/models/{model}/infer", {"inputs": [tensor], "parameters": knobs}
    )


def test_a_model_is_not_ready_while_its_worker_loads(tmp_path: Path) -> None:
    server = lab_server(tmp_path)
    try:
        assert call(server, "GET", "/v2/models/slowsetup/ready")[0] == 200  # starts on demand
        answers: list[tuple[int, Any]] = []
        thread = threading.Thread(target=lambda: answers.append(infer(server, "slowsetup", 1.0)))
        thread.start()
        wait_until(
            lambda: call(server, "GET", "/v2/models/slowsetup/ready")[0] == 503, what="loading"
        )
        status, answer = call(server, "GET", "/v2/models/slowsetup/ready")
        assert (status, answer["ready"]) == (503, False) and answer["state"] in {
            "loading",
            "ready",  # it may have become ready between the two looks
        }
        assert call(server, "GET", "/v2/health/ready")[0] == 200  # other models can serve
        thread.join(HANG_GUARD)
        assert answers and answers[0][0] == 200
        assert call(server, "GET", "/v2/models/slowsetup/ready") == (
            200,
            {"name": "slowsetup", "version": "1", "ready": True},
        )
    finally:
        server.close()


def test_a_failed_model_is_listed_with_its_error_until_an_admin_loads_it(
    tmp_path: Path,
) -> None:
    server = lab_server(tmp_path)
    try:
        for how in ("segv", "exit"):
            status, answer = infer(server, "crash", 1.0, how=how)
            assert status == 500 and answer["error"].startswith("model 'crash' crashed: ")
        status, answer = call(server, "GET", "/v2/models/crash/ready")
        assert status == 503 and "is marked failed" in answer["error"]
        listed = index_of(server)[("crash", "1")]
        assert listed["state"] == "UNAVAILABLE" and "died 2 times" in listed["reason"]
        status, answer = infer(server, "crash", 1.0)
        assert status == 503 and "is marked failed" in answer["error"]
        assert infer(server, "double", 1.0)[0] == 200

        status, answer = call(server, "POST", "/v2/repository/models/crash/load", {})
        assert status == 200 and answer["ready"] is True
        assert answer["changes"] == ["model crash: cleared its failed state; it starts on demand"]
        assert infer(server, "crash", 2.0)[0] == 200
        assert index_of(server)[("crash", "1")]["state"] == "READY"
    finally:
        server.close()


def test_a_stopped_server_leaves_no_worker_and_no_shared_memory(tmp_path: Path) -> None:
    gc.collect()
    mappings = frame_mappings()
    shm = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    server = lab_server(tmp_path)
    image = np.full((3, 32, 48), 1.5, dtype=np.float32)
    np.testing.assert_array_equal(node_infer(server, "double", image), image * 2)
    assert infer(server, "echo", 1.0)[0] == 200
    host = server.host
    pids = [worker.pid for _, worker in host.workers()]  # type: ignore[attr-defined]
    assert len(pids) == 2 and os.getpid() not in pids
    assert set(pids) < set(worker_children())  # and the spare, waiting for a model
    server.close()
    assert all(process_gone(pid) for pid in pids)
    assert worker_children() == []
    gc.collect()
    assert frame_mappings() == mappings
    if shm:
        assert set(Path("/dev/shm").iterdir()) == shm


def test_both_doors_decode_request_frames_straight_into_shared_memory(tmp_path: Path) -> None:
    server = lab_server(tmp_path)
    try:
        host = server.host
        image = np.full((3, 27, 48), 0.25, dtype=np.float32)
        np.testing.assert_array_equal(node_infer(server, "double", image), image * 2)
        tensor = {"name": "image", "datatype": "FP32", "shape": [27, 48, 3]}
        tensor["data"] = [0.5] * image.size
        status, answer = call(server, "POST", "/v2/models/double/infer", {"inputs": [tensor]})
        assert status == 200 and set(answer["outputs"][0]["data"]) == {1.0}
        assert host.frames_copied_in == 0  # type: ignore[attr-defined]
    finally:
        server.close()
