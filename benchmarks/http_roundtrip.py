"""Benchmark the HTTP API against the MLClient protocol and a raw loopback echo, in one run.

For 1920x1080 and 3840x2160 RGB float32 frames through the ``identity`` model:

- **HTTP binary**: ``POST /v2/models/identity/infer`` with the binary tensor data extension on a
  kept-alive connection, the reply read into one preallocated buffer (a lean client standing in
  for any efficient one); also the same through ``frameserve.client``;
- **MLClient**: the same frame through the MLClient protocol (as ``mlclient_roundtrip.py``);
- **raw echo**: the HTTP request's bytes echoed by a plain TCP server in another process.

Target: HTTP binary at most 2x the raw echo. Then the throughput of ``frameserve run`` with
``blur`` on a sequence of 1080p half-float EXR frames (100 by default), ``--local`` and through
the server, in frames per second (process start-up included).

Usage::

    python benchmarks/http_roundtrip.py [--repeats 15] [--frames 100] [--skip-sequence]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlclient_roundtrip import (
    REPO_ROOT,
    echo_round_trip,
    echo_server,
    free_port,
    started_server,
)
from tests.support.node_client import (
    NodeClient,
    frame_request,
    inference_request,
)

SIZES = ((1920, 1080), (3840, 2160))
TARGET = 2.0


def http_request_parts(frame: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Return the JSON header and binary payload of an identity request for an HWC frame."""
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(frame.shape),
                "parameters": {"binary_data_size": frame.nbytes},
            }
        ],
        "outputs": [{"name": "image", "parameters": {"binary_data": True}}],
    }
    return json.dumps(header).encode(), frame


def http_round_trip(conn: http.client.HTTPConnection, header: bytes, payload: np.ndarray) -> float:
    """POST one binary infer request on a kept-alive connection; return seconds."""
    start = time.perf_counter()
    conn.putrequest("POST", "/v2/models/identity/infer")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Inference-Header-Content-Length", str(len(header)))
    conn.putheader("Content-Length", str(len(header) + payload.nbytes))
    conn.endheaders()
    conn.send(header)
    conn.send(payload.reshape(-1).view(np.uint8).data)
    response = conn.getresponse()
    length = int(response.getheader("Content-Length", "0"))
    body = bytearray(length)
    view = memoryview(body)
    got = 0
    while got < length:
        count = response.readinto(view[got:])
        if not count:
            raise RuntimeError("HTTP reply ended early")
        got += count
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {bytes(body[:300])!r}")
    return elapsed


def check_http_identity(conn: http.client.HTTPConnection, frame: np.ndarray) -> None:
    """Check once that the HTTP identity reply holds the frame sent."""
    header, payload = http_request_parts(frame)
    conn.request(
        "POST",
        "/v2/models/identity/infer",
        body=header + payload.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    response = conn.getresponse()
    body = response.read()
    json_length = int(response.getheader("Inference-Header-Content-Length", "0"))
    returned = np.frombuffer(body, dtype=np.float32, offset=json_length).reshape(frame.shape)
    if not np.array_equal(returned, frame):
        raise RuntimeError("HTTP identity did not return the frame it was sent")


def median_ms(samples: list[float]) -> float:
    """Median of seconds, in milliseconds."""
    return statistics.median(samples) * 1000.0


def measure(
    size: tuple[int, int], *, mlclient_port: int, http_port: int, echo_port: int, repeats: int
) -> dict[str, float]:
    """Time each path for one frame size; return medians in milliseconds."""
    width, height = size
    frame = np.random.default_rng(7).random((height, width, 3), dtype=np.float32)
    header, payload = http_request_parts(frame)
    echo_bytes = b"%012d" % (len(header) + payload.nbytes) + header + payload.tobytes()
    node = NodeClient("127.0.0.1", mlclient_port, timeout=300.0, read_chunk=1 << 20)
    planar = np.ascontiguousarray(frame.transpose(2, 0, 1))
    mlclient_bytes = frame_request(inference_request(node.model("identity"), [planar]))
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=300.0)
    check_http_identity(conn, frame)
    client = _frameserve_client(http_port)
    samples: dict[str, list[float]] = {"http": [], "client": [], "mlclient": [], "echo": []}
    for round_index in range(repeats + 2):
        timings = {
            "echo": echo_round_trip(echo_port, echo_bytes),
            "http": http_round_trip(conn, header, payload),
            "mlclient": _timed(lambda: node.exchange(mlclient_bytes)),
        }
        if client is not None:
            timings["client"] = _timed(lambda: client.infer("identity", frame))
        if round_index >= 2:  # two warm-up rounds
            for key, value in timings.items():
                samples[key].append(value)
    conn.close()
    return {key: median_ms(values) for key, values in samples.items() if values}


