"""Talking HTTP to a test server: raw requests, inference bodies, decoded replies.

``request`` and ``infer`` send one request on a new ``http.client`` connection; ``RawClient``
speaks hand-written HTTP over a socket, so the exact status, headers and body can be seen;
``triton_input`` and ``triton_identity`` drive the standard client, ``tritonclient.http``.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.http as triton_http

from frameserve.serve.server import FrameServer

#: Upper bound on any wait for a reply: a guard against hanging, never a speed target.
HANG_GUARD = 20.0
#: Numpy types of the tensor datatypes the API speaks.
NUMPY_TYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}


def random_frame(seed: int, *, height: int = 23, width: int = 37, channels: int = 3) -> np.ndarray:
    """Return a float32 ``[H, W, C]`` frame of scene-linear values (some above 1, some below 0)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 4.0, size=(height, width, channels)).astype(np.float32)


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
