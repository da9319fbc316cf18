"""The process host with well-behaved models: results, shared memory, batches, lanes, state.

One host serves the lab models (tests/engine/workers/lab.py) for the whole module: each
model's worker starts once (a fresh interpreter importing torch), then answers in
milliseconds.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.catalogue.entries import ModelEntry
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine import keeping
from frameserve.engine.cache import ResultCache, internal_key
from frameserve.engine.request import InferenceResult, build_request
from frameserve.engine.runner import Runner
from frameserve.engine.scheduler import Scheduler
from frameserve.engine.workers.host import InProcessHost, ModelState
from frameserve.engine.workers.processes import ProcessHost
from tests.engine.workers.lab import (
    HANG_GUARD,
    constant,
    open_host,
    ran_in,
    request,
    shared,
    values,
    wait_until,
)
from tests.support.scheduling import parse_metrics


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelRegistry, ProcessHost]]:
    registry, host, _ = open_host(tmp_path_factory.mktemp("lab"))
    yield registry, host
    host.close()


def test_a_model_runs_in_its_own_worker_process(lab: tuple[ModelRegistry, ProcessHost]) -> None:
    registry, host = lab
    result = host.run(request(registry, "double", shared(host, 1.5)))
    assert np.all(values(result) == 3.0)
    assert result.worker == ran_in(result) != os.getpid()
    other = host.run(request(registry, "echo", shared(host, 1.0)))
    assert other.worker not in (None, result.worker)  # one worker per model


def test_results_match_the_in_process_runner_bit_for_bit(
    lab: tuple[ModelRegistry, ProcessHost],
) -> None:
    registry, host = lab
    frame = torch.from_numpy(np.random.default_rng(3).random((3, 37, 53), dtype=np.float32))
    here = Runner(registry).run(build_request(registry.get("double"), [frame], {}))
    there = host.run(build_request(registry.get("double"), [frame.clone()], {}))
    assert torch.equal(here.frames["image"], there.frames["image"])


def test_an_output_that_is_its_input_comes_back_without_a_copy(
    lab: tuple[ModelRegistry, ProcessHost],
) -> None:
    registry, host = lab
    frame = shared(host, 2.0, height=270, width=480)
    copied = host.frames_copied_in
    result = host.run(request(registry, "echo", frame))
    assert result.frames["image"].data_ptr() == frame.data_ptr()
    assert host.frames_copied_in == copied


def test_a_frame_from_elsewhere_is_copied_in_once(lab: tuple[ModelRegistry, ProcessHost]) -> None:
    registry, host = lab
    frame = constant(5.0, height=10, width=12)
    copied = host.frames_copied_in
    result = host.run(request(registry, "echo", frame))
    assert host.frames_copied_in == copied + 1
    assert result.frames["image"].data_ptr() != frame.data_ptr()
    assert torch.equal(result.frames["image"], frame)
    frame.fill_(0.0)  # the result is a copy, not a view of the caller's tensor
    assert np.all(values(result) == 5.0)


def test_an_output_segment_is_reused_once_the_result_is_let_go(
    lab: tuple[ModelRegistry, ProcessHost],
) -> None:
    registry, host = lab
    first = host.run(request(registry, "double", shared(host, 1.0, height=540, width=960)))
    where = first.frames["image"].data_ptr()
    second = host.run(request(registry, "double", shared(host, 2.0, height=540, width=960)))
    assert second.frames["image"].data_ptr() != where  # the first still holds its segment
    assert np.all(values(first) == 2.0) and np.all(values(second) == 4.0)
    del first, second
    gc.collect()
    third = host.run(request(registry, "double", shared(host, 3.0, height=540, width=960)))
    assert np.all(values(third) == 6.0)
    reused = {third.frames["image"].data_ptr()}
    del third
    for value in (4.0, 5.0):
        result = host.run(request(registry, "double", shared(host, value, height=540, width=960)))
        reused.add(result.frames["image"].data_ptr())
        del result
    assert len(reused) == 1, "a freed output segment was not reused"


def test_the_cache_keeps_a_copy_so_shared_memory_goes_back_for_reuse(
    lab: tuple[ModelRegistry, ProcessHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, host = lab
    # Every result counts as worth keeping here, however quickly 'mirror' makes it.
    monkeypatch.setattr(keeping, "KEEP_BYTES_PER_SECOND", float("inf"))
    scheduler = Scheduler(host, cache=ResultCache(1 << 30))
    try:
        cache = scheduler.cache
        assert cache is not None
        pointers = set()
        for value in (1.0, 2.0, 3.0):
            frame = shared(host, value, height=540, width=960)
            asked = request(registry, "mirror", frame)
            result = scheduler.submit(asked).result(HANG_GUARD)
            assert result.frames["image"].data_ptr() == frame.data_ptr()  # no copy on the way
            pointers.add(frame.data_ptr())
            key = internal_key(asked, asked.entry.version, token=asked.entry.token)  # type: ignore[union-attr]
            wait_until(  # the copy is made while the answer is on its way
                lambda key=key: host.frames.locate(cache.get(key).frames["image"]) is None,  # type: ignore[union-attr]
                what="the cache's own copy",
            )
            del frame, result, asked
            gc.collect()
        assert len(pointers) == 1, "the cache kept the request's shared memory"
        assert len(cache) == 3
        again = request(registry, "mirror", shared(host, 2.0, height=540, width=960))
        cached = scheduler.submit(again).result(HANG_GUARD)
        assert cached.worker is None and np.all(values(cached) == 2.0)
        assert host.frames.locate(cached.frames["image"]) is None
    finally:
        scheduler.close()


def test_a_result_computed_faster_than_a_copy_is_not_cached_in_workers(
    lab: tuple[ModelRegistry, ProcessHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, host = lab
    scheduler = Scheduler(host, cache=ResultCache(1 << 30))
    try:
        cache = scheduler.cache
        assert cache is not None
        for value in (0.5, 0.25):  # the first call may pay for starting the worker
            warm = request(registry, "mirror", shared(host, value, height=540, width=960))
            scheduler.submit(warm).result(HANG_GUARD)
        cache.clear()
        with monkeypatch.context() as patched:
            # a copy rate at which the 6 MB result takes 1 s to copy: mirroring it, well under
            # that whatever the machine's load, is not worth keeping (no timing in the test)
            patched.setattr(keeping, "KEEP_BYTES_PER_SECOND", 6.2e6)
            quick = request(registry, "mirror", shared(host, 1.0, height=540, width=960))
            scheduler.submit(quick).result(HANG_GUARD)
            assert len(cache) == 0
        slow = request(registry, "pause", shared(host, 2.0, height=540, width=960), seconds=0.05)
        scheduler.submit(slow).result(HANG_GUARD)
        assert len(cache) == 1  # 50 ms of work is worth a copy of about 1 ms
        again = request(registry, "pause", shared(host, 2.0, height=540, width=960), seconds=0.05)
        cached = scheduler.submit(again).result(HANG_GUARD)
        assert cached.worker is None and np.all(values(cached) == 2.0)
    finally:
        scheduler.close()


def test_a_result_quick_to_compute_again_is_kept_the_second_time_it_is_asked(
    lab: tuple[ModelRegistry, ProcessHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result that took between one and FIRST_SIGHT_FACTOR times its copy: its first
    request leaves the cache empty (no copy), a repeat is computed and kept, the third hits."""
    registry, host = lab
    # a copy rate at which the 6 MB result takes 0.1 s to copy: a 0.15 s pause is between one
    # and ten copies, whatever the machine's load (up to 0.85 s of overhead)
    monkeypatch.setattr(keeping, "KEEP_BYTES_PER_SECOND", 6.2e7)
    scheduler = Scheduler(host, cache=ResultCache(1 << 30))
    cache = scheduler.cache
    assert cache is not None

    def ask() -> InferenceResult:
        frame = shared(host, 7.0, height=540, width=960)
        asked = request(registry, "pause", frame, seconds=0.15)
        return scheduler.submit(asked).result(HANG_GUARD)

    try:
        assert ask().worker is not None and len(cache) == 0  # seen once: not kept
        assert ask().worker is not None and len(cache) == 1  # seen again: computed, kept
        third = ask()
        assert third.worker is None and np.all(values(third) == 7.0)  # from the cache
    finally:
        scheduler.close()


