"""Benchmark the MLClient round trip against a raw loopback echo measured in the same run.

For each frame size the same framed inference request (``identity`` model, one RGB float32
frame) goes two ways:

- **protocol**: to the frameserve MLClient server, reply read the node's way (12-digit header,
  then the body until end-of-file) but in 1 MiB ``recv_into`` reads, standing in for the
  compiled node's C++ reads;
- **raw echo**: to a plain TCP echo server in another process, which reads the 12-digit header
  and the body into a preallocated buffer, sends the body back and closes.

Both clients read into a buffer allocated per request, and neither parses protobuf inside the
timed region, so the ratio is what the server adds on top of moving the bytes. The target is a
ratio of at most 1.5 at 1920x1080 and 3840x2160. The script also times ``info`` requests on an
idle server and while another thread keeps the server busy with 1080p ``blur`` inferences
(goal: at most 50 ms).

Usage::

    python benchmarks/mlclient_roundtrip.py                      # starts its own server
    python benchmarks/mlclient_roundtrip.py --server 127.0.0.1:55555 --sizes 1920x1080 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "src", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from tests.support.node_client import (  # noqa: E402
    HEADER_SIZE,
    NodeClient,
    NodeClientError,
    decode_image,
    frame_request,
    inference_request,
    recv_until_eof,
)

from frameserve.serve.mlclient import messages as pb  # noqa: E402

logger = logging.getLogger("mlclient_roundtrip")

DEFAULT_SIZES = ((640, 360), (1920, 1080), (3840, 2160))
RATIO_TARGET = 1.5
RATIO_TARGET_MIN_WIDTH = 1920
INFO_GOAL_MS = 50.0
INFO_SAMPLES = 50
INFO_INTERVAL_S = 0.02
WARMUPS = 2
READ_CHUNK = 1 << 20
CLIENT_TIMEOUT_S = 300.0
SERVER_START_TIMEOUT_S = 60.0
BLUR_KNOBS: dict[str, object] = {"size": 20.0}


@dataclass(frozen=True)
class SizeResult:
    """Median round trips of one frame size through the protocol and through the raw echo."""

    width: int
    height: int
    request_bytes: int
    protocol_ms: float
    echo_ms: float
    ratio: float
    target: float | None
    meets_target: bool | None


@dataclass(frozen=True)
class InfoResult:
    """Info round trips on an idle server and under a concurrent 1080p blur load."""

    idle_ms: float
    under_load_ms: float | None
    under_load_max_ms: float | None
    under_load_errors: int
    blur_ms: float | None
    blur_count: int
    note: str


# --- the raw echo server (runs in a spawned process) ---------------------------------------


def _recv_exactly_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` with ``recv_into``; raise ``EOFError`` if the peer closes."""
    filled = 0
    while filled < len(view):
        received = sock.recv_into(view[filled:])
        if received == 0:
            raise EOFError(f"peer closed after {filled} of {len(view)} bytes")
        filled += received


def _echo_one(sock: socket.socket, buffer: bytearray) -> bytearray:
    """Read one framed request, send its body back, and return the (maybe grown) buffer."""
    header = bytearray(HEADER_SIZE)
    with memoryview(header) as header_view:
        _recv_exactly_into(sock, header_view)
    size = int(header)
    if len(buffer) < size:
        buffer = bytearray(size)
    with memoryview(buffer) as whole, whole[:size] as body:
        _recv_exactly_into(sock, body)
        sock.sendall(body)
    return buffer


def run_echo_server(port_pipe: Connection) -> None:
    """Serve raw echoes forever, one connection at a time; the parent learns the port by pipe."""
    listener = socket.create_server(("127.0.0.1", 0))
    port_pipe.send(listener.getsockname()[1])
    port_pipe.close()
    buffer = bytearray()
    while True:
        sock, _ = listener.accept()
        with sock:
            try:
                buffer = _echo_one(sock, buffer)
            except (OSError, EOFError, ValueError) as exc:
                logger.warning("echo server: dropped a connection: %s", exc)


