"""Benchmark the HTTP API against the MLClient protocol and a raw loopback echo, in one run.

For 1920x1080 and 3840x2160 RGB float32 frames through the ``identity`` model:

- **HTTP binary**: ``POST /v2/models/identity/infer`` with the binary tensor data extension on a
  kept-alive connection, the reply read into one preallocated buffer (a lean client standing in
  for any efficient one); also the same through ``frameserve.client``;
- **MLClient**: the same frame through the MLClient protocol (as ``mlclient_roundtrip.py``);
- **raw echo**: the HTTP request's bytes echoed by a plain TCP server in another process.

Target: HTTP binary at most 1.2x the raw echo.

Then whole shots: ``frameserve run identity`` over a sequence of 1080p half-float EXR frames
(100 by default), ``--local`` and ``--server`` (a server started for it), each a
``python -m frameserve`` subprocess. Reported per run: the wall time (process start-up
included) and the run's own rate (its summary line: reading, running and writing only).
Target: ``--server`` within 1.2x of ``--local`` (run time).

**Before and after in one run**: ``--compare-src /work/baseline/src`` runs everything again
with ``PYTHONPATH`` pointing at another checkout's ``src`` (its own server, its own
``frameserve run``); both trees' figures are printed side by side, measured on the same
machine at the same time.

Usage::

    python benchmarks/http_roundtrip.py [--repeats 15] [--frames 100] [--skip-sequence]
    python benchmarks/http_roundtrip.py --compare-src /work/baseline/src [--skip-roundtrip]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
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
TARGET = 1.2
SEQUENCE_TARGET = 1.2


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


@dataclass(frozen=True)
class SequenceRun:
    """One ``frameserve run`` over the sequence: wall time and the run's own rate."""

    frames: int
    seconds: float  # the whole command, process start-up included
    frames_per_second: float  # from the run's summary line: start-up left out

    @property
    def wall_rate(self) -> float:
        """Frames per second of the whole command."""
        return self.frames / self.seconds if self.seconds else 0.0


_SUMMARY = re.compile(r"frameserve run: done: (\d+) frames: \1 written .*\(([0-9.]+) frames/s\)")


