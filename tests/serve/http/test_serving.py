"""The HTTP door under load and in the log: clients never wait on each other, one line each.

A slow render never holds up health checks or another client's frame, concurrent requests
each get their own frame, and every request leaves one INFO line naming its model.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from frameserve.serve.server import FrameServer
from tests.support.http_client import (
    HANG_GUARD,
    RawClient,
    assert_still_serving,
    http_head,
    infer,
    infer_body,
    outputs_of,
    random_frame,
    request,
)

# --- concurrency ----------------------------------------------------------------------------


def test_health_is_answered_while_a_slow_model_runs(server):
    slow = RawClient(server)
    try:
        body, headers = infer_body(
            [("image", random_frame(21, height=4, width=4))], parameters={"seconds": 2.0}
        )
        headers["Content-Length"] = str(len(body))
        slow.send(http_head("POST", "/v2/models/slow/infer", headers) + body)
        assert request(server, "GET", "/v2/health/live").status == 200
        assert request(server, "GET", "/v2/health/ready").status == 200
        assert request(server, "GET", "/v2/models/identity/ready").status == 200
        assert_still_serving(server)  # the second worker renders meanwhile
        assert not slow.has_data(), "the slow render finished before the health checks"
        assert slow.read_response().status == 200
    finally:
        slow.close()


def test_concurrent_requests_each_get_their_own_frame(server):
    frames = [random_frame(100 + index, height=16 + index, width=9) for index in range(8)]

    def render(frame: np.ndarray) -> np.ndarray:
        return outputs_of(infer(server, "identity", infer_body([("image", frame)])))["image"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        images = list(pool.map(render, frames, timeout=HANG_GUARD))
    for frame, image in zip(frames, images, strict=True):
        np.testing.assert_array_equal(image, frame)


# --- logging --------------------------------------------------------------------------------


def logged_line(
    server: FrameServer, caplog: pytest.LogCaptureFixture, path: str, **knobs: Any
) -> tuple[int, str]:
    """Send one infer request to ``path``; return its status and the one log line it left."""
    caplog.set_level(logging.INFO, logger="frameserve.serve.http.server")
    client = RawClient(server)
    try:
        body, headers = infer_body(
            [("image", random_frame(22, height=3, width=3))], parameters=knobs
        )
        headers |= {"Connection": "close", "Content-Length": str(len(body))}
        client.send(http_head("POST", path, headers) + body)
        status = client.read_response().status
        assert client.at_eof()  # the server logs before it closes
        host, port = client.sock.getsockname()[:2]
    finally:
        client.close()
    mine = [
        record
        for record in caplog.records
        if record.name == "frameserve.serve.http.server" and f"{host}:{port}" in record.getMessage()
    ]
    assert len(mine) == 1, [record.getMessage() for record in mine]
    assert mine[0].levelno == logging.INFO
    return status, mine[0].getMessage()


def test_one_info_line_per_request(server, caplog):
    status, line = logged_line(server, caplog, "/v2/models/identity/infer")
    assert status == 200
    assert "POST /v2/models/identity/infer model=identity 200 " in line
    milliseconds = line.split(" 200 ")[1].split(" ms")[0]
    assert float(milliseconds) >= 0
    status, line = logged_line(server, caplog, "/v2/models/nope/infer")
    assert status == 404
    assert "POST /v2/models/nope/infer model=" in line
    assert " 404 " in line and " ms " in line
    assert "unknown model 'nope'" in line


def test_a_failed_request_logs_its_model(server, caplog):
    status, line = logged_line(server, caplog, "/v2/models/blur/infer", radius=3)
    assert status == 400
    assert "POST /v2/models/blur/infer model=blur 400 " in line
    assert "unknown knob 'radius'" in line
