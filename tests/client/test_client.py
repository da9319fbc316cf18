"""``frameserve.client`` against the real server on loopback: the promises its docstrings make.

- health, metadata and every model (the failed one too, with its reason) are one call away;
- frames come back bit for bit where the model does not change them, binary or JSON, whatever
  dtype they were sent as;
- knob values, result objects and multi-input models work by name and by order;
- every failure is one typed exception carrying the server's message;
- connection failures are retried (and counted), timeouts and error statuses never are.
"""

from __future__ import annotations

import inspect
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data

import frameserve.client as fc
from frameserve.client import (
    BadRequestError,
    Client,
    ClientError,
    ConnectError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeout,
    ServiceUnavailableError,
)
from frameserve.client import _exceptions as exceptions_module
from frameserve.client._tensors import as_input, encode_request
from frameserve.errors import FrameServeError
from frameserve.serve.server import FrameServer
from tests.support.servers import start_server

#: Upper bound on any wait: a guard against hanging, never a speed target.
HANG_GUARD = 20.0


# --- frames --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo, ``(512, 512, 3)`` uint8, top row first."""
    image = skimage.data.astronaut()
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    return image


@pytest.fixture(scope="module")
def plate(photo: np.ndarray) -> np.ndarray:
    """The photo as a scene-linear float32 plate: values above 1 and below 0, as in VFX."""
    return (photo.astype(np.float32) / 255.0) ** 2.2 * 6.0 - 0.25


# --- servers and clients -------------------------------------------------------------------


@pytest.fixture
def client(server: FrameServer) -> Iterator[Client]:
    """A client of the module's server (``tests/conftest.py``: the test models, HTTP on)."""
    with Client(server.http_url, timeout=HANG_GUARD, retries=0) as c:
        yield c


def free_port() -> int:
    """Return a loopback port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DroppingListener:
    """A listener that accepts each connection and closes it at once, counting them.

    This is the "server went away before answering" fault, made by a real socket.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# --- the public names and the exception tree ------------------------------------------------


def test_all_is_sorted_and_every_name_exists() -> None:
    names = list(fc.__all__)
    assert names == sorted(names) and len(names) == len(set(names))
    assert [name for name in names if not hasattr(fc, name)] == []
    assert {"Client", "InferResult", "ModelInfo", "ClientError"} <= set(names)
    assert {"AuthenticationError", "PermissionDeniedError"} <= set(names)
    assert fc.AuthenticationError(401, "x").status == 401


