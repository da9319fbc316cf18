"""Shared pieces of the training tests: tiny data and fast settings (importable by children)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from frameserve.media.imageio import write_image
from frameserve.serve.server import FrameServer
from frameserve.training import FramePair, ImagePairs, TrainingSettings
from tests.support.node_client import NodeClient


def fast_settings(**overrides: object) -> TrainingSettings:
    """Settings for a tiny, quick job: small network, 16-pixel crops, 2 crops a step."""
    options: dict[str, object] = {
        "network": "small",
        "crop_size": 16,
        "batch_size": 2,
        "steps": 6,
        "checkpoint_interval": 0,
        "validation_interval": 0,
        "contact_sheet_interval": 0,
    }
    options.update(overrides)
    return TrainingSettings(**options)  # type: ignore[arg-type]


def the_look(frame: np.ndarray) -> np.ndarray:
    """A simple transform to learn: a gain and an offset, per channel."""
    gains = np.array([0.8, 1.1, 0.6], np.float32)[: frame.shape[0], None, None]
    return (frame * gains + 0.05).astype(np.float32)


def random_pair(seed: int, height: int, width: int, channels: int = 3) -> FramePair:
    """A pair of random frames related by :func:`the_look`."""
    frame = np.random.default_rng(seed).random((channels, height, width), dtype=np.float32)
    return FramePair(input=frame, target=the_look(frame), name=f"random {seed}")


def small_pairs() -> ImagePairs:
    """Two training pairs of odd sizes and one validation pair."""
    return ImagePairs(
        [random_pair(1, 37, 45), random_pair(2, 40, 33)], validation=[random_pair(3, 35, 41)]
    )


#: Job settings (JSON) for a quick job on tiny frames, as a client sends them.
SETTINGS = {
    "network": "small",
    "crop_size": 32,
    "batch_size": 2,
    "checkpoint_interval": 4,
    "validation_interval": 4,
    "contact_sheet_interval": 4,
}


def write_pairs(folder: Path, count: int = 2) -> list[list[str]]:
    """Write ``count`` tiny EXR input/target pairs; return their paths."""
    pairs = []
    for index in range(count):
        frame = np.random.default_rng(index).random((3, 40, 48), dtype=np.float32)
        source, target = folder / f"in.{1001 + index}.exr", folder / f"gt.{1001 + index}.exr"
        write_image(source, frame)
        write_image(target, the_look(frame))
        pairs.append([str(source), str(target)])
    return pairs


def dead_pid() -> int:
    """Return the id of a process that has ended (as a killed writer's is)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


# -- attacking a server: requests, crafted images, memory and liveness -----------------------

#: Upper bound on any wait for an answer: a guard against hanging, never a speed target.
ANSWER_GUARD = 30.0
#: How long a door may take to answer a tiny request while a job's frames are read: a
#: liveness check (the doors are not frozen), generous for a loaded 2-core machine, not a
#: speed target.
LIVENESS_BOUND = 2.0


def api(
    server: FrameServer,
    method: str,
    path: str,
    body: object = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """Send one request (a JSON ``body`` or ``raw`` bytes); return the status and the
    decoded answer (JSON, else the bytes)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        server.http_url + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_GUARD) as answer:
            payload, status = answer.read(), answer.status
            kind = answer.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        payload, status, kind = exc.read(), exc.code, exc.headers.get("content-type", "")
        exc.close()
    return status, json.loads(payload) if kind.startswith("application/json") else payload


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_zeros(
    path: Path, width: int, height: int, *, rows: int | None = None, padding: int = 0
) -> Path:
    """Write an 8-bit RGB PNG of ``width`` x ``height`` black pixels, compressed row by row
    (an 8000x8000 one is 187 KB); ``rows``: only that many rows of pixel data (a file whose
    header claims more than it holds: only a header check is safe on it); ``padding``: bytes
    of an ancillary chunk that readers skip (a file as large as a real one of that size)."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    parts = [packer.compress(row) for _ in range(height if rows is None else rows)]
    parts.append(packer.flush() if rows is None else packer.flush(zlib.Z_SYNC_FLUSH))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
    if padding:
        data += png_chunk(b"fsPd", b"\x00" * padding)
    data += png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


class PeakMemory:
    """The growth of this process's peak resident memory (the server runs in it) over a block.

    ``with PeakMemory() as peak: ...`` then ``peak.growth`` (bytes). Linux: the peak
    (``VmHWM``) is reset at the start through ``/proc/self/clear_refs``.
    """

    def __enter__(self) -> PeakMemory:
        Path("/proc/self/clear_refs").write_text("5")
        self.start = _status_bytes("VmRSS")
        self.growth = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = _status_bytes("VmHWM") - self.start


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def door_answer_times(server: FrameServer) -> tuple[float, float]:
    """Return how long the HTTP door took to answer a health request and the MLClient door an
    info request (each on a new connection)."""
    started = time.monotonic()
    status, _ = api(server, "GET", "/v2/health/live")
    http_seconds = time.monotonic() - started
    assert status == 200
    host, port = server.mlclient_address
    started = time.monotonic()
    models = NodeClient(host, port, timeout=ANSWER_GUARD).info().r1.models
    mlclient_seconds = time.monotonic() - started
    assert models
    return http_seconds, mlclient_seconds


def files_under(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (hidden ones too), relative, sorted."""
    if not folder.exists():
        return []
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


#: Settings of a job that trains until it is stopped, with a checkpoint every second step.
LONG = {**SETTINGS, "steps": 100_000, "checkpoint_interval": 2, "validation_interval": 2}


def submit_long_job(server: FrameServer, frames: Path, name: str) -> None:
    """Start job ``name`` over HTTP on the pairs in ``frames`` (``in.1001.exr``/``gt.1001.exr``
    and so on, as :func:`write_pairs` writes them), with :data:`LONG` settings."""

    def pair(number: int) -> list[str]:
        return [str(frames / f"in.{number}.exr"), str(frames / f"gt.{number}.exr")]

    body = {"name": name, "pairs": [pair(1001), pair(1002)], "validation": [pair(1003)]}
    status, job = api(server, "POST", "/v2/training/jobs", {**body, "settings": LONG})
    assert status == 201, job


def job_of(server: FrameServer, name: str) -> dict[str, Any]:
    """Job ``name``'s status from the HTTP API."""
    status, job = api(server, "GET", f"/v2/training/jobs/{name}")
    assert status == 200, job
    return dict(job)


def wait_for_state(
    server: FrameServer, name: str, *states: str, timeout: float = ANSWER_GUARD
) -> dict[str, Any]:
    """Job ``name``'s status once it is in one of ``states`` (fails after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while (job := job_of(server, name))["state"] not in states:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job
