"""The result cache: identical requests are answered from memory, bounded by bytes, LRU first.

``ResultCache`` and the keys are tested on their own; then through the real scheduler (the
recording plug-in of ``tests/support/scheduling.py`` counts how often a model really ran) and
through a real server on loopback (the MLClient fast path keyed by the bytes on the wire).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from frameserve.engine.cache import (
    ResultCache,
    frame_digest,
    internal_key,
    request_key,
    result_bytes,
)
from frameserve.engine.request import InferenceResult, Priority
from frameserve.serve.server import FrameServer
from tests.support.node_client import NodeClient, frame_request, inference_request
from tests.support.scheduling import (
    HANG_GUARD,
    SchedulerRig,
    constant_frame,
    http_infer,
    open_rig,
    parse_metrics,
    wait_for_sample,
    write_plugin,
)
from tests.support.servers import start_server

#: Bytes of one cached 3x8x8 float32 result of the recording models.
RESULT_BYTES = 3 * 8 * 8 * 4


def result_of(size: int, fill: float = 0.0) -> InferenceResult:
    """A result whose frames hold ``size`` bytes (a multiple of 4)."""
    return InferenceResult(frames={"image": torch.full((size // 4,), fill)})


# -- ResultCache -------------------------------------------------------------------------------


def test_result_bytes_counts_every_frame() -> None:
    result = InferenceResult(
        frames={"image": torch.zeros(3, 4, 5), "mask": torch.zeros(1, 4, 5, dtype=torch.float16)}
    )
    assert result_bytes(result) == 3 * 4 * 5 * 4 + 4 * 5 * 2


def test_get_returns_what_put_stored_and_counts_hits_and_misses() -> None:
    cache = ResultCache(1000)
    stored = result_of(100, 1.5)
    assert cache.get(b"a") is None
    cache.put(b"a", stored)
    assert cache.get(b"a") is stored
    assert cache.get(b"b") is None
    assert (cache.hits, cache.misses) == (1, 2)
    assert (len(cache), cache.bytes_used) == (1, 100)


def test_least_recently_used_result_is_evicted_first() -> None:
    cache = ResultCache(300)
    for key in (b"a", b"b", b"c"):
        cache.put(key, result_of(100))
    assert cache.get(b"a") is not None  # a is now the most recently used
    cache.put(b"d", result_of(100))

    assert cache.get(b"b") is None
    assert all(cache.get(key) is not None for key in (b"a", b"c", b"d"))
    assert (len(cache), cache.bytes_used) == (3, 300)


def test_eviction_frees_as_many_results_as_a_new_one_needs() -> None:
    cache = ResultCache(300)
    for key in (b"a", b"b", b"c"):
        cache.put(key, result_of(100))
    cache.put(b"big", result_of(160))

    held = [key for key in (b"a", b"b", b"c", b"big") if cache.get(key) is not None]
    assert held == [b"c", b"big"]
    assert cache.bytes_used == 260


def test_a_result_larger_than_the_cache_is_not_stored_and_evicts_nothing() -> None:
    cache = ResultCache(300)
    cache.put(b"a", result_of(100))
    cache.put(b"huge", result_of(304))
    assert cache.get(b"huge") is None
    assert cache.get(b"a") is not None
    assert (len(cache), cache.bytes_used) == (1, 100)


def test_a_result_exactly_the_size_of_the_cache_is_stored() -> None:
    cache = ResultCache(300)
    cache.put(b"a", result_of(100))
    cache.put(b"full", result_of(300))
    assert cache.get(b"full") is not None
    assert cache.get(b"a") is None
    assert cache.bytes_used == 300


def test_storing_a_key_again_replaces_its_result_and_bytes() -> None:
    cache = ResultCache(1000)
    cache.put(b"a", result_of(100, 1.0))
    newer = result_of(200, 2.0)
    cache.put(b"a", newer)
    assert cache.get(b"a") is newer
    assert (len(cache), cache.bytes_used) == (1, 200)


def test_replace_swaps_a_copy_in_place_only_for_the_result_still_stored() -> None:
    cache = ResultCache(1000)
    first, copy = result_of(100, 1.0), result_of(100, 1.0)
    cache.put(b"a", first)
    cache.put(b"b", result_of(100))
    assert cache.replace(b"a", first, copy)
    assert cache.get(b"a") is copy and cache.bytes_used == 200
    assert not cache.replace(b"a", first, result_of(100))  # it holds the copy now
    assert not cache.replace(b"gone", first, copy)
    cache.put(b"c", result_of(900))  # "b" is the least recently used now: "a" stays
    assert cache.get(b"a") is copy and cache.get(b"b") is None


def test_clear_drops_everything() -> None:
    cache = ResultCache(1000)
    cache.put(b"a", result_of(100))
    cache.put(b"b", result_of(100))
    cache.clear()
    assert (len(cache), cache.bytes_used) == (0, 0)
    assert cache.get(b"a") is None


def test_a_cache_of_no_bytes_stores_nothing() -> None:
    cache = ResultCache(0)
    cache.put(b"a", result_of(4))
    assert cache.get(b"a") is None
    assert (len(cache), cache.bytes_used) == (0, 0)


def test_cache_stays_consistent_under_concurrent_use() -> None:
    cache = ResultCache(4000)
    sizes = {f"k{n}".encode(): 4 * (1 + n % 40) for n in range(60)}
    results = {key: result_of(size) for key, size in sizes.items()}
    gets = [0] * 8
    errors: list[BaseException] = []

    def hammer(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for _ in range(3000):
                key = rng.choice(list(sizes))
                if rng.random() < 0.5:
                    cache.put(key, results[key])
                else:
                    found = cache.get(key)
                    gets[worker] += 1
                    assert found is None or found is results[key]
                assert cache.bytes_used >= 0
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD)
    assert not errors, errors[0]
    assert cache.hits + cache.misses == sum(gets)
    held = [key for key in sizes if cache.get(key) is not None]
    assert len(held) == len(cache)
    assert cache.bytes_used == sum(sizes[key] for key in held) <= cache.max_bytes


# -- keys --------------------------------------------------------------------------------------


def test_frame_digest_depends_on_bytes_layout_and_shape() -> None:
    data = bytes(range(48))
    digest = frame_digest(data, layout="chw:image", shape=(3, 2, 2))
    assert len(digest) == 16
    assert digest == frame_digest(bytearray(data), layout="chw:image", shape=(3, 2, 2))
    assert digest != frame_digest(data[:-1] + b"\xff", layout="chw:image", shape=(3, 2, 2))
    assert digest != frame_digest(data, layout="mlclient:image", shape=(3, 2, 2))
    assert digest != frame_digest(data, layout="chw:image", shape=(3, 1, 4))


def test_request_key_depends_on_every_part_but_not_on_knob_order() -> None:
    digests = [b"x" * 16]
    key = request_key("m", "1", {"a": 1, "b": 2.0}, "scene_linear", digests)
    assert key == request_key("m", "1", {"b": 2.0, "a": 1}, "scene_linear", digests)
    others = [
        request_key("n", "1", {"a": 1, "b": 2.0}, "scene_linear", digests),
        request_key("m", "2", {"a": 1, "b": 2.0}, "scene_linear", digests),
        request_key("m", "1", {"a": 2, "b": 2.0}, "scene_linear", digests),
        request_key("m", "1", {"a": 1, "b": 2.0}, "srgb", digests),
        request_key("m", "1", {"a": 1, "b": 2.0}, "scene_linear", [b"y" * 16]),
        request_key("m", "1", {"a": 1, "b": 2.0}, "scene_linear", [*digests, *digests]),
    ]
    assert len({key, *others}) == 7


def test_internal_key_reads_values_not_memory_layout(tmp_path: Path) -> None:
    rig = open_rig(tmp_path / "models")
    try:
        frame = constant_frame(1.0)
        strided = frame.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        assert not strided.is_contiguous()
        key = internal_key(rig.request(frame=frame, tag=1), "1")
        assert key == internal_key(rig.request(frame=strided, tag=1), "1")
        assert key == internal_key(rig.request(frame=frame.clone(), tag=1, group="g"), "1")
        assert key != internal_key(rig.request(frame=frame, tag=1), "2")
        assert key != internal_key(rig.request(frame=frame + 1, tag=1), "1")
    finally:
        rig.close()


# -- through the scheduler ---------------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[SchedulerRig]:
    """A scheduler with one worker and a 1 MiB cache."""
    opened = open_rig(tmp_path / "models", cache=ResultCache(1 << 20))
    yield opened
    opened.close()


def test_identical_request_is_answered_from_the_cache(rig: SchedulerRig) -> None:
    frame = constant_frame(2.0)
    first = rig.scheduler.submit(rig.request(frame=frame, tag=1, gain=3.0)).result(HANG_GUARD)
    again = rig.scheduler.submit(rig.request(frame=frame.clone(), tag=1, gain=3.0))

    assert again.done(), "a cache hit is answered at submit, without queueing"
    torch.testing.assert_close(again.result(0).frames["image"], first.frames["image"])
    torch.testing.assert_close(first.frames["image"], frame * 3.0)
    assert rig.ran() == [1]
    samples = rig.samples()
    assert samples.value("frameserve_cache_lookups_total", result="hit") == 1
    assert samples.value("frameserve_cache_lookups_total", result="miss") == 1
    assert rig.scheduler.cache is not None
    assert rig.scheduler.cache.bytes_used == RESULT_BYTES


def test_who_asks_and_how_urgently_is_not_part_of_the_key(rig: SchedulerRig) -> None:
    rig.scheduler.submit(rig.request(tag=1)).result(HANG_GUARD)
    later = rig.request(tag=1, priority=Priority.BATCH, group="farm", deadline=1e12)
    rig.scheduler.submit(later).result(HANG_GUARD)
    assert rig.ran() == [1]


@pytest.mark.parametrize(
    "change",
    [
        {"gain": 2.0},
        {"frame": constant_frame(0.5) + 1e-3},
        {"frame": constant_frame(0.5, width=9)},
        {"colourspace": "srgb"},
    ],
    ids=["knobs", "frame-bytes", "frame-size", "colourspace"],
)
def test_a_request_that_differs_in_anything_that_matters_is_a_miss(
    rig: SchedulerRig, change: dict[str, object]
) -> None:
    base: dict[str, object] = {"frame": constant_frame(0.5), "gain": 1.0}
    rig.scheduler.submit(rig.request(tag=1, **base)).result(HANG_GUARD)  # type: ignore[arg-type]
    changed = {**base, **change}
    rig.scheduler.submit(rig.request(tag=1, **changed)).result(HANG_GUARD)  # type: ignore[arg-type]

    assert rig.ran() == [1, 1]
    samples = rig.samples()
    assert samples.value("frameserve_cache_lookups_total", result="miss") == 2
    assert samples.value("frameserve_cache_lookups_total", result="hit") == 0


def test_models_that_are_not_cacheable_always_run(rig: SchedulerRig) -> None:
    for _ in range(3):
        rig.scheduler.submit(rig.request("recorder_uncached", tag=5)).result(HANG_GUARD)
    assert rig.ran("recorder_uncached") == [5, 5, 5]
    assert rig.samples().matching("frameserve_cache_lookups_total") == {}
    assert rig.scheduler.cache is not None and len(rig.scheduler.cache) == 0


def test_a_failed_request_is_not_cached(rig: SchedulerRig) -> None:
    request = rig.request(tag=1, colourspace="no such colourspace")
    for _ in range(2):
        assert rig.scheduler.submit(request).exception(HANG_GUARD) is not None
    assert rig.scheduler.cache is not None and len(rig.scheduler.cache) == 0


# -- through the server ------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FrameServer, object]]:
    # In-process: the test reads what the recording models ran from their state in this process.
    server = start_server(
        model_folders=(write_plugin(tmp_path / "models"),), builtin_models=False, isolation=False
    )
    yield server, server.registry.get("gate").model_class.state  # type: ignore[union-attr]
    server.close()


def recorded(state: object, model: str = "recorder") -> list[int]:
    return [tag for ran, tag, *_ in state.runs if ran == model]  # type: ignore[attr-defined]


def test_mlclient_repeat_is_answered_from_the_cache_with_identical_bytes(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD, read_chunk=1 << 20)
    recorder = node.model("recorder")
    frame = constant_frame(1.25).numpy()
    request = frame_request(inference_request(recorder, [frame], knobs={"tag": 3, "gain": 2.0}))

    first = node.exchange(request)
    second = node.exchange(request)

    assert bytes(first) == bytes(second)
    assert recorded(state) == [3]
    labels = {"model": "recorder", "protocol": "mlclient", "outcome": "ok"}
    samples = wait_for_sample(server.metrics, "frameserve_requests_total", 2, **labels)
    assert samples.value("frameserve_cache_lookups_total", result="hit") == 1
    assert samples.value("frameserve_cache_lookups_total", result="miss") == 1


def test_mlclient_requests_with_other_knobs_or_pixels_are_misses(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    recorder = node.model("recorder")
    frame = constant_frame(1.0).numpy()
    other = frame.copy()
    other[0, 0, 0] += 1.0
    for image, gain in [(frame, 1.0), (frame, 2.0), (other, 1.0)]:
        reply = node.infer(recorder, [image], knobs={"tag": 4, "gain": gain})
        assert not reply.HasField("error"), reply.error.msg
    assert recorded(state) == [4, 4, 4]
    samples = parse_metrics(server.metrics.render())
    assert samples.value("frameserve_cache_lookups_total", result="miss") == 3


def test_mlclient_requests_for_models_that_are_not_cacheable_always_run(
    served: tuple[FrameServer, object],
) -> None:
    server, state = served
    node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
    model = node.model("recorder_uncached")
    for _ in range(2):
        assert not node.infer(model, [constant_frame(1.0).numpy()]).HasField("error")
    assert recorded(state, "recorder_uncached") == [0, 0]


def test_http_repeat_is_answered_from_the_cache(served: tuple[FrameServer, object]) -> None:
    server, state = served
    frame = constant_frame(0.75)
    first = http_infer(server.http_address, "recorder", frame, {"tag": 6, "gain": 2.0})
    second = http_infer(server.http_address, "recorder", frame, {"tag": 6, "gain": 2.0})
    assert first[0] == second[0] == 200
    assert first[1]["outputs"] == second[1]["outputs"]
    assert recorded(state) == [6]


def test_a_cache_of_size_zero_caches_nothing(tmp_path: Path) -> None:
    server = start_server(
        model_folders=(write_plugin(tmp_path / "models"),),
        builtin_models=False,
        cache_bytes=0,
        isolation=False,  # the recording models' state is read in this process
    )
    try:
        state = server.registry.get("recorder").model_class.state  # type: ignore[union-attr]
        node = NodeClient(*server.mlclient_address, timeout=HANG_GUARD)
        request = frame_request(
            inference_request(node.model("recorder"), [constant_frame(1).numpy()], knobs={})
        )
        assert node.exchange(request) == node.exchange(request)
        for _ in range(2):
            assert http_infer(server.http_address, "recorder", constant_frame(1), {})[0] == 200
        assert recorded(state) == [0, 0, 0, 0]
        samples = parse_metrics(server.metrics.render())
        assert samples.matching("frameserve_cache_lookups_total") == {}
        assert samples.value("frameserve_cache_bytes") == 0
        assert samples.value("frameserve_cache_entries") == 0
    finally:
        server.close()