def test_the_docstring_tree_is_the_real_tree() -> None:
    doc = exceptions_module.__doc__
    assert doc is not None
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(?P<prefix> {4}[ │├└─]*)(?P<name>[A-Z][A-Za-z]+)\s", line)
        if match is None:
            continue
        indent = len(match["prefix"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents[match["name"]] = stack[-1][1] if stack else None
        stack.append((indent, match["name"]))
    classes = {
        name: obj
        for name, obj in vars(exceptions_module).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    }
    assert set(parents) == set(classes)
    assert parents["FrameServeError"] is None
    for name, parent in parents.items():
        if parent is not None:
            assert classes[name].__bases__ == (classes[parent],), f"{name} is drawn under {parent}"
    public = {n for n in fc.__all__ if inspect.isclass(getattr(fc, n))}
    assert set(classes) - {"FrameServeError"} <= public


# --- health and models ---------------------------------------------------------------------


def test_live_ready_and_metadata(client: Client) -> None:
    assert client.live() is True
    assert client.ready() is True
    metadata = client.server_metadata()
    assert metadata["name"] == "frameserve"
    assert "binary_tensor_data" in metadata["extensions"]


def test_models_lists_builtins_test_models_and_the_failed_one(client: Client) -> None:
    models = {m.name: m for m in client.models()}
    assert {"identity", "blur", "difference", "knobby", "slow", "broken_import"} <= set(models)
    assert all(models[n].state == "READY" for n in ("identity", "blur", "difference", "knobby"))
    assert models["difference"].inputs == (("a", 3), ("b", 3))
    assert models["blur"].outputs == (("image", 3),)
    assert models["blur"].label == "Gaussian Blur"
    broken = models["broken_import"]
    assert broken.state == "UNAVAILABLE" and not broken.ready
    assert "broken on purpose" in broken.reason


def test_model_gives_every_kind_of_knob(client: Client) -> None:
    info = client.model("knobby")
    assert info.ready and info.version == "1" and info.inputs == (("image", 3),)
    knobs = {k["name"]: k for k in info.knobs}
    assert [k["type"] for k in info.knobs] == ["bool", "int", "float", "string", "choice", "button"]
    assert knobs["steps"]["default"] == 2 and (knobs["steps"]["min"], knobs["steps"]["max"]) == (
        1,
        10,
    )
    assert knobs["gain"]["max"] == 4.0
    assert knobs["mode"]["choices"] == ["fast", "best"]
    assert knobs["note"]["default"] == "hello"


def test_a_model_that_failed_to_load_is_unavailable_with_its_reason(
    client: Client, plate: np.ndarray
) -> None:
    info = client.model("broken_import")
    assert info.state == "UNAVAILABLE"
    assert "broken on purpose" in info.reason
    with pytest.raises(ServiceUnavailableError, match="failed to load"):
        client.infer("broken_import", {"image": plate})


def test_unknown_model_is_not_found(client: Client, plate: np.ndarray) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.model("no_such_model")
    assert caught.value.status == 404 and "no_such_model" in caught.value.message
    with pytest.raises(NotFoundError, match="no_such_model"):
        client.infer("no_such_model", {"image": plate})
    with pytest.raises(NotFoundError, match="version"):
        client.infer("identity", plate, version="2")


# --- inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_identity_returns_the_exact_frame(client: Client, plate: np.ndarray, binary: bool) -> None:
    sent = plate if binary else plate[200:296, 180:308]  # JSON is slow: a crop of the face
    result = client.infer("identity", sent, binary=binary, version="1", request_id="sh010.1001")
    frame = result.frames["image"]
    assert frame.dtype == np.float32 and frame.shape == sent.shape
    np.testing.assert_array_equal(frame, sent)  # bit for bit, values above 1 and below 0 too
    assert (result.model_name, result.model_version, result.id) == ("identity", "1", "sh010.1001")
    assert result.objects == []


def test_fp16_and_uint8_inputs(client: Client, photo: np.ndarray, plate: np.ndarray) -> None:
    half = plate.astype(np.float16)
    np.testing.assert_array_equal(client.infer("identity", half).frame, half.astype(np.float32))
    from_bytes = client.infer("identity", photo).frame  # UINT8: 0-255 arrives as 0-1
    assert from_bytes.dtype == np.float32
    np.testing.assert_allclose(from_bytes, photo / 255.0, atol=1e-6)
    as_float64 = client.infer("identity", plate.astype(np.float64)).frame
    np.testing.assert_array_equal(as_float64, plate)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_output_datatypes(client: Client, photo: np.ndarray, binary: bool) -> None:
    photo = photo if binary else photo[200:296, 180:308]
    frames = {"image": photo}
    as_bytes = client.infer("identity", frames, output_datatype="UINT8", binary=binary).frame
    assert as_bytes.dtype == np.uint8
    np.testing.assert_array_equal(as_bytes, photo)
    as_half = client.infer("identity", frames, output_datatype="FP16", binary=binary).frame
    assert as_half.dtype == np.float16
    np.testing.assert_allclose(as_half, photo / 255.0, atol=1e-3)
    with pytest.raises(ValueError, match="FP64"):
        client.infer("identity", frames, output_datatype="FP64")


def test_binary_outputs_are_writable_views_of_one_buffer(client: Client, plate: np.ndarray) -> None:
    frame = client.infer("identity", plate).frame
    assert frame.flags.writeable and not frame.flags.owndata
    frame += 1.0  # a caller may work on the result in place


def test_binary_tensors_start_aligned_both_ways(client: Client, plate: np.ndarray) -> None:
    """Both JSON headers are padded, so frames land aligned (image writers need that)."""
    for request_id in ("", "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg"):
        encoded = encode_request(
            [as_input("image", plate)],
            parameters={"binary_data_output": True},
            outputs=None,
            binary=True,
            request_id=request_id,
        )
        header = bytes(encoded.body[0])
        assert len(header) % 8 == 0 and json.loads(header)["id"] == request_id
        result = client.infer("identity", plate, request_id=request_id)
        assert result.frame.flags.aligned and result.id == request_id
        np.testing.assert_array_equal(result.frame, plate)


def test_knob_values_reach_the_model_and_objects_come_back(
    client: Client, plate: np.ndarray
) -> None:
    knobs = {"invert": True, "steps": 7, "gain": 2.5, "note": "shot 42", "mode": "best"}
    for binary, sent in ((True, plate), (False, plate[200:296, 180:308])):
        result = client.infer("knobby", sent, knobs={**knobs, "report": True}, binary=binary)
        assert result.objects == [{"name": "knobs", "records": [{**knobs, "report": True}]}]
        np.testing.assert_allclose(result.frames["image"], -sent * 2.5, rtol=1e-6)
    quiet = client.infer("knobby", plate, knobs={"gain": np.float32(0.5)})  # numpy scalars too
    assert quiet.objects == []
    np.testing.assert_allclose(quiet.frame, plate * 0.5, rtol=1e-6)


def test_difference_by_order_and_by_name(client: Client, plate: np.ndarray) -> None:
    shifted = np.roll(plate, 9, axis=1)
    expected = np.abs(plate - shifted) * np.float32(3.0)
    by_order = client.infer("difference", [plate, shifted], knobs={"gain": 3.0}).frame
    by_name = client.infer("difference", {"b": shifted, "a": plate}, knobs={"gain": 3.0}).frame
    np.testing.assert_allclose(by_order, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(by_name, by_order)
    signed = client.infer("difference", (plate, shifted), knobs={"absolute": False}).frame
    np.testing.assert_allclose(signed, plate - shifted, atol=1e-6)
    with pytest.raises(ValueError, match=r"takes 2 frame\(s\) \(a, b\), got 1"):
        client.infer("difference", [plate])
    with pytest.raises(ValueError, match="pass a list"):
        client.infer("difference", plate)


def test_one_client_serves_many_threads(client: Client, plate: np.ndarray) -> None:
    def run(gain: float) -> bool:
        result = client.infer("knobby", plate[:64, :96], knobs={"gain": gain})
        return bool(np.allclose(result.frame, plate[:64, :96] * np.float32(gain), rtol=1e-6))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]))


