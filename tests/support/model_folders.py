"""Helpers for the version and hot-reload tests: model folders written as real files, and calls.

The plug-ins written here scale their input by a factor (``output = input x factor``), so a
result tells which version of a model answered it.
"""

from __future__ import annotations

import http.client
import json
import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from frameserve.serve.server import FrameServer
from tests.support.node_client import NodeClient, decode_image

__all__ = [
    "HANG_GUARD",
    "frame",
    "http_call",
    "http_infer",
    "index_of",
    "menu",
    "node_infer",
    "scale_source",
    "wait_for",
    "write_file",
    "write_model",
]

#: Upper bound on any wait in these tests: a guard against hanging, never a speed target.
HANG_GUARD = 10.0


def scale_source(
    model_id: str,
    factor: float,
    *,
    label: str = "",
    version: str | None = None,
    gate: Path | None = None,
) -> str:
    """Return a ``model.py`` whose model multiplies its input by ``factor``.

    With a ``gate`` folder, each call of ``predict`` creates a file ``started-*`` there, then
    waits until a file ``release`` is there too (for at most :data:`HANG_GUARD` seconds), so a
    test holds requests running for as long as it needs.
    """
    declared = "" if version is None else f"    version = {version!r}\n"
    gate_text = "" if gate is None else str(gate)
    return textwrap.dedent(
        f'''
        """Test model {model_id}: its input times {factor}."""

        import time
        import uuid
        from pathlib import Path

        from frameserve import Model


        class Scale(Model):
            id = {model_id!r}
            label = {label or model_id.title()!r}
        {declared}
            def predict(self, frames, knobs):
                gate = {gate_text!r}
                if gate:
                    (Path(gate) / f"started-{{uuid.uuid4().hex}}").touch()
                    end = time.monotonic() + {HANG_GUARD!r}
                    while not (Path(gate) / "release").exists() and time.monotonic() < end:
                        time.sleep(0.01)
                return frames["image"] * {factor!r}
        '''
    )


def gated_source(gate: Path, model_id: str = "gated") -> str:
    """A model that marks each call's start in ``gate/started-<pid>-<n>``, waits (at most
    30 s) for ``gate/release`` to exist, then marks its end in ``gate/ended-<pid>-<n>``."""
    return textwrap.dedent(
        f'''
        """Waits at a gate; tells each call's start and end, with its process id."""

        import os
        import time
        import uuid
        from pathlib import Path

        from frameserve import ImageSpec, Model


        class Gated(Model):
            id = {model_id!r}
            cacheable = False
            inputs = (ImageSpec("image", channels=3),)
            outputs = (ImageSpec("image", channels=3),)

            def predict(self, frames, knobs):
                gate = Path({str(gate)!r})
                call = f"{{os.getpid()}}-{{uuid.uuid4().hex}}"
                (gate / f"started-{{call}}").touch()
                end = time.monotonic() + 30.0
                while not (gate / "release").exists() and time.monotonic() < end:
                    time.sleep(0.01)
                (gate / f"ended-{{call}}").touch()
                return frames["image"]
        '''
    )


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` at once (a temporary file renamed over it), as editors do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{time.monotonic_ns()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_model(folder: Path, source: str) -> Path:
    """Write ``source`` as ``folder/model.py``; return the folder."""
    write_file(folder / "model.py", source)
    return folder


def frame(seed: int = 0, *, height: int = 6, width: int = 7) -> np.ndarray:
    """Return a float32 ``(3, H, W)`` frame of distinct scene-linear values."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 2.0, size=(3, height, width)).astype(np.float32)


def http_call(
    server: FrameServer, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """Send one HTTP request to ``server``; return the status and the JSON answer."""
    conn = http.client.HTTPConnection(*server.http_address, timeout=HANG_GUARD)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def http_infer(
    server: FrameServer, model: str, image: np.ndarray, *, version: str | None = None
) -> tuple[int, Any]:
    """Run a ``(C, H, W)`` frame through ``model`` over HTTP (JSON tensors).

    Returns the status and, on success, ``(model_version, output (C, H, W))``; else the JSON.
    """
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    tensor = {"name": "image", "datatype": "FP32", "shape": list(hwc.shape)}
    tensor["data"] = hwc.reshape(-1).tolist()
    where = f"/v2/models/{model}" + ("" if version is None else f"/versions/{version}")
    status, answer = http_call(server, "POST", f"{where}/infer", {"inputs": [tensor]})
    if status != 200:
        return status, answer
    output = answer["outputs"][0]
    pixels = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    return status, (answer["model_version"], pixels.transpose(2, 0, 1))


def index_of(server: FrameServer) -> dict[tuple[str, str], dict[str, Any]]:
    """The HTTP repository index, by (name, version)."""
    status, index = http_call(server, "POST", "/v2/repository/index", {})
    assert status == 200, index
    return {(item["name"], item["version"]): item for item in index}


def menu(server: FrameServer) -> dict[str, str]:
    """The MLClient info reply: label by model name."""
    host, port = server.mlclient_address
    reply = NodeClient(host, port, timeout=HANG_GUARD).info()
    assert not reply.HasField("error"), reply.error.msg
    return {model.name: model.label for model in reply.r1.models}


def node_infer(server: FrameServer, model: str, image: np.ndarray) -> np.ndarray:
    """Run a ``(C, H, W)`` frame through ``model`` the way the MLClient node does."""
    host, port = server.mlclient_address
    node = NodeClient(host, port, timeout=HANG_GUARD)
    reply = node.infer(node.model(model), [image])
    assert not reply.HasField("error"), reply.error.msg
    return decode_image(reply.r2.images[0])


def wait_for(condition: Callable[[], object], *, what: str, timeout: float = HANG_GUARD) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