@contextmanager
def echo_server() -> Iterator[int]:
    """Run the raw echo server in a spawned process and yield its port."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    process = context.Process(target=run_echo_server, args=(child_end,), daemon=True)
    process.start()
    child_end.close()
    try:
        if not parent_end.poll(SERVER_START_TIMEOUT_S):
            raise RuntimeError("the echo server process did not report its port")
        yield int(parent_end.recv())
    finally:
        parent_end.close()
        process.terminate()
        process.join(timeout=10.0)
        if process.is_alive():
            process.kill()
            process.join()


def echo_round_trip(port: int, request: bytes) -> float:
    """Send ``request`` to the echo server, read the body back until EOF; return seconds."""
    expected = len(request) - HEADER_SIZE
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(request)
        body = recv_until_eof(sock, size_hint=expected, chunk=READ_CHUNK)
    elapsed = time.perf_counter() - start
    if len(body) != expected:
        raise RuntimeError(f"echo returned {len(body)} bytes, expected {expected}")
    return elapsed


# --- the frameserve server ------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(log: IO[str], lines: int = 30) -> str:
    """Return the last lines written to a log file."""
    log.flush()
    log.seek(0)
    return "".join(log.readlines()[-lines:])


def wait_for_info(
    client: NodeClient, process: subprocess.Popen[bytes] | None, log: IO[str] | None
) -> None:
    """Poll ``info`` until the server answers without error, for at most 60 seconds."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = _tail(log) if log is not None else ""
            raise RuntimeError(f"server exited with code {process.returncode}:\n{tail}")
        try:
            reply = client.info()
        except (OSError, NodeClientError) as exc:
            last_error = str(exc)
        else:
            if not reply.HasField("error"):
                return
            last_error = reply.error.msg
        time.sleep(0.2)
    raise RuntimeError(f"server gave no info reply within 60 s; last error: {last_error}")


@contextmanager
def started_server(port: int, *, http_port: int = 0, src: Path | None = None) -> Iterator[None]:
    """Run ``python -m frameserve serve`` (from ``src``, default this checkout's) on
    127.0.0.1:port until the block exits; ``http_port`` 0 leaves the HTTP API off."""
    command = [sys.executable, "-m", "frameserve", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--http-port", str(http_port)]
    if src is None:  # the node's menu holds one segment: list what the benchmarks use first
        command += ["--mlclient-models", "identity", "blur", "*"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(src or REPO_ROOT / "src"), env.get("PYTHONPATH")])
    )
    with tempfile.TemporaryFile("w+") as log:
        cwd = (src or REPO_ROOT / "src").parent
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            client = NodeClient("127.0.0.1", port, timeout=5.0)
            wait_for_info(client, process, log)
            yield
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a subprocess, killing it if it has not exited within 10 seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- measurements ---------------------------------------------------------------------------


def _frames(model: pb.Model, width: int, height: int, seed: int) -> list[np.ndarray]:
    """Return one random RGB float32 ``(3, H, W)`` frame per model input (at least one)."""
    rng = np.random.default_rng(seed)
    count = max(1, len(model.inputs))
    return [rng.random((3, height, width), dtype=np.float32) for _ in range(count)]


def _check_identity(client: NodeClient, request: bytes, frame: np.ndarray) -> None:
    """Raise unless the identity model's reply decodes to exactly the frame that was sent."""
    reply = client.send_inference(request)
    if reply.HasField("error"):
        raise RuntimeError(f"identity inference failed: {reply.error.msg}")
    if not reply.r2.images:
        raise RuntimeError("identity inference returned no image")
    returned = decode_image(reply.r2.images[0])
    if returned.shape != frame.shape or not np.array_equal(returned, frame):
        raise RuntimeError(f"identity reply differs from the request at {frame.shape}")


def _median_ms(samples: list[float]) -> float:
    """Return the median of durations in seconds, in milliseconds."""
    return statistics.median(samples) * 1000.0


