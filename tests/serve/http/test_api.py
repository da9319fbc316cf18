"""The HTTP front door, end to end: a real server on loopback, spoken to by real clients.

``docs/http-api.md`` is the contract. The tests read as its promises:

- the standard client, ``tritonclient.http``, works unchanged: health, metadata, the model
  repository, knob specs, and inference with binary or JSON tensors;
- frames travel as ``[H, W, C]`` and come back bit for bit where the model does not change them;
- every mistake a client can make, down to malformed HTTP, is answered with the documented status
  and a JSON ``error`` that names the problem, and the server goes on serving;
- HTTP/1.1 mechanics a client may rely on (keep-alive, ``Expect: 100-continue``, chunked
  bodies, HEAD, HTTP/1.0) work;
- a slow render or a stalled client never holds up another client;
- every request leaves one INFO line in the log.

Error cases use raw HTTP (``http.client`` or a socket) so the exact status and body can be seen.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from frameserve import __version__
from frameserve.builtin_models.blur.model import gaussian_blur
from frameserve.serve.server import FrameServer
from tests.support.servers import start_server

#: Upper bound on any wait for a reply: a guard against hanging, never a speed target.
HANG_GUARD = 20.0
#: Idle timeout of the server that tests stalled clients.
STALL_TIMEOUT = 0.5
#: Numpy types of the tensor datatypes the API speaks.
NUMPY_TYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}
TEST_MODELS = ("identity", "blur", "difference", "knobby", "slow")


# --- helpers -------------------------------------------------------------------------------


def random_frame(seed: int, *, height: int = 23, width: int = 37, channels: int = 3) -> np.ndarray:
    """Return a float32 ``[H, W, C]`` frame of scene-linear values (some above 1, some below 0)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 4.0, size=(height, width, channels)).astype(np.float32)


def reference_blur(frame: np.ndarray, size: float, edges: str) -> np.ndarray:
    """Return frameserve's own ``gaussian_blur`` of an ``[H, W, C]`` frame, as ``[H, W, C]``."""
    planar = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))
    return gaussian_blur(planar, size, edges).permute(1, 2, 0).numpy()


@dataclass
class Reply:
    """One HTTP response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return json.loads(self.body)

    def error(self, status: int, *fragments: str) -> str:
        """Assert this is an ``{"error": ...}`` answer with ``status``; return its message."""
        assert self.status == status, f"expected {status}, got {self.status}: {self.body[:300]!r}"
        data = self.json()
        assert set(data) == {"error"}, data
        message = data["error"]
        assert isinstance(message, str) and message
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        return message


def request(
    server: FrameServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Send one request on a new ``http.client`` connection and return the reply."""
    host, port = server.http_address
    conn = http.client.HTTPConnection(host, port, timeout=HANG_GUARD)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        names = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, names, data)
    finally:
        conn.close()


def infer_body(
    inputs: Sequence[tuple[str, np.ndarray]],
    *,
    parameters: dict[str, Any] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    binary: bool = True,
) -> tuple[bytes, dict[str, str]]:
    """Return an infer request body and its headers; datatypes follow the arrays' dtypes."""
    names = {np.dtype(t): name for name, t in NUMPY_TYPES.items()}
    described = []
    payload = []
    for name, array in inputs:
        item: dict[str, Any] = {
            "name": name,
            "datatype": names[array.dtype],
            "shape": list(array.shape),
        }
        if binary:
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            item["parameters"] = {"binary_data_size": len(raw)}
            payload.append(raw)
        else:
            item["data"] = array.reshape(-1).tolist()
        described.append(item)
    header: dict[str, Any] = {"id": "test", "inputs": described}
    if parameters is not None:
        header["parameters"] = parameters
    if outputs is not None:
        header["outputs"] = outputs
    return raw_infer_body(header, b"".join(payload))


def raw_infer_body(header: object, payload: bytes = b"") -> tuple[bytes, dict[str, str]]:
    """Return a body of the JSON ``header`` followed by ``payload``, with its headers."""
    text = json.dumps(header).encode()
    headers = {"Content-Type": "application/json"}
    if payload:
        headers["Inference-Header-Content-Length"] = str(len(text))
    return text + payload, headers


