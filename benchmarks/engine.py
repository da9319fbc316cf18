"""Benchmark the execution engine: concurrency, priorities and the result cache, in one run.

Against one server started for the run (``blur`` at 1920x1080 RGB float unless said otherwise):

1. **Throughput** with 1, 4 and 8 concurrent MLClient clients, each sending its own frames
   (every request differs, so nothing comes from the cache): frames per second.
2. **Interactive latency under load**: the median MLClient round trip of an interactive blur on
   an idle server, then while batch-priority HTTP clients keep every batch worker busy.
   Target: under load at most 1.5x idle.
3. **Cache hit**: the same MLClient request repeated (answered from the result cache) next to
   a raw loopback echo of the same bytes. Target: at most 1.2x the echo.

Usage::

    python benchmarks/engine.py [--repeats 15] [--seconds 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlclient_roundtrip import echo_round_trip, echo_server, free_port, started_server
from tests.support.node_client import (
    NodeClient,
    frame_request,
    inference_request,
)

WIDTH, HEIGHT = 1920, 1080
BLUR_SIZE = 3.0
LATENCY_TARGET = 1.5
CACHE_TARGET = 1.2


class FrameMaker:
    """Distinct frames cheaply: one random plate, with a counter written into a pixel."""

    def __init__(self) -> None:
        self.base = np.random.default_rng(5).random((3, HEIGHT, WIDTH), dtype=np.float32)
        self._count = 0
        self._lock = threading.Lock()

    def request(self, node: NodeClient) -> bytes:
        """A framed blur request whose frame no earlier request had."""
        with self._lock:
            self._count += 1
            count = self._count
        frame = self.base.copy()
        frame[0, 0, 0] = count
        model = node.model("blur")
        return frame_request(inference_request(model, [frame], knobs={"size": BLUR_SIZE}))


def throughput(port: int, clients: int, seconds: float, maker: FrameMaker) -> float:
    """Frames per second that ``clients`` concurrent MLClient clients get through."""
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        node = NodeClient("127.0.0.1", port, timeout=300.0, read_chunk=1 << 20)
        while time.monotonic() < stop:
            reply = node.send_inference(maker.request(node))
            if reply.HasField("error"):
                raise RuntimeError(reply.error.msg)
            done[index] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def interactive_latency(port: int, repeats: int, maker: FrameMaker) -> float:
    """Median round trip of interactive blur requests, in milliseconds."""
    node = NodeClient("127.0.0.1", port, timeout=300.0, read_chunk=1 << 20)
    samples = []
    for _ in range(repeats):
        request = maker.request(node)
        start = time.perf_counter()
        reply = node.send_inference(request)
        samples.append(time.perf_counter() - start)
        if reply.HasField("error"):
            raise RuntimeError(reply.error.msg)
        time.sleep(0.05)
    return statistics.median(samples) * 1000


class BatchLoad:
    """HTTP clients sending batch-priority blurs of distinct frames until stopped."""

    def __init__(self, http_port: int, clients: int) -> None:
        self._port = http_port
        self._stop = threading.Event()
        self.done = 0
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, index: int) -> None:
        rng = np.random.default_rng(100 + index)
        frame = rng.random((HEIGHT, WIDTH, 3), dtype=np.float32)
        conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=300.0)
        count = 0
        while not self._stop.is_set():
            count += 1
            frame[0, 0, 0] = count
            header = json.dumps(
                {
                    "parameters": {"size": BLUR_SIZE, "priority": "batch", "client_id": "farm"},
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
            ).encode()
            conn.request(
                "POST",
                "/v2/models/blur/infer",
                body=header + frame.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"batch request failed: {response.status}")
            self.done += 1

    def __enter__(self) -> BatchLoad:
        for thread in self._threads:
            thread.start()
        time.sleep(1.0)  # let the batch queue fill
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def cache_hit(port: int, echo_port: int, repeats: int) -> tuple[float, float]:
    """Median ms of a repeated (cached) MLClient blur request, and of its raw echo."""
    node = NodeClient("127.0.0.1", port, timeout=300.0, read_chunk=1 << 20)
    frame = np.random.default_rng(9).random((3, HEIGHT, WIDTH), dtype=np.float32)
    request = frame_request(inference_request(node.model("blur"), [frame], knobs={"size": 2.0}))
    node.send_inference(request)  # computed once; the rest are hits
    hits, echoes = [], []
    for _ in range(repeats + 2):
        echoes.append(echo_round_trip(echo_port, request))
        start = time.perf_counter()
        node.exchange(request)
        hits.append(time.perf_counter() - start)
    return statistics.median(hits[2:]) * 1000, statistics.median(echoes[2:]) * 1000


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput measurement")
    args = parser.parse_args(argv)
    maker = FrameMaker()
    port, http_port = free_port(), free_port()
    with started_server(port, http_port=http_port), echo_server() as echo_port:
        print(f"blur size={BLUR_SIZE} at {WIDTH}x{HEIGHT} RGB float32")
        for clients in (1, 4, 8):
            rate = throughput(port, clients, args.seconds, maker)
            print(f"throughput, {clients} concurrent MLClient clients: {rate:.2f} frames/s")
        idle = interactive_latency(port, args.repeats, maker)
        with BatchLoad(http_port, clients=4) as load:
            loaded = interactive_latency(port, args.repeats, maker)
        ratio = loaded / idle
        verdict = "ok" if ratio <= LATENCY_TARGET else "MISSED"
        print(
            f"interactive latency: idle {idle:.1f} ms, under batch load {loaded:.1f} ms "
            f"({load.done} batch frames meanwhile): {ratio:.2f}x "
            f"(target <= {LATENCY_TARGET}x: {verdict})"
        )
        hit, echo = cache_hit(port, echo_port, args.repeats)
        ratio = hit / echo
        verdict = "ok" if ratio <= CACHE_TARGET else "MISSED"
        print(
            f"cache hit at 1080p: {hit:.1f} ms, raw echo {echo:.1f} ms: {ratio:.2f}x "
            f"(target <= {CACHE_TARGET}x: {verdict})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