def _timed(call: object) -> float:
    start = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - start


def _frameserve_client(http_port: int) -> object | None:
    try:
        from frameserve.client import Client
    except ImportError:
        return None
    return Client(f"http://127.0.0.1:{http_port}", timeout=300.0)


def write_sequence(folder: Path, count: int) -> str:
    """Write ``count`` 1080p half-float EXR frames; return their pattern."""
    from frameserve.media.imageio import write_image

    rng = np.random.default_rng(3)
    base = rng.random((3, 1080, 1920), dtype=np.float32)
    for frame in range(1, count + 1):
        pixels = np.roll(base, frame * 8, axis=2)
        write_image(folder / f"plate.{frame:04d}.exr", pixels, pixel_type="half")
    return str(folder / "plate.####.exr")


def run_sequence(pattern: str, output: str, count: int, backend: list[str]) -> float:
    """Run ``frameserve run blur`` over the sequence; return frames per second."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")])
    )
    command = [
        sys.executable,
        "-m",
        "frameserve",
        "run",
        "blur",
        "--input",
        pattern,
        "--output",
        output,
        "--frames",
        f"1-{count}",
        "--overwrite",
        *backend,
    ]
    start = time.perf_counter()
    subprocess.run(
        command,
        check=True,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--frames", type=int, default=100, help="sequence length")
    parser.add_argument("--skip-sequence", action="store_true")
    args = parser.parse_args(argv)
    mlclient_port, http_port = free_port(), free_port()
    print(
        f"HTTP round trip, identity model, RGB float32; median of {args.repeats}; "
        f"{os.cpu_count()} CPUs"
    )
    with started_server(mlclient_port, http_port=http_port), echo_server() as echo_port:
        print(
            f"{'size':>10} {'raw echo':>9} {'HTTP bin':>9} {'ratio':>6} {'client':>8} "
            f"{'MLClient':>9}  target HTTP <= {TARGET:g}x echo"
        )
        for size in SIZES:
            result = measure(
                size,
                mlclient_port=mlclient_port,
                http_port=http_port,
                echo_port=echo_port,
                repeats=args.repeats,
            )
            ratio = result["http"] / result["echo"]
            verdict = "ok" if ratio <= TARGET else "MISSED"
            client_ms = f"{result['client']:.1f}" if "client" in result else "-"
            print(
                f"{size[0]}x{size[1]:<5} {result['echo']:8.1f}ms {result['http']:8.1f}ms "
                f"{ratio:5.2f}x {client_ms:>7}ms {result['mlclient']:8.1f}ms  {verdict}"
            )
        if not args.skip_sequence:
            folder = Path(tempfile.mkdtemp(prefix="frameserve-bench-"))
            try:
                pattern = write_sequence(folder, args.frames)
                output = str(folder / "out.####.exr")
                local = run_sequence(pattern, output, args.frames, ["--local"])
                served = run_sequence(
                    pattern, output, args.frames, ["--server", f"http://127.0.0.1:{http_port}"]
                )
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            print(
                f"frameserve run blur, {args.frames} frames 1920x1080 half EXR "
                f"(start-up included): --local {local:.2f} frames/s, "
                f"--server {served:.2f} frames/s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