def infer(server: FrameServer, model: str, body: tuple[bytes, dict[str, str]]) -> Reply:
    """POST ``body`` to the model's infer path on a new connection."""
    return request(server, "POST", f"/v2/models/{model}/infer", *body)


def http_head(method: str, path: str, headers: dict[str, object]) -> bytes:
    """Return a hand-written HTTP/1.1 request line and headers, up to the blank line."""
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def outputs_of(reply: Reply) -> dict[str, Any]:
    """Decode a successful infer reply: arrays by output name (``objects`` as a list of str)."""
    assert reply.status == 200, reply.body[:300]
    header_length = reply.headers.get("inference-header-content-length")
    if header_length is None:
        assert reply.headers["content-type"] == "application/json"
        header, offset = json.loads(reply.body), len(reply.body)
    else:
        assert reply.headers["content-type"] == "application/octet-stream"
        offset = int(header_length)
        header = json.loads(reply.body[:offset])
    decoded: dict[str, Any] = {}
    for output in header["outputs"]:
        if output["datatype"] == "BYTES":
            decoded[output["name"]] = output["data"]
            continue
        dtype = np.dtype(NUMPY_TYPES[output["datatype"]]).newbyteorder("<")
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(output["data"], dtype=dtype)
        else:
            array = np.frombuffer(
                reply.body, dtype=dtype, count=size // dtype.itemsize, offset=offset
            )
            offset += size
        decoded[output["name"]] = array.reshape(output["shape"])
    assert offset == len(reply.body), "bytes left over after the outputs"
    return decoded


def assert_still_serving(server: FrameServer) -> None:
    """An identity request on a new connection comes back with its frame."""
    frame = random_frame(99, height=4, width=5)
    image = outputs_of(infer(server, "identity", infer_body([("image", frame)])))["image"]
    np.testing.assert_array_equal(image, frame)


