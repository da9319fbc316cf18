"""HTTP tensors are checked from their declared shape before their data is touched.

Issue 12 found ``[100000, 1, 1, 3]`` (1.2 MB of binary data) turning into 185 MB of frames.
A batch above ``--max-batch-frames`` and a frame above ``--max-frame-pixels`` are now a 400
naming the limit, answered from the JSON header alone; a real server on loopback is attacked
and its Python memory watched while it answers.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest

from frameserve.errors import FrameError, ProtocolError
from frameserve.serve.http.tensors import parse_infer_body
from frameserve.serve.server import FrameServer
from tests.support.http_client import Reply, assert_still_serving, infer, infer_body, raw_infer_body

T = TypeVar("T")


def peak_bytes_while(send: Callable[[], T]) -> tuple[T, int]:
    """Run ``send()`` with tracemalloc on; return its result and the peak bytes traced."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = send()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_a_batch_above_the_cap_is_refused_before_it_becomes_frames(server: FrameServer) -> None:
    batch = np.zeros((100_000, 1, 1, 3), dtype=np.float32)
    body = infer_body([("image", batch)])
    reply, peak = peak_bytes_while(lambda: infer(server, "identity", body))
    reply.error(
        400,
        "a batch of 100000 frames is above the limit of 64 frames per request",
        "--max-batch-frames",
    )
    assert peak < 2 * len(body[0]) + (32 << 20), f"{peak} bytes held for {len(body[0])} sent"
    assert_still_serving(server)


def test_a_batch_at_the_cap_is_served(server: FrameServer) -> None:
    batch = np.random.default_rng(1).random((64, 2, 2, 3), dtype=np.float32)
    reply = infer(server, "identity", infer_body([("image", batch)]))
    assert reply.status == 200, reply.body[:300]


@pytest.mark.parametrize("shape", [[1, 8193, 8193, 3], [8193, 8193, 3]], ids=["batch", "frame"])
def test_a_frame_above_max_frame_pixels_is_refused_from_the_header_alone(
    server: FrameServer, shape: list[int]
) -> None:
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": shape,
                "parameters": {"binary_data_size": 8193 * 8193 * 3 * 4},
            }
        ]
    }
    # only the header is sent: the 805 MB it announces never come
    text = json.dumps(header).encode()
    headers = {
        "Content-Type": "application/json",
        "Inference-Header-Content-Length": str(len(text)),
    }
    reply: Reply = infer(server, "identity", (text, headers))
    reply.error(
        400, "8193x8193 is 67125249 pixels, above the limit of 67108864", "--max-frame-pixels"
    )


def test_deeply_nested_json_is_a_400(server: FrameServer) -> None:
    text = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = infer(server, "identity", (text, {"Content-Type": "application/json"}))
    reply.error(400)


def test_parse_infer_body_takes_the_limits_it_is_given() -> None:
    frames = np.zeros((3, 4, 5, 3), dtype=np.float32)
    data, _ = infer_body([("image", frames)])
    header_length = len(data) - frames.nbytes
    body = np.frombuffer(data, dtype=np.uint8)
    _, inputs = parse_infer_body(body, header_length, max_batch_frames=3, max_frame_pixels=20)
    assert inputs[0].array.shape == (3, 4, 5, 3)
    with pytest.raises(FrameError, match="a batch of 3 frames is above the limit of 2"):
        parse_infer_body(body, header_length, max_batch_frames=2, max_frame_pixels=20)
    with pytest.raises(FrameError, match="5x4 is 20 pixels, above the limit of 19"):
        parse_infer_body(body, header_length, max_batch_frames=3, max_frame_pixels=19)


def test_parse_infer_body_refuses_json_nested_too_deeply() -> None:
    text, _ = raw_infer_body({"inputs": []})
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ProtocolError, match="nests arrays and objects more than"):
        parse_infer_body(np.frombuffer(deep, dtype=np.uint8), None)
    assert text  # the ordinary body helper still builds bodies