def measure_size(
    client: NodeClient, echo_port: int, model: pb.Model, size: tuple[int, int], repeats: int
) -> SizeResult:
    """Measure one frame size through the protocol and the raw echo, interleaved."""
    width, height = size
    frames = _frames(model, width, height, seed=width)
    request = frame_request(inference_request(model, frames))
    _check_identity(client, request, frames[0])
    protocol: list[float] = []
    echo: list[float] = []
    for index in range(WARMUPS + repeats):
        echo_s = echo_round_trip(echo_port, request)
        start = time.perf_counter()
        client.exchange(request)
        protocol_s = time.perf_counter() - start
        if index >= WARMUPS:
            echo.append(echo_s)
            protocol.append(protocol_s)
    protocol_ms, echo_ms = _median_ms(protocol), _median_ms(echo)
    ratio = protocol_ms / echo_ms
    target = RATIO_TARGET if width >= RATIO_TARGET_MIN_WIDTH else None
    meets = None if target is None else ratio <= target
    return SizeResult(width, height, len(request), protocol_ms, echo_ms, ratio, target, meets)


def _info_samples(client: NodeClient, count: int, interval: float) -> tuple[list[float], int]:
    """Return ``count`` info round trips (seconds) taken ``interval`` apart, and the failures."""
    samples: list[float] = []
    errors = 0
    for _ in range(count):
        start = time.perf_counter()
        try:
            reply = client.info()
        except (OSError, NodeClientError) as exc:
            errors += 1
            logger.warning("info failed: %s", exc)
        else:
            samples.append(time.perf_counter() - start)
            if reply.HasField("error"):
                errors += 1
        time.sleep(interval)
    return samples, errors


class BlurLoad:
    """A thread that keeps sending the same 1080p blur request until stopped."""

    def __init__(self, client: NodeClient, request: bytes) -> None:
        self.durations: list[float] = []
        self.error: str | None = None
        self._client = client
        self._request = request
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blur-load", daemon=True)

    def _run(self) -> None:
        """Send blur requests back to back, recording each round trip."""
        try:
            while not self._stop.is_set():
                start = time.perf_counter()
                reply = self._client.send_inference(self._request)
                if reply.HasField("error"):
                    raise RuntimeError(f"blur inference failed: {reply.error.msg}")
                self.durations.append(time.perf_counter() - start)
                self._first.set()
        except (OSError, NodeClientError, RuntimeError) as exc:
            self.error = str(exc)
        finally:
            self._first.set()

    def __enter__(self) -> BlurLoad:
        self._thread.start()
        self._first.wait(timeout=CLIENT_TIMEOUT_S)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=CLIENT_TIMEOUT_S)


def measure_info(client: NodeClient) -> InfoResult:
    """Measure info round trips on the idle server, then under a 1080p blur load."""
    idle, _ = _info_samples(client, INFO_SAMPLES, 0.0)
    reply = client.info()
    blur = next((model for model in reply.r1.models if model.name == "blur"), None)
    if blur is None:
        return InfoResult(_median_ms(idle), None, None, 0, None, 0, "no 'blur' model listed")
    frames = _frames(blur, 1920, 1080, seed=7)
    request = frame_request(inference_request(blur, frames, knobs=BLUR_KNOBS))
    with BlurLoad(client, request) as load:
        loaded, errors = _info_samples(client, INFO_SAMPLES, INFO_INTERVAL_S)
    if load.error is not None:
        return InfoResult(_median_ms(idle), None, None, errors, None, 0, load.error)
    return InfoResult(
        idle_ms=_median_ms(idle),
        under_load_ms=_median_ms(loaded) if loaded else None,
        under_load_max_ms=max(loaded) * 1000.0 if loaded else None,
        under_load_errors=errors,
        blur_ms=_median_ms(load.durations) if load.durations else None,
        blur_count=len(load.durations),
        note="",
    )


# --- report ---------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    """Return the table's word for a target check."""
    return "" if ok is None else ("ok" if ok else "MISSED")