# --- errors the server reports -------------------------------------------------------------


def test_bad_knobs_are_bad_requests_that_name_the_knob(client: Client, plate: np.ndarray) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.infer("knobby", plate, knobs={"gain": 9.0})
    assert caught.value.status == 400
    assert "gain" in caught.value.message and "maximum" in caught.value.message
    with pytest.raises(BadRequestError, match="volume"):
        client.infer("knobby", plate, knobs={"volume": 1})
    with pytest.raises(BadRequestError, match="mode"):
        client.infer("knobby", plate, knobs={"mode": "slowest"})
    assert client.infer("knobby", plate).frame.shape == plate.shape  # and it goes on serving


def test_wrong_shapes_and_inputs_are_bad_requests(client: Client, plate: np.ndarray) -> None:
    with pytest.raises(BadRequestError, match=r"looks like \[C, H, W\]"):
        client.infer("identity", np.ascontiguousarray(plate.transpose(2, 0, 1)))
    with pytest.raises(BadRequestError, match="channel"):
        client.infer("identity", plate[:, :, 0])  # (H, W) goes as one channel; identity needs 3
    with pytest.raises(BadRequestError, match="'b'"):
        client.infer("difference", {"a": plate})
    with pytest.raises(ValueError, match="expected"):
        client.infer("identity", plate[None, None])
    with pytest.raises(TypeError, match="uint16"):
        client.infer("identity", plate.astype(np.uint16))


def test_a_body_above_the_cap_is_payload_too_large(plate: np.ndarray) -> None:
    small = start_server(max_frame_bytes=1)  # the cap: 1 MiB of message overhead, a few bytes
    try:
        with Client(small.http_url, timeout=HANG_GUARD, retries=0) as client:
            with pytest.raises(PayloadTooLargeError, match="above the limit"):
                client.infer("identity", plate)  # 3 MiB
            assert client.infer("identity", plate[:64, :64]).frame.shape == (64, 64, 3)
    finally:
        small.close()


# --- connections, retries and timeouts -----------------------------------------------------


def test_a_closed_port_is_retried_with_backoff_then_connect_error() -> None:
    port = free_port()
    with Client(f"http://127.0.0.1:{port}", timeout=2.0, retries=3) as client:
        started = time.monotonic()
        with pytest.raises(ConnectError, match=r"refused.*after 4 attempts"):
            client.live()
        elapsed = time.monotonic() - started
    assert 0.1 + 0.2 + 0.4 <= elapsed < 5.0  # three pauses between four tries, no more


@pytest.mark.parametrize("retries", [0, 2])
def test_a_connection_closed_before_any_answer_is_retried(retries: int) -> None:
    listener = DroppingListener()
    try:
        url = f"http://127.0.0.1:{listener.port}"
        expected = rf"closed the connection.*after {retries + 1} attempt"
        with (
            Client(url, timeout=2.0, retries=retries) as client,
            pytest.raises(ConnectError, match=expected),
        ):
            client.infer("identity", {"image": np.zeros((4, 4, 3), np.float32)})
    finally:
        listener.close()
    assert listener.accepted == retries + 1


def test_a_kept_alive_connection_the_server_closed_is_replaced(plate: np.ndarray) -> None:
    quick = start_server(read_timeout=0.2)  # closes connections idle for 0.2 s
    try:
        with Client(quick.http_url, timeout=HANG_GUARD, retries=0) as client:
            client.infer("identity", plate[:32])
            time.sleep(0.5)
            assert client.infer("identity", plate[:32]).frame.shape == (32, 512, 3)
    finally:
        quick.close()


def test_a_slow_answer_is_a_timeout_and_is_not_retried(plate: np.ndarray) -> None:
    one_worker = start_server(workers=1)
    try:
        with Client(one_worker.http_url, timeout=0.5, retries=3) as impatient:
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match=r"no answer within 0\.5 s"):
                impatient.infer("slow", plate[:16, :16], knobs={"seconds": 2.0})
            assert time.monotonic() - started < 1.5  # one try, no retries
        with Client(one_worker.http_url, timeout=HANG_GUARD) as patient:
            # Queued behind the slow request on the one worker: the server finished it.
            assert patient.infer("identity", plate[:16, :16]).frame.shape == (16, 16, 3)
    finally:
        one_worker.close()


def test_every_client_error_is_a_frameserve_error() -> None:
    for name in fc.__all__:
        obj = getattr(fc, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, ClientError) and issubclass(obj, FrameServeError), name
    with pytest.raises(ValueError, match="http://host:port"):
        Client("ftp://127.0.0.1:8000")
    with pytest.raises(ValueError, match="timeout"):
        Client("http://127.0.0.1:8000", timeout=0)
