"""Every mistake a client can make in an HTTP API request, answered with its status.

Each is answered with the documented status (:mod:`frameserve.serve.http.status`) and a JSON
``error`` that names the problem (the knob, the input, the shape, the path), and the server
goes on serving. Error cases use raw HTTP (``http.client`` or a socket) so the exact status
and body can be seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.support.http_client import (
    RawClient,
    assert_still_serving,
    http_head,
    infer,
    infer_body,
    random_frame,
    raw_infer_body,
    request,
)
from tests.support.servers import start_server

# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "parameters", "fragments"),
    [
        ("blur", {"radius": 3}, ["unknown knob 'radius'", "size"]),
        ("blur", {"size": "big"}, ["'size'", "expected a number"]),
        ("knobby", {"steps": 2.5}, ["'steps'", "whole number"]),
        ("knobby", {"invert": "yes"}, ["'invert'", "bool"]),
        ("blur", {"size": 300}, ["'size'", "above the maximum 100"]),
        ("knobby", {"steps": 0}, ["'steps'", "below the minimum 1"]),
        ("blur", {"edges": "wrap"}, ["'edges'", "'extend', 'mirror', 'black'"]),
    ],
    ids=["unknown", "wrong-type", "not-whole", "not-bool", "above", "below", "choice"],
)
def test_bad_knob_values_are_400(server, model, parameters, fragments):
    body = infer_body([("image", random_frame(14, height=4, width=4))], parameters=parameters)
    infer(server, model, body).error(400, *fragments)
    assert_still_serving(server)


def test_chw_frame_is_refused_with_the_layout_named(server):
    planar = np.zeros((3, 23, 80), dtype=np.float32)
    infer(server, "identity", infer_body([("image", planar)])).error(400, "[H, W, C]")
    assert_still_serving(server)


def test_small_chw_frame_is_refused_with_the_layout_named(server):
    planar = np.zeros((3, 23, 37), dtype=np.float32)
    infer(server, "identity", infer_body([("image", planar)])).error(400, "[H, W, C]")


@pytest.mark.parametrize(
    ("shape", "datatype", "fragments"),
    [
        ([23, 37], "FP32", ["[H, W, C]", "[23, 37]"]),
        ([1, 1, 4, 4, 3], "FP32", ["[H, W, C]", "[1, 1, 4, 4, 3]"]),
        ([4, 4, 3], "FP64", ["'FP64'", "FP32"]),
        ([4, 4, 3], "INT32", ["'INT32'", "FP32"]),
        ([4, 4, 1], "FP32", ["3 channel"]),
    ],
    ids=["2d", "5d", "fp64", "int32", "too-few-channels"],
)
def test_wrong_shape_or_datatype_is_400(server, shape, datatype, fragments):
    count = int(np.prod(shape))
    header = {
        "inputs": [{"name": "image", "datatype": datatype, "shape": shape, "data": [0] * count}]
    }
    infer(server, "identity", raw_infer_body(header)).error(400, *fragments)
    assert_still_serving(server)


def binary_header(size: int) -> dict[str, Any]:
    """An identity request for one [4, 4, 3] FP32 frame (192 bytes) claiming ``size`` bytes."""
    parameters = {"binary_data_size": size}
    return {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": [4, 4, 3], "parameters": parameters}
        ]
    }


@pytest.mark.parametrize(
    ("claimed", "sent", "fragments"),
    [
        (100, 100, ["needs 192 bytes", "binary_data_size says 100"]),
        (192, 200, ["8 bytes", "no input claims"]),
        (192, 100, ["runs past the end"]),
    ],
    ids=["size-not-shape", "left-over", "past-the-end"],
)
def test_binary_sizes_that_do_not_add_up_are_400(server, claimed, sent, fragments):
    body = raw_infer_body(binary_header(claimed), b"\0" * sent)
    infer(server, "identity", body).error(400, *fragments)
    assert_still_serving(server)


def test_header_length_beyond_the_body_is_400(server):
    body, headers = raw_infer_body(binary_header(192), b"\0" * 192)
    headers["Inference-Header-Content-Length"] = str(len(body) + 1)
    infer(server, "identity", (body, headers)).error(400, "Inference-Header-Content-Length")
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("model", "names", "fragments"),
    [
        ("difference", ["a"], ["'b'"]),
        ("identity", ["img"], ["'img'", "'image'"]),
        ("identity", ["image", "image"], ["twice"]),
    ],
    ids=["missing", "unknown", "twice"],
)
def test_missing_unknown_or_repeated_inputs_are_400(server, model, names, fragments):
    frame = random_frame(15, height=4, width=4)
    infer(server, model, infer_body([(name, frame) for name in names])).error(400, *fragments)
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"{not json", ["is not JSON"]),
        (b"[1, 2]", ["JSON object"]),
        (b'{"parameters": {}}', ["'inputs'"]),
        (b'{"inputs": []}', ["'inputs'"]),
        (b"", ["is not JSON"]),
        # Found by the fuzz suite: each was a 500.
        (
            b'{"inputs":[{"name":"image","datatype":"FP32","shape":[1,1,3],"data":[0,0,0]}],'
            b'"parameters":{"x":' + b"1" * 5000 + b"}}",
            ["is not JSON", "digits"],
        ),
        (
            b'{"inputs":[{"name":"image","datatype":{},"shape":[1,1,3],"data":[0,0,0]}]}',
            ["datatype {}", "FP32"],
        ),
        (
            b'{"inputs":[{"name":"image","datatype":["FP32"],"shape":[1,1,3],"data":[0,0,0]}]}',
            ["datatype ['FP32']", "FP32"],
        ),
    ],
    ids=[
        "bad-json",
        "not-object",
        "no-inputs",
        "empty-inputs",
        "empty-body",
        "huge-number",
        "datatype-object",
        "datatype-list",
    ],
)
def test_malformed_infer_json_is_400(server, body, fragments):
    infer(server, "identity", (body, {"Content-Type": "application/json"})).error(400, *fragments)
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("method", "path", "fragments"),
    [
        ("GET", "/v2/models/nope", ["unknown model 'nope'", "identity"]),
        ("GET", "/v2/models/nope/ready", ["'nope'"]),
        ("POST", "/v2/models/nope/infer", ["'nope'"]),
        ("GET", "/v2/models/identity/versions/2", ["version '2'"]),
        ("POST", "/v2/models/identity/versions/2/infer", ["version '2'"]),
        ("GET", "/v3/health/live", ["no such path"]),
        ("GET", "/v2/models/identity/bogus", ["no such path"]),
    ],
)
def test_unknown_model_version_or_path_is_404(server, method, path, fragments):
    body = infer_body([("image", random_frame(16, height=4, width=4))])
    request(server, method, path, *body).error(404, *fragments)
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("method", "path", "fragments"),
    [
        ("GET", "/v2/models/identity/infer", ["takes POST", "not GET"]),
        ("POST", "/v2/health/live", ["takes GET", "not POST"]),
        ("DELETE", "/v2/models/identity", ["takes GET"]),
        ("GET", "/v2/repository/index", ["takes POST"]),
    ],
)
def test_wrong_method_is_405(server, method, path, fragments):
    request(server, method, path).error(405, *fragments)
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/broken_import/ready"),
        ("GET", "/v2/models/broken_import"),
        ("POST", "/v2/models/broken_import/infer"),
    ],
    ids=["ready", "metadata", "infer"],
)
def test_a_model_that_failed_to_load_is_503(server, method, path):
    body = infer_body([("image", random_frame(17, height=4, width=4))])
    request(server, method, path, *body).error(503, "broken_import", "failed to load")
    assert_still_serving(server)


def test_a_body_above_the_cap_is_413_without_being_read():
    small = start_server(max_frame_bytes=1024)
    try:
        cap = small.settings.max_request_bytes(small.registry.largest_input_count())
        for length in (cap + 1, 10**12):
            client = RawClient(small)
            try:
                # Headers only: were the server to read the body it would wait, not answer.
                headers = {"Expect": "100-continue", "Content-Length": length}
                client.send(http_head("POST", "/v2/models/identity/infer", headers))
                reply = client.read_response()  # a 413 straight away, no 100 Continue first
                reply.error(413, str(length), "limit")
                assert reply.headers["connection"] == "close"
                assert client.at_eof()
            finally:
                client.close()
        assert_still_serving(small)
    finally:
        small.close()
