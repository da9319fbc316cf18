"""The engine the front doors are given: models described, requests run, cache and metrics.

A real server on loopback with the test models (``broken_import`` fails on purpose) provides
the engine; each test asks it what a door would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from frameserve.engine.cache import frame_digest
from frameserve.engine.request import Priority, build_request, check_knobs
from frameserve.errors import ModelLoadError, ModelNotFoundError
from frameserve.serve.server import FrameServer
from tests.support.scheduling import HANG_GUARD, parse_metrics
from tests.support.servers import start_server


@pytest.fixture(scope="module")
def uncached() -> Iterator[FrameServer]:
    """A server whose result cache is off."""
    running = start_server(cache_bytes=0)
    yield running
    running.close()


def test_models_lists_loaded_versions_and_the_catalogue_the_failed_ones(server) -> None:
    engine = server.engine
    loaded = {entry.id for entry in engine.models()}
    assert {"identity", "blur", "knobby"} <= loaded
    assert "broken_import" not in loaded
    (broken,) = [entry for entry in engine.catalogue() if entry.id == "broken_import"]
    assert not broken.ok and "broken on purpose" in (broken.error or "")
    assert engine.largest_input_count() >= 2  # difference takes two


def test_model_names_what_exists_and_why_one_failed(server) -> None:
    engine = server.engine
    entry = engine.model("identity")
    assert (entry.id, entry.version) == ("identity", "1")
    assert engine.model("identity", "1") is entry
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'nope'.*identity"):
        engine.model("nope")
    with pytest.raises(ModelNotFoundError, match="no version '2'; versions: 1"):
        engine.model("identity", "2")
    with pytest.raises(ModelLoadError, match="'broken_import' failed to load"):
        engine.model("broken_import")


def test_a_submitted_request_comes_back_with_its_result(server) -> None:
    entry = server.engine.model("knobby")
    frame = torch.full((3, 4, 5), 0.25)
    request = build_request(entry, [frame], {"gain": 2.0})
    result = server.engine.submit(request).result(HANG_GUARD)
    torch.testing.assert_close(result.frames["image"], frame * 2)


def test_cache_keys_follow_model_knobs_and_frames(server, uncached) -> None:
    engine = server.engine
    entry = engine.model("knobby")
    digests = [frame_digest(b"\0" * 12, layout="test", shape=(3, 1, 1))]
    other = [frame_digest(b"\1" * 12, layout="test", shape=(3, 1, 1))]
    key = engine.cache_key(entry, check_knobs(entry, {"gain": 2.0}), digests)
    assert key == engine.cache_key(entry, check_knobs(entry, {"gain": 2.0}), digests)
    assert key != engine.cache_key(entry, check_knobs(entry, {"gain": 3.0}), digests)
    assert key != engine.cache_key(entry, check_knobs(entry, {"gain": 2.0}), other)
    assert key != engine.cache_key(
        entry, check_knobs(entry, {"gain": 2.0}), digests, colourspace="srgb"
    )
    assert engine.cached(key) is None
    assert engine.caches(entry)
    assert not engine.caches(engine.model("slow"))  # declares itself uncacheable
    assert not uncached.engine.caches(uncached.engine.model("knobby"))


def test_requests_are_counted_and_unknown_models_counted_as_unknown(uncached) -> None:
    engine = uncached.engine
    engine.record_request(model="identity", protocol="test", outcome="ok", seconds=0.01)
    engine.record_request(model="no-such-model", protocol="test", outcome="404", seconds=0.01)
    samples = parse_metrics(engine.metrics_text())
    name = "frameserve_requests_total"
    assert samples.value(name, model="identity", protocol="test", outcome="ok") == 1
    assert samples.value(name, model="unknown", protocol="test", outcome="404") == 1
    assert samples.value(name, model="no-such-model", protocol="test", outcome="404") == 0
    assert samples.value("frameserve_queue_depth", priority="batch") == 0
    assert engine.queue_depth(Priority.BATCH) == 0


def test_readiness_follows_the_server() -> None:
    running = start_server()
    try:
        assert running.engine.is_ready() and running.is_ready()
    finally:
        running.close()
    assert not running.engine.is_ready()