class RawClient:
    """A socket speaking hand-written HTTP, reading responses as they arrive."""

    def __init__(self, server: FrameServer, *, timeout: float = HANG_GUARD) -> None:
        self.sock = socket.create_connection(server.http_address, timeout=timeout)
        self._file = self.sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_head(self) -> tuple[int, dict[str, str]]:
        """Read one response's status line and headers."""
        status_line = self._file.readline()
        assert status_line.startswith(b"HTTP/1.1 "), f"not a status line: {status_line[:100]!r}"
        headers: dict[str, str] = {}
        while (line := self._file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def read_response(self) -> Reply:
        """Read one response with a ``Content-Length`` body."""
        status, headers = self.read_head()
        body = self._file.read(int(headers["content-length"]))
        return Reply(status, headers, body)

    def at_eof(self) -> bool:
        """Whether the server has closed the connection (waits up to the socket timeout)."""
        return self._file.read(1) == b""

    def has_data(self) -> bool:
        """Whether a reply (or end of file) is waiting right now (call before any read)."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def wait_for_server_thread(self) -> None:
        """Wait until the server's thread for this connection ends.

        The listener names it after the client; joining it makes an exception it dies of
        reported in the running test, not a later one.
        """
        name = "{}:{}".format(*self.sock.getsockname()[:2])
        for thread in threading.enumerate():
            if thread.name == name and thread is not threading.current_thread():
                thread.join(HANG_GUARD)


@pytest.fixture
def raw(server: FrameServer) -> Iterator[RawClient]:
    """A raw-socket client of the shared server."""
    client = RawClient(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def triton(server: FrameServer) -> Iterator[triton_http.InferenceServerClient]:
    """The standard third-party client, ``tritonclient.http``."""
    host, port = server.http_address
    client = triton_http.InferenceServerClient(url=f"{host}:{port}", network_timeout=HANG_GUARD)
    yield client
    client.close()


def triton_input(name: str, array: np.ndarray, *, binary: bool = True) -> triton_http.InferInput:
    """Return a tritonclient input holding ``array`` (its datatype follows the dtype)."""
    datatype = {np.dtype(t): name for name, t in NUMPY_TYPES.items()}[array.dtype]
    tensor = triton_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def triton_identity(client: triton_http.InferenceServerClient, frame: np.ndarray) -> np.ndarray:
    """Send ``frame`` through the identity model with tritonclient, binary both ways."""
    result = client.infer(
        "identity",
        [triton_input("image", frame)],
        outputs=[triton_http.InferRequestedOutput("image", binary_data=True)],
    )
    image = result.as_numpy("image")
    assert image is not None
    return image


# --- tritonclient: health, metadata, repository ---------------------------------------------


def test_tritonclient_sees_a_live_ready_server_and_its_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "frameserve"
    assert metadata["version"] == __version__
    assert "binary_tensor_data" in metadata["extensions"]


def test_repository_index_lists_every_model_and_why_one_failed(triton):
    index = {item["name"]: item for item in triton.get_model_repository_index()}
    for name in TEST_MODELS:
        assert index[name]["state"] == "READY", index[name]
        assert index[name]["version"] == "1"
    broken = index["broken_import"]
    assert broken["state"] == "UNAVAILABLE"
    assert "broken on purpose" in broken["reason"]


def test_model_metadata_gives_hwc_shapes_in_fp32(triton):
    identity = triton.get_model_metadata("identity")
    assert identity["name"] == "identity"
    assert identity["versions"] == ["1"]
    assert identity["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, -1, 3]}]
    assert identity["outputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, -1, 3]}]
    difference = triton.get_model_metadata("difference", model_version="1")
    assert [i["name"] for i in difference["inputs"]] == ["a", "b"]
    assert all(i["shape"] == [-1, -1, 3] for i in difference["inputs"])


def test_model_readiness(triton):
    assert triton.is_model_ready("identity")
    assert triton.is_model_ready("knobby", model_version="1")
    assert not triton.is_model_ready("broken_import")
    assert not triton.is_model_ready("no_such_model")


def test_model_config_holds_the_knob_specs(triton):
    config = triton.get_model_config("knobby")
    assert config["name"] == "knobby"
    assert config["label"] == "Knobby (test)"
    assert config["inputs"] == [{"name": "image", "channels": 3}]
    knobs = {knob["name"]: knob for knob in config["knobs"]}
    assert list(knobs) == ["invert", "steps", "gain", "note", "mode", "report"]
    expected = {
        "invert": {"type": "bool", "default": False, "help": "Negate the image."},
        "steps": {"type": "int", "default": 2, "min": 1, "max": 10, "help": "A whole number."},
        "gain": {"type": "float", "default": 1.0, "min": 0.0, "max": 4.0, "help": "Multiplies"},
        "note": {"type": "string", "default": "hello", "help": "Free text."},
        "mode": {"type": "choice", "default": "fast", "choices": ["fast", "best"], "help": "A"},
        "report": {"type": "button", "default": False, "help": "Return the knob values."},
    }
    for name, fields in expected.items():
        for field, value in fields.items():
            if field == "help":
                assert knobs[name][field].startswith(value), (name, knobs[name])
            else:
                assert knobs[name][field] == value, (name, field, knobs[name])


# --- tritonclient: inference ----------------------------------------------------------------


def test_identity_returns_a_non_square_frame_bit_for_bit(triton):
    frame = random_frame(1)
    assert frame.shape == (23, 37, 3)
    image = triton_identity(triton, frame)
    assert image.dtype == np.float32
    assert image.shape == (23, 37, 3)
    np.testing.assert_array_equal(image, frame)


def test_identity_returns_a_real_photo_bit_for_bit(triton):
    photo = skimage.data.astronaut().astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(triton_identity(triton, photo), photo)


def test_fp16_input_is_widened(triton):
    frame = random_frame(2).astype(np.float16)
    image = triton_identity(triton, frame)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, frame.astype(np.float32))


def test_uint8_input_maps_0_255_to_0_1(triton):
    frame = np.random.default_rng(3).integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    frame[0, 0] = (0, 128, 255)
    image = triton_identity(triton, frame)
    np.testing.assert_allclose(image, frame.astype(np.float32) / 255, rtol=0, atol=1e-7)
    np.testing.assert_allclose(image[0, 0], [0.0, 128 / 255, 1.0], rtol=0, atol=1e-7)


def test_blur_with_knobs_in_parameters_matches_gaussian_blur(triton):
    frame = random_frame(4)
    result = triton.infer(
        "blur",
        [triton_input("image", frame)],
        parameters={"size": 2.5, "edges": "mirror"},
    )
    image = result.as_numpy("image")
    assert image.shape == frame.shape
    expected = reference_blur(frame, 2.5, "mirror")
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-5)
    assert not np.allclose(image, reference_blur(frame, 2.5, "black"), atol=1e-3)
    assert result.as_numpy("objects") is None  # no button pressed, no objects


def test_blur_brightest_button_returns_a_python_script_object(triton):
    frame = np.zeros((23, 37, 3), dtype=np.float32)
    frame[5, 30] = 50.0  # one bright pixel: row 5 from the top, column 30
    result = triton.infer(
        "blur",
        [triton_input("image", frame)],
        parameters={"size": 1.0, "brightest": True},
    )
    objects = result.as_numpy("objects")
    assert objects is not None and objects.shape == (1,)
    document = json.loads(objects[0])
    assert document["name"] == "PythonScript"
    (record,) = document["records"]
    script = record["script"]
    assert script.startswith("nuke.message(")
    assert "x=30, y=17" in script  # Nuke counts y from the bottom: 23 - 1 - 5
    output = result.get_output("objects")
    assert output["datatype"] == "BYTES"


def test_difference_takes_two_inputs(triton):
    a, b = random_frame(5), random_frame(6)
    result = triton.infer(
        "difference",
        [triton_input("a", a), triton_input("b", b)],
        parameters={"absolute": False, "gain": 2.0},
    )
    np.testing.assert_allclose(result.as_numpy("image"), (a - b) * 2, rtol=1e-6, atol=1e-6)


def test_json_input_and_output(triton):
    frame = random_frame(7, height=5, width=6)
    result = triton.infer(
        "identity",
        [triton_input("image", frame, binary=False)],
        outputs=[triton_http.InferRequestedOutput("image", binary_data=False)],
    )
    output = result.get_output("image")
    assert "data" in output and "parameters" not in output
    np.testing.assert_array_equal(result.as_numpy("image"), frame)


def test_versioned_infer_path(triton):
    frame = random_frame(8, height=4, width=9)
    result = triton.infer("identity", [triton_input("image", frame)], model_version="1")
    np.testing.assert_array_equal(result.as_numpy("image"), frame)
    response = result.get_response()
    assert response["model_name"] == "identity"
    assert response["model_version"] == "1"


def test_a_batch_runs_each_frame(triton):
    batch = np.stack([random_frame(9), random_frame(10)])
    result = triton.infer("blur", [triton_input("image", batch)], parameters={"size": 1.5})
    image = result.as_numpy("image")
    assert image.shape == (2, 23, 37, 3)
    for index in range(2):
        expected = reference_blur(batch[index], 1.5, "extend")
        np.testing.assert_allclose(image[index], expected, rtol=0, atol=1e-5)


def test_tritonclient_error_carries_the_server_message(triton):
    with pytest.raises(InferenceServerException, match="unknown knob 'radius'"):
        triton.infer(
            "blur",
            [triton_input("image", random_frame(23, height=4, width=4))],
            parameters={"radius": 1},
        )
    assert triton.is_server_live()


# --- output datatypes (tritonclient cannot set output parameters) ----------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_output_as_fp16(server, binary):
    frame = random_frame(11)
    outputs = [{"name": "image", "parameters": {"datatype": "FP16", "binary_data": binary}}]
    reply = infer(server, "identity", infer_body([("image", frame)], outputs=outputs))
    image = outputs_of(reply)["image"]
    assert image.dtype == np.float16
    np.testing.assert_array_equal(image, frame.astype(np.float16))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_output_as_uint8_is_rounded_and_clipped(server, binary):
    frame = np.random.default_rng(12).uniform(-0.5, 1.5, size=(23, 37, 3)).astype(np.float32)
    outputs = [{"name": "image", "parameters": {"datatype": "UINT8", "binary_data": binary}}]
    reply = infer(server, "identity", infer_body([("image", frame)], outputs=outputs))
    image = outputs_of(reply)["image"]
    assert image.dtype == np.uint8
    expected = np.clip(np.round(frame * np.float32(255)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert image.min() == 0 and image.max() == 255


def test_unknown_output_datatype_is_refused(server):
    outputs = [{"name": "image", "parameters": {"datatype": "FP64"}}]
    reply = infer(server, "identity", infer_body([("image", random_frame(13))], outputs=outputs))
    reply.error(400, "FP64", "FP32")
    assert_still_serving(server)


# --- colourspace -----------------------------------------------------------------------------


def test_colourspace_parameter_is_not_a_knob(server):
    frame = random_frame(24)
    for name in ("colourspace", "colorspace"):
        body = infer_body([("image", frame)], parameters={name: "scene_linear"})
        np.testing.assert_array_equal(outputs_of(infer(server, "identity", body))["image"], frame)


def test_frames_are_converted_from_and_back_to_the_request_colourspace(server):
    grey = np.full((4, 5, 3), 0.5, dtype=np.float32)  # sRGB-encoded mid grey
    body = infer_body([("image", grey)], parameters={"gain": 2.0, "colourspace": "srgb"})
    image = outputs_of(infer(server, "knobby", body))["image"]

    def decode(v: float) -> float:
        return ((v + 0.055) / 1.055) ** 2.4

    def encode(v: float) -> float:
        return 1.055 * v ** (1 / 2.4) - 0.055

    # knobby doubles the linear light: sRGB 0.5 comes back near 0.686, not 1.0.
    np.testing.assert_allclose(image, encode(2 * decode(0.5)), rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    ("colourspace", "fragments"),
    [("no_such_space", ["unknown colourspace 'no_such_space'"]), (5, ["'colourspace'"])],
    ids=["unknown", "not-a-string"],
)
def test_bad_colourspace_is_400(server, colourspace, fragments):
    body = infer_body(
        [("image", random_frame(25, height=4, width=4))], parameters={"colourspace": colourspace}
    )
    infer(server, "identity", body).error(400, *fragments)
    assert_still_serving(server)


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
        (b"{not json", ["not valid JSON"]),
        (b"[1, 2]", ["JSON object"]),
        (b'{"parameters": {}}', ["'inputs'"]),
        (b'{"inputs": []}', ["'inputs'"]),
        (b"", ["not valid JSON"]),
    ],
    ids=["bad-json", "not-object", "no-inputs", "empty-inputs", "empty-body"],
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


def test_server_readiness_is_503_once_close_begins():
    closing = start_server()
    client = RawClient(closing)
    try:
        ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        client.send(ready)
        assert client.read_response().status == 200
        closing.close()  # stops accepting; the open connection is still answered
        assert not closing.is_ready()
        client.send(ready)
        reply = client.read_response()
        assert reply.status == 503
        assert reply.json() == {"ready": False}
    finally:
        client.close()
        closing.close()


# --- malformed HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (b"HELLO THERE\r\n\r\n", ["malformed request line"]),
        (b"GET /v2/health/live HTTP/1.1\r\nHost x\r\n\r\n", ["malformed header", "Host x"]),
        (
            b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
            ["Content-Length", "'ten'"],
        ),
        (
            b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            ["Content-Length"],
        ),
        (
            b"POST /v2/models/identity/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            ["chunk size"],
        ),
    ],
    ids=["request-line", "header-colon", "content-length", "negative-length", "chunk-size"],
)
def test_malformed_http_is_400_and_closes(server, raw, data, fragments):
    raw.send(data)
    reply = raw.read_response()
    reply.error(400, *fragments)
    assert reply.headers["connection"] == "close"
    assert raw.at_eof()
    assert_still_serving(server)


def test_content_length_of_a_non_ascii_digit_is_400(server, raw):
    raw.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n")
    try:
        reply = raw.read_response()
    finally:
        raw.wait_for_server_thread()
    reply.error(400, "Content-Length")


def test_negative_chunk_size_is_400(server, raw):
    raw.send(b"POST /v2/models/identity/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n")
    try:
        reply = raw.read_response()
    finally:
        raw.wait_for_server_thread()
    reply.error(400, "chunk size")


def test_a_body_cut_short_is_400_and_the_server_survives(server, raw):
    raw.send(
        b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        + b"{" * 10
    )
    raw.sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
    raw.read_response().error(400, "10 of 100 bytes")
    raw.close()
    assert_still_serving(server)


def test_a_stalled_client_gets_408_while_others_are_served():
    stalling = start_server(read_timeout=STALL_TIMEOUT)
    stalled = RawClient(stalling)
    try:
        stalled.send(
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            + b"{" * 10
        )
        assert request(stalling, "GET", "/v2/health/live").status == 200
        assert not stalled.has_data(), "the stalled client was answered before the other one"
        assert_still_serving(stalling)
        reply = stalled.read_response()  # waits for the read timeout
        reply.error(408, "request incomplete")
        assert stalled.at_eof()
    finally:
        stalled.close()
        stalling.close()


# --- HTTP mechanics -------------------------------------------------------------------------


def test_keep_alive_serves_two_requests_on_one_connection(server):
    host, port = server.http_address
    conn = http.client.HTTPConnection(host, port, timeout=HANG_GUARD)
    try:
        conn.request("GET", "/v2/health/live")
        first = conn.getresponse()
        assert first.read() == b'{"live": true}'
        assert first.getheader("Connection") == "keep-alive"
        sock = conn.sock
        assert sock is not None
        body, headers = infer_body([("image", random_frame(18, height=3, width=3))])
        conn.request("POST", "/v2/models/identity/infer", body=body, headers=headers)
        second = conn.getresponse()
        second.read()
        assert second.status == 200
        assert conn.sock is sock, "http.client had to reconnect: the connection was not kept"
    finally:
        conn.close()


def test_connection_close_is_honoured(raw):
    raw.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    reply = raw.read_response()
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert raw.at_eof()


def test_http_1_0_closes_by_default(raw):
    raw.send(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    reply = raw.read_response()
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert raw.at_eof()


def test_expect_100_continue_is_answered_before_the_body(raw):
    frame = random_frame(19, height=3, width=5)
    body, headers = infer_body([("image", frame)])
    headers |= {"Expect": "100-continue", "Content-Length": str(len(body))}
    raw.send(http_head("POST", "/v2/models/identity/infer", headers))
    status, _ = raw.read_head()  # before any of the body is sent
    assert status == 100
    raw.send(body)
    reply = raw.read_response()
    np.testing.assert_array_equal(outputs_of(reply)["image"], frame)


def test_chunked_request_body_is_accepted(raw):
    frame = random_frame(20, height=3, width=5)
    body, headers = infer_body([("image", frame)])
    chunks = [body[i : i + 50] for i in range(0, len(body), 50)]
    encoded = b"".join(b"%x;part=1\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    headers["Transfer-Encoding"] = "chunked"
    raw.send(http_head("POST", "/v2/models/identity/infer", headers) + encoded + b"0\r\n\r\n")
    np.testing.assert_array_equal(outputs_of(raw.read_response())["image"], frame)


def test_head_on_a_get_path_has_headers_and_no_body(raw):
    raw.send(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers = raw.read_head()
    assert status == 200
    assert headers["content-length"] == str(len(b'{"live": true}'))
    # The same connection goes on: a body sent after the HEAD answer would come first here.
    raw.send(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = raw.read_response()
    assert reply.status == 200
    assert reply.body == b'{"live": true}'


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