def format_report(sizes: list[SizeResult], info: InfoResult, repeats: int) -> str:
    """Return the human-readable results table."""
    lines = [
        f"MLClient round trip, identity model, RGB float32; median of {repeats}"
        f" after {WARMUPS} warm-ups; {platform.python_implementation()}"
        f" {platform.python_version()}, {os.cpu_count()} CPUs",
        f"{'size':>10} {'MB each way':>12} {'protocol ms':>12} {'raw echo ms':>12}"
        f" {'ratio':>7}  target",
    ]
    for r in sizes:
        target = f"<= {r.target:.1f}x {_verdict(r.meets_target)}" if r.target else "-"
        lines.append(
            f"{r.width:>5}x{r.height:<4} {r.request_bytes / 1e6:>12.1f} {r.protocol_ms:>12.1f}"
            f" {r.echo_ms:>12.1f} {r.ratio:>6.2f}x  {target}"
        )
    lines.append(
        f"target: protocol <= {RATIO_TARGET}x raw echo at 1920x1080 and 3840x2160"
        " (client-side protobuf parsing excluded from both)"
    )
    lines.extend(_info_lines(info))
    return "\n".join(lines)


def _info_lines(info: InfoResult) -> list[str]:
    """Return the report lines for the info measurements."""
    goal = f"goal <= {INFO_GOAL_MS:.0f} ms"
    lines = [
        f"info, idle server: median {info.idle_ms:.2f} ms ({goal}: "
        f"{_verdict(info.idle_ms <= INFO_GOAL_MS)})"
    ]
    if info.under_load_ms is None:
        lines.append(f"info during 1080p blur: not measured ({info.note})")
        return lines
    lines.append(
        f"info during 1080p blur (size=20.0): median {info.under_load_ms:.2f} ms,"
        f" max {info.under_load_max_ms:.1f} ms, {info.under_load_errors} errors"
        f" ({goal}: {_verdict(info.under_load_ms <= INFO_GOAL_MS)});"
        f" blur median {info.blur_ms:.1f} ms over {info.blur_count} requests"
    )
    return lines


# --- command line ---------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` into a pair of positive integers."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or "0" in (width, height):
        raise argparse.ArgumentTypeError(f"size must look like 1920x1080, got {text!r}")
    return int(width), int(height)


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"server must look like 127.0.0.1:55555, got {text!r}")
    return host, int(port)


def positive_int(text: str) -> int:
    """Parse a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Median MLClient round trip of the identity model next to a raw loopback"
        " echo of the same request bytes, plus info latency idle and under a blur load."
    )
    parser.add_argument(
        "--server",
        type=parse_address,
        metavar="HOST:PORT",
        help="benchmark a running server instead of starting `python -m frameserve serve`",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=15, help="timed requests per size (default 15)"
    )
    parser.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        default=list(DEFAULT_SIZES),
        metavar="WxH",
        help="frame sizes (default 640x360 1920x1080 3840x2160)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    return parser


def run(args: argparse.Namespace) -> tuple[list[SizeResult], InfoResult]:
    """Start what is needed, measure every size and the info latency, and clean up."""
    with ExitStack() as stack:
        if args.server is None:
            host, port = "127.0.0.1", free_port()
            logger.info("starting frameserve on %s:%d", host, port)
            stack.enter_context(started_server(port))
        else:
            host, port = args.server
        echo_port = stack.enter_context(echo_server())
        client = NodeClient(host, port, timeout=CLIENT_TIMEOUT_S, read_chunk=READ_CHUNK)
        wait_for_info(client, None, None)
        identity = client.model("identity")
        sizes = []
        for size in args.sizes:
            logger.info("measuring %dx%d", *size)
            sizes.append(measure_size(client, echo_port, identity, size, args.repeats))
        logger.info("measuring info latency")
        info = measure_info(client)
    return sizes, info


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (and a JSON line with ``--json``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    sizes, info = run(args)
    print(format_report(sizes, info, args.repeats))
    if args.json:
        payload = {"repeats": args.repeats, "sizes": [asdict(r) for r in sizes]}
        payload["info"] = asdict(info)
        print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