def test_requests_of_a_model_not_worth_caching_are_not_digested(
    lab: tuple[ModelRegistry, ProcessHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a model's result was not kept, its next requests skip the cache (no key, no
    lookup) until a result is worth keeping again."""
    registry, host = lab
    scheduler = Scheduler(host, cache=ResultCache(1 << 30))
    entry = registry.get("mirror")

    def lookups() -> float:
        samples = parse_metrics(scheduler.metrics.render())
        return sum(
            samples.value("frameserve_cache_lookups_total", result=outcome)
            for outcome in ("hit", "miss")
        )

    cache = scheduler.cache
    assert cache is not None
    try:
        assert scheduler.keeps_results_of(entry.key)
        with monkeypatch.context() as patched:
            patched.setattr(keeping, "KEEP_BYTES_PER_SECOND", 6.2e6)  # 6 MB: a 1 s copy
            quick = request(registry, "mirror", shared(host, 1.0, height=540, width=960))
            scheduler.submit(quick).result(HANG_GUARD)
            assert not scheduler.keeps_results_of(entry.key)
            before = lookups()
            again = request(registry, "mirror", shared(host, 3.0, height=540, width=960))
            assert np.all(values(scheduler.submit(again).result(HANG_GUARD)) == 3.0)
            assert lookups() == before  # neither keyed nor looked up
        with monkeypatch.context() as patched:
            patched.setattr(keeping, "KEEP_BYTES_PER_SECOND", 1e18)  # any copy is free
            slow = request(registry, "mirror", shared(host, 4.0, height=540, width=960))
            scheduler.submit(slow).result(HANG_GUARD)
            assert scheduler.keeps_results_of(entry.key)
            assert len(cache) == 0  # it ran unkeyed; the next one is keyed
    finally:
        scheduler.close()


def test_in_process_results_are_kept_as_they_are() -> None:
    result = InferenceResult(frames={"image": torch.zeros(3, 2, 2)})
    assert InProcessHost(Runner(ModelRegistry([], builtins=False))).keep(result) is result


def test_an_input_the_model_keeps_is_never_written_over(
    lab: tuple[ModelRegistry, ProcessHost],
) -> None:
    registry, host = lab
    first = shared(host, 1.0)
    assert np.all(values(host.run(request(registry, "stash", first))) == 1.0)
    kept = host.frames.locate(first)
    assert kept is not None
    del first
    gc.collect()
    for value in (2.0, 3.0, 4.0):
        frame = shared(host, value)  # the pool hands out memory of this size again
        located = host.frames.locate(frame)
        assert located is not None and located.segment != kept.segment
        answer = host.run(request(registry, "stash", frame))
        assert np.all(values(answer) == 1.0), "the model's kept frame was overwritten"


def test_a_batch_runs_as_one_call_in_the_worker(lab: tuple[ModelRegistry, ProcessHost]) -> None:
    registry, host = lab
    requests = [request(registry, "batcher", shared(host, float(i))) for i in (1, 2, 3)]
    outcomes = host.run_batch(requests)
    sizes = {outcome.objects[0].records[0]["size"] for outcome in outcomes}  # type: ignore[union-attr]
    assert sizes == {3}
    assert [float(values(o).mean()) for o in outcomes] == [3.0, 6.0, 9.0]


def test_the_metrics_show_each_workers_private_memory(
    lab: tuple[ModelRegistry, ProcessHost],
) -> None:
    registry, host = lab
    result = host.run(request(registry, "double", constant(1.0)))
    samples = parse_metrics(host.metrics.render())
    used = samples.value("frameserve_worker_memory_bytes", model="double", version="1")
    assert 50 << 20 < used < 2 << 30  # an interpreter with torch: about 150 MiB
    assert result.worker is not None


def test_each_model_version_has_its_own_concurrency_key(
    lab: tuple[ModelRegistry, ProcessHost],
) -> None:
    registry, host = lab
    double = request(registry, "double", constant(1.0))
    echo = request(registry, "echo", constant(1.0))
    assert host.concurrency_key(double) == registry.get("double").key
    assert host.concurrency_key(echo) != host.concurrency_key(double)


def test_a_model_of_a_provider_runs_in_process(lab: tuple[ModelRegistry, ProcessHost]) -> None:
    registry, host = lab
    double = registry.get("double").model_class
    entry = ModelEntry.from_class(double, source="provider test", token="1")
    provided = ModelEntry(
        id="provided", source=entry.source, spec=_renamed(entry), model_class=double, token="1"
    )
    registry.add_provider("test", lambda: [provided])
    try:
        result = host.run(build_request(provided, [constant(2.0)], {}))
        assert result.worker is None and ran_in(result) == os.getpid()
        assert host.concurrency_key(build_request(provided, [constant(1.0)], {})) is None
        assert host.status(provided).state is ModelState.READY
    finally:
        registry.remove_provider("test")


def _renamed(entry: ModelEntry):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(entry.spec, id="provided")


def test_a_model_reads_loading_while_its_worker_sets_up(
    lab: tuple[ModelRegistry, ProcessHost],
) -> None:
    registry, host = lab
    entry = registry.get("slowsetup")
    assert host.status(entry).state is ModelState.IDLE and host.status(entry).ready
    answers = []
    thread = threading.Thread(
        target=lambda: answers.append(host.run(request(registry, "slowsetup", constant(1.0))))
    )
    thread.start()
    wait_until(lambda: host.status(entry).state is ModelState.LOADING, what="loading")
    assert not host.status(entry).ready
    thread.join(30)
    assert answers and host.status(entry).state is ModelState.READY
    assert host.status(entry).worker == answers[0].worker
    assert "slowsetup" in host.loaded_models()


def test_a_replaced_model_version_stops_its_worker(tmp_path: Path) -> None:
    registry, host, _ = open_host(tmp_path)
    try:
        old = host.run(request(registry, "double", constant(1.0)))
        model = tmp_path / "lab" / "model.py"
        model.write_text(model.read_text().replace("* 2.0", "* 4.0"))
        registry.reload_changed()
        new = host.run(request(registry, "double", constant(1.0)))
        assert np.all(values(new) == 4.0) and new.worker != old.worker
        wait_until(lambda: old.worker not in [w.pid for _, w in host.workers()], what="old stop")
        assert host.loaded_models().count("double") == 1
    finally:
        host.close()
