"""Server metrics in the Prometheus text format: the ``Metrics`` object and ``GET /metrics``.

The scrapes are read with the small strict parser of ``tests/support/scheduling.py``, so a
malformed line fails a test as it would fail Prometheus. The end-to-end tests run a real server
on loopback with the recording plug-in and check that each value moves as requests go by.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from frameserve.engine.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from frameserve.engine.request import Priority
from frameserve.serve.mlclient import messages as pb
from frameserve.serve.server import FrameServer
from tests.support.node_client import NodeClient
from tests.support.scheduling import (
    HANG_GUARD,
    Samples,
    constant_frame,
    http_infer,
    parse_metrics,
    wait_for_sample,
    wait_until,
    write_plugin,
)
from tests.support.servers import start_server

INF = float("inf")


def scrape(metrics: Metrics) -> Samples:
    return parse_metrics(metrics.render())


# -- the parser the tests rely on --------------------------------------------------------------


def test_parser_reads_samples_labels_escapes_and_types() -> None:
    text = (
        "# HELP x_total Things.\n"
        "# TYPE x_total counter\n"
        'x_total{a="1",b="q\\"uo\\\\te\\nnl"} 3\n'
        "y 2.5\n"
        'h_bucket{le="+Inf"} 7\n'
    )
    samples = parse_metrics(text)
    assert samples.types == {"x_total": "counter"}
    assert samples.value("x_total", a="1", b='q"uo\\te\nnl') == 3
    assert samples.value("y") == 2.5
    assert samples.buckets("h") == [(INF, 7)]
    assert samples.value("x_total", a="1") == 0  # labels must match exactly
    for malformed in ['x{a="1} 3\n', "x 1 2 3\n", 'x{a="\n"} 1\n', "x 1\nx 1\n"]:
        with pytest.raises(AssertionError):
            parse_metrics(malformed)


# -- Metrics -----------------------------------------------------------------------------------


def test_a_fresh_registry_declares_every_family_and_has_no_samples() -> None:
    samples = scrape(Metrics())
    assert samples.types == {
        "frameserve_requests_total": "counter",
        "frameserve_requests_dropped_total": "counter",
        "frameserve_cache_lookups_total": "counter",
        "frameserve_request_duration_seconds": "histogram",
        "frameserve_queue_wait_seconds": "histogram",
        "frameserve_batch_size": "histogram",
        "frameserve_worker_restarts_total": "counter",
        "frameserve_worker_crashes_total": "counter",
        "frameserve_model_timeouts_total": "counter",
    }
    assert samples.values == {}


def test_counters_count_per_label_set() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.request(model="blur", protocol="http", outcome="ok", seconds=0.01)
    metrics.request(model="blur", protocol="mlclient", outcome="ok", seconds=0.01)
    metrics.request(model="blur", protocol="http", outcome="400", seconds=0.01)
    metrics.cache_lookup(hit=True)
    metrics.cache_lookup(hit=False)
    metrics.cache_lookup(hit=False)
    metrics.dropped("cancelled")
    metrics.dropped("deadline")
    metrics.dropped("deadline")

    samples = scrape(metrics)
    requests = "frameserve_requests_total"
    assert samples.value(requests, model="blur", protocol="http", outcome="ok") == 3
    assert samples.value(requests, model="blur", protocol="mlclient", outcome="ok") == 1
    assert samples.value(requests, model="blur", protocol="http", outcome="400") == 1
    assert len(samples.matching(requests)) == 3
    assert samples.value("frameserve_cache_lookups_total", result="hit") == 1
    assert samples.value("frameserve_cache_lookups_total", result="miss") == 2
    assert samples.value("frameserve_requests_dropped_total", reason="cancelled") == 1
    assert samples.value("frameserve_requests_dropped_total", reason="deadline") == 2


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    metrics = Metrics()
    for seconds in (0.003, 0.02, 0.025, 7.0):
        metrics.request(model="m", protocol="http", outcome="ok", seconds=seconds)

    samples = scrape(metrics)
    buckets = samples.buckets("frameserve_request_duration_seconds", model="m")
    assert [bound for bound, _ in buckets] == [*LATENCY_BUCKETS, INF]
    counts = dict(buckets)
    assert counts[0.005] == 1
    assert counts[0.01] == 1
    assert counts[0.025] == 3  # a value on a bound counts in that bucket (le is "<=")
    assert counts[5.0] == 3
    assert counts[10.0] == 4
    assert counts[INF] == 4
    assert samples.value("frameserve_request_duration_seconds_count", model="m") == 4
    total = samples.value("frameserve_request_duration_seconds_sum", model="m")
    assert total == pytest.approx(7.048, abs=1e-6)


def test_batch_size_histogram_per_model() -> None:
    metrics = Metrics()
    metrics.batch("a", 4)
    metrics.batch("a", 1)
    metrics.batch("b", 100)
    samples = scrape(metrics)
    a = dict(samples.buckets("frameserve_batch_size", model="a"))
    assert [a[bound] for bound in BATCH_BUCKETS] == [1, 1, 2, 2, 2, 2, 2]
    b = dict(samples.buckets("frameserve_batch_size", model="b"))
    assert b[64] == 0 and b[INF] == 1
    assert samples.value("frameserve_batch_size_sum", model="b") == 100


def test_queue_wait_histogram() -> None:
    metrics = Metrics()
    metrics.queue_wait("m", 0.2)
    samples = scrape(metrics)
    assert dict(samples.buckets("frameserve_queue_wait_seconds", model="m"))[0.25] == 1
    assert dict(samples.buckets("frameserve_queue_wait_seconds", model="m"))[0.1] == 0


def test_gauges_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    depth = {"interactive": 0, "batch": 3}
    metrics.gauge(
        "frameserve_queue_depth",
        "Requests waiting.",
        lambda: [((("priority", name),), value) for name, value in depth.items()],
    )
    metrics.gauge("frameserve_models_loaded", "Models.", lambda: [((), 2)])
    samples = scrape(metrics)
    assert samples.types["frameserve_queue_depth"] == "gauge"
    assert samples.value("frameserve_queue_depth", priority="batch") == 3
    assert samples.value("frameserve_models_loaded") == 2
    depth["interactive"] = 5
    assert scrape(metrics).value("frameserve_queue_depth", priority="interactive") == 5


def test_gauge_values_are_exact() -> None:
    metrics = Metrics()
    metrics.gauge("frameserve_cache_bytes", "Bytes.", lambda: [((), 1_087_212)])
    assert scrape(metrics).value("frameserve_cache_bytes") == 1_087_212


def test_label_values_escape_quotes_and_backslashes() -> None:
    metrics = Metrics()
    metrics.request(model='we"ird\\name', protocol="http", outcome="ok", seconds=0.0)
    text = metrics.render()
    assert 'model="we\\"ird\\\\name"' in text
    samples = parse_metrics(text)
    labels = {"model": 'we"ird\\name', "protocol": "http", "outcome": "ok"}
    assert samples.value("frameserve_requests_total", **labels) == 1


def test_label_values_escape_line_feeds() -> None:
    metrics = Metrics()
    metrics.request(model="two\nlines", protocol="mlclient", outcome="error", seconds=0.0)
    samples = parse_metrics(metrics.render())
    labels = {"model": "two\nlines", "protocol": "mlclient", "outcome": "error"}
    assert samples.value("frameserve_requests_total", **labels) == 1


def test_counting_from_many_threads_loses_nothing() -> None:
    metrics = Metrics()

    def count() -> None:
        for _ in range(500):
            metrics.request(model="m", protocol="http", outcome="ok", seconds=0.001)
            metrics.cache_lookup(hit=True)

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD)
    samples = scrape(metrics)
    requests = samples.value("frameserve_requests_total", model="m", protocol="http", outcome="ok")
    assert requests == 4000
    assert samples.value("frameserve_request_duration_seconds_count", model="m") == 4000
    assert samples.value("frameserve_cache_lookups_total", result="hit") == 4000


# -- GET /metrics --------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FrameServer, object]]:
    """A server with one interactive and one batch worker on the recording plug-in."""
    server = start_server(
        model_folders=(write_plugin(tmp_path / "models"),),
        builtin_models=False,
        workers=1,
        batch_workers=1,
        isolation=False,  # the recording models' state is read in this process
    )
    state = server.registry.get("gate").model_class.state  # type: ignore[union-attr]
    yield server, state
    state.release.set()  # type: ignore[attr-defined]
    server.close()


def get_metrics(server: FrameServer) -> tuple[str, Samples]:
    """GET /metrics; return the content type and the parsed samples."""
    conn = http.client.HTTPConnection(*server.http_address, timeout=HANG_GUARD)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body[:300]
        return response.getheader("Content-Type", ""), parse_metrics(body.decode("utf-8"))
    finally:
        conn.close()


def test_metrics_endpoint_serves_prometheus_text(served: tuple[FrameServer, object]) -> None:
    server, _ = served
    content_type, samples = get_metrics(server)
    assert content_type.startswith("text/plain")
    assert "version=0.0.4" in content_type
    for name, kind in [
        ("frameserve_requests_total", "counter"),
        ("frameserve_request_duration_seconds", "histogram"),
        ("frameserve_batch_size", "histogram"),
        ("frameserve_cache_lookups_total", "counter"),
        ("frameserve_queue_depth", "gauge"),
        ("frameserve_models_loaded", "gauge"),
        ("frameserve_cache_bytes", "gauge"),
        ("frameserve_cache_entries", "gauge"),
    ]:
        assert samples.types.get(name) == kind, name
    assert samples.value("frameserve_queue_depth", priority="interactive") == 0
    assert samples.value("frameserve_queue_depth", priority="batch") == 0
    assert samples.value("frameserve_models_loaded") == 0
    assert samples.value("frameserve_cache_bytes") == 0
    assert samples.matching("frameserve_requests_total") == {}


def test_metrics_move_as_requests_go_by(served: tuple[FrameServer, object]) -> None:
    server, _ = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    recorder = node.model("recorder")
    assert not node.infer(recorder, [constant_frame(1).numpy()], knobs={"tag": 1}).HasField("error")
    assert node.infer(recorder, [constant_frame(1).numpy()], knobs={"nope": 1}).HasField("error")
    for _ in range(2):  # the second is a cache hit
        status, _ = http_infer(server.http_address, "recorder", constant_frame(2), {"tag": 2})
        assert status == 200
    status, _ = http_infer(server.http_address, "recorder", constant_frame(2), {"nope": 1})
    assert status == 400

    wait_for_sample(
        server.metrics, "frameserve_request_duration_seconds_count", 5, model="recorder"
    )
    _, samples = get_metrics(server)
    requests = "frameserve_requests_total"
    assert samples.value(requests, model="recorder", protocol="mlclient", outcome="ok") == 1
    assert samples.value(requests, model="recorder", protocol="mlclient", outcome="error") == 1
    assert samples.value(requests, model="recorder", protocol="http", outcome="ok") == 2
    assert samples.value(requests, model="recorder", protocol="http", outcome="400") == 1
    assert len(samples.matching(requests)) == 4

    buckets = samples.buckets("frameserve_request_duration_seconds", model="recorder")
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), "histogram buckets must be cumulative"
    assert buckets[-1] == (INF, 5)
    assert samples.value("frameserve_request_duration_seconds_count", model="recorder") == 5
    assert samples.value("frameserve_request_duration_seconds_sum", model="recorder") > 0

    assert samples.value("frameserve_cache_lookups_total", result="hit") == 1
    assert samples.value("frameserve_cache_lookups_total", result="miss") == 2
    assert samples.value("frameserve_queue_wait_seconds_count", model="recorder") == 2
    assert samples.value("frameserve_batch_size_count", model="recorder") == 2
    assert samples.value("frameserve_models_loaded") == 1
    assert samples.value("frameserve_cache_entries") == 2
    assert samples.value("frameserve_cache_bytes") == 2 * 3 * 8 * 8 * 4


def test_queue_depth_counts_waiting_requests_by_priority(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    address = server.http_address
    scheduler = server.scheduler
    with ThreadPoolExecutor(6) as pool:
        replies = [pool.submit(node.infer, node.model("gate"), [constant_frame(0).numpy()])]
        wait_until(lambda: len(state.runs) == 1, what="the interactive gate")  # type: ignore[attr-defined]
        batch = {"priority": "batch"}
        replies.append(pool.submit(http_infer, address, "gate", constant_frame(0), batch))
        wait_until(lambda: len(state.runs) == 2, what="the batch gate")  # type: ignore[attr-defined]
        for tag in (1, 2):
            replies.append(pool.submit(http_infer, address, "recorder", constant_frame(tag), {}))
        replies.append(pool.submit(http_infer, address, "recorder", constant_frame(3), batch))
        wait_until(
            lambda: (
                (scheduler.queue_depth(Priority.INTERACTIVE), scheduler.queue_depth(Priority.BATCH))
                == (2, 1)
            ),
            what="three queued requests",
        )

        _, samples = get_metrics(server)  # answered while every worker is busy
        assert samples.value("frameserve_queue_depth", priority="interactive") == 2
        assert samples.value("frameserve_queue_depth", priority="batch") == 1

        state.release.set()  # type: ignore[attr-defined]
        for reply in replies:
            reply.result(HANG_GUARD)
    _, samples = get_metrics(server)
    assert samples.value("frameserve_queue_depth", priority="interactive") == 0
    assert samples.value("frameserve_queue_depth", priority="batch") == 0


def test_batch_size_histogram_shows_a_batch_sent_over_http(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    frames = torch.stack([constant_frame(value) for value in range(4)])
    status, answer = http_infer(server.http_address, "batcher", frames, {"gain": 2.0})
    assert status == 200, answer
    assert [size for size, *_ in state.batches] == [4]  # type: ignore[attr-defined]

    _, samples = get_metrics(server)
    buckets = dict(samples.buckets("frameserve_batch_size", model="batcher"))
    assert (buckets[2], buckets[4], buckets[INF]) == (0, 1, 1)
    assert samples.value("frameserve_batch_size_sum", model="batcher") == 4
    output = torch.tensor(answer["outputs"][0]["data"]).reshape(4, 8, 8, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(output, frames * 2.0)


def test_cache_bytes_gauge_is_exact_for_a_large_result(served: tuple[FrameServer, object]) -> None:
    server, _ = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD, read_chunk=1 << 20)
    frame = constant_frame(1.0, height=301, width=301).numpy()
    assert not node.infer(node.model("recorder"), [frame]).HasField("error")
    assert server.cache is not None and server.cache.bytes_used == 3 * 301 * 301 * 4
    _, samples = get_metrics(server)
    assert samples.value("frameserve_cache_bytes") == server.cache.bytes_used


def test_a_client_cannot_break_the_metrics_with_a_model_name(
    served: tuple[FrameServer, object],
) -> None:
    server, _ = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    reply = node.infer(pb.Model(name="two\nlines"), [constant_frame(1).numpy()])
    assert reply.HasField("error")
    labels = {"model": "unknown", "protocol": "mlclient", "outcome": "error"}
    wait_until(
        lambda: get_metrics(server)[1].value("frameserve_requests_total", **labels) == 1,
        what="the request to be counted",
    )
    assert "two" not in server.metrics.render()  # a client-chosen name never becomes a label