def run_sequence(
    pattern: str, output: str, count: int, backend: list[str], *, src: Path, model: str
) -> SequenceRun:
    """Run ``python -m frameserve run MODEL`` (from ``src``) over the sequence; time it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    env.pop("FRAMESERVE_MODELS", None)
    command = [sys.executable, "-m", "frameserve", "run", model, "--input", pattern]
    command += ["--output", output, "--frames", f"1-{count}", "--overwrite", *backend]
    start = time.perf_counter()
    finished = subprocess.run(
        command,
        env=env,
        cwd=Path(output).parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    summary = _SUMMARY.search(finished.stderr)
    if finished.returncode != 0 or summary is None:
        raise RuntimeError(
            f"{' '.join(command)} failed ({finished.returncode}):\n{finished.stderr[-2000:]}"
        )
    return SequenceRun(count, seconds, float(summary.group(2)))


def measure_sequences(
    trees: dict[str, Path], *, frames: int, repeats: int, model: str
) -> dict[str, dict[str, SequenceRun]]:
    """Time ``--local`` and ``--server`` runs of each tree (its own server); best of repeats.

    The runs of the trees alternate (local and server of one tree, then of the next, then
    again), so that a change in the machine's load touches every figure alike.
    """
    folder = Path(tempfile.mkdtemp(prefix="frameserve-bench-"))
    best: dict[str, dict[str, SequenceRun]] = {label: {} for label in trees}
    try:
        pattern = write_sequence(folder, frames)
        with ExitStack() as stack:
            urls = {}
            for label, src in trees.items():
                mlclient_port, http_port = free_port(), free_port()
                stack.enter_context(started_server(mlclient_port, http_port=http_port, src=src))
                urls[label] = f"http://127.0.0.1:{http_port}"
            for _ in range(repeats):
                for label, src in trees.items():
                    output = str(folder / f"out_{label}.####.exr")
                    backends = {"local": ["--local"], "server": ["--server", urls[label]]}
                    for where, flags in backends.items():
                        result = run_sequence(pattern, output, frames, flags, src=src, model=model)
                        kept = best[label].get(where)
                        if kept is None or result.seconds < kept.seconds:
                            best[label][where] = result
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return best


def sequence_report(
    results: dict[str, dict[str, SequenceRun]], *, frames: int, repeats: int, model: str
) -> str:
    """The table of the sequence runs: wall time, rates, and --server against --local."""
    lines = [
        f"frameserve run {model}, {frames} frames 1920x1080 half EXR in, float EXR out; "
        f"best of {repeats}; {os.cpu_count()} CPUs",
        f"{'tree':>8} {'where':>7} {'wall s':>8} {'frames/s':>9} {'run frames/s':>13}"
        f"   target --server <= {SEQUENCE_TARGET:g}x --local",
    ]
    for label, runs in results.items():
        for where in ("local", "server"):
            run = runs[where]
            lines.append(
                f"{label:>8} {where:>7} {run.seconds:8.2f} {run.wall_rate:9.2f} "
                f"{run.frames_per_second:13.2f}"
            )
        ratio = runs["server"].seconds / runs["local"].seconds
        loop = runs["local"].frames_per_second / runs["server"].frames_per_second
        verdict = "ok" if ratio <= SEQUENCE_TARGET else "MISSED"
        lines.append(
            f"{label:>8} --server / --local: {ratio:.2f}x wall, {loop:.2f}x run loop  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--frames", type=int, default=100, help="sequence length")
    parser.add_argument("--skip-sequence", action="store_true")
    parser.add_argument("--skip-roundtrip", action="store_true")
    parser.add_argument(
        "--sequence-repeats", type=int, default=1, help="runs of each sequence (best kept)"
    )
    parser.add_argument("--model", default="identity", help="model of the sequence runs")
    parser.add_argument(
        "--compare-src",
        type=Path,
        metavar="SRC",
        help="also measure another checkout's src folder (e.g. /work/baseline/src)",
    )
    args = parser.parse_args(argv)
    trees = {"this": REPO_ROOT / "src"}
    if args.compare_src is not None:
        if not (args.compare_src / "frameserve" / "__init__.py").is_file():
            parser.error(f"--compare-src {args.compare_src}: no frameserve package there")
        trees["compare"] = args.compare_src.resolve()
    if not args.skip_roundtrip:
        for label, src in trees.items():
            roundtrip_table(label, src, repeats=args.repeats)
    if not args.skip_sequence:
        results = measure_sequences(
            trees, frames=args.frames, repeats=args.sequence_repeats, model=args.model
        )
        print(
            sequence_report(
                results, frames=args.frames, repeats=args.sequence_repeats, model=args.model
            )
        )
    return 0


def roundtrip_table(label: str, src: Path, *, repeats: int) -> None:
    """Print the round-trip table of the server from ``src`` (``label`` names the tree)."""
    mlclient_port, http_port = free_port(), free_port()
    print(
        f"HTTP round trip ({label}: {src}), identity model, RGB float32; median of {repeats}; "
        f"{os.cpu_count()} CPUs"
    )
    with (
        started_server(mlclient_port, http_port=http_port, src=src),
        echo_server() as echo_port,
    ):
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
                repeats=repeats,
            )
            ratio = result["http"] / result["echo"]
            verdict = "ok" if ratio <= TARGET else "MISSED"
            client_ms = f"{result['client']:.1f}" if "client" in result else "-"
            print(
                f"{size[0]}x{size[1]:<5} {result['echo']:8.1f}ms {result['http']:8.1f}ms "
                f"{ratio:5.2f}x {client_ms:>7}ms {result['mlclient']:8.1f}ms  {verdict}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
