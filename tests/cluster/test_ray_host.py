"""A real local Ray cluster serving frameserve's models through both doors (issue 18).

One server with ``--ray auto`` on the session's Ray cluster (``conftest.py``: a head and a
second node started with ``ray start``) is shared by the module;
the models are written as real model folders (a scale, a plug-in that raises, one that sleeps
and one that waits at a gate and tells its process id). Ray is a test extra: without it these
tests fail, never skip.
"""

from __future__ import annotations

import http.client
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.engine.cluster.connect import import_ray
from frameserve.engine.request import InferenceResult, Priority, build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ModelCrashedError, ModelRunError, ModelTimeoutError
from frameserve.serve.server import FrameServer
from tests.support.model_folders import (
    HANG_GUARD,
    frame,
    gated_source,
    http_infer,
    node_infer,
    scale_source,
    wait_for,
    write_file,
    write_model,
)
from tests.support.node_client import NodeClient
from tests.support.ray_cluster import RayCluster
from tests.support.servers import start_server

#: Ray starts replicas in seconds; waits on the cluster get this long.
CLUSTER_GUARD = 60.0

SLEEPY = textwrap.dedent(
    '''
    """Sleeps ``seconds`` per frame and returns its input."""

    import time

    from frameserve import FloatKnob, ImageSpec, Model


    class Sleepy(Model):
        id = "sleepy"
        cacheable = False
        inputs = (ImageSpec("image", channels=3),)
        outputs = (ImageSpec("image", channels=3),)
        knobs = (FloatKnob("seconds", default=0.0, min=0.0, max=10.0),)

        def predict(self, frames, knobs):
            time.sleep(float(knobs["seconds"]))
            return frames["image"]
    '''
)

RAISES = textwrap.dedent(
    '''
    """Raises on every call."""

    from frameserve import ImageSpec, Model


    class Raises(Model):
        id = "raises"
        cacheable = False
        inputs = (ImageSpec("image", channels=3),)
        outputs = (ImageSpec("image", channels=3),)

        def predict(self, frames, knobs):
            raise RuntimeError("this plug-in raises on purpose")
    '''
)


@pytest.fixture(scope="module")
def cluster(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the module's files; the models run on ``ray_cluster`` (two nodes, started
    with ``ray start``, custom resources ``node_a``/``node_b``)."""
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def server(cluster: Path) -> Iterator[FrameServer]:
    """A server whose models run as Ray Serve deployments on ``cluster``."""
    models = cluster / "models"
    gate = cluster / "gate"
    gate.mkdir()
    write_model(models / "scale", scale_source("scale", 2.0))
    write_model(models / "sleepy", SLEEPY)
    for replicas in (1, 2):  # the same plug-in under two ids, deployed with 1 and 2 replicas
        source = SLEEPY.replace('"sleepy"', f'"sleepy{replicas}"')
        write_model(models / f"sleepy{replicas}", source)
    write_model(models / "raises", RAISES)
    write_model(models / "gated", gated_source(gate))
    plan = cluster / "deployments.toml"
    write_file(
        plan,
        "[default]\nnum_cpus = 0.1\nmax_ongoing_requests = 4\n\n"
        "[models.scale]\nresources = { node_a = 1 }\n\n"
        "[models.sleepy]\nresources = { node_b = 1 }\n\n"
        "[models.sleepy1]\nmax_ongoing_requests = 1\n\n"
        "[models.sleepy2]\nmin_replicas = 2\nmax_replicas = 2\nmax_ongoing_requests = 1\n",
    )
    server = start_server(
        model_folders=(models,),
        builtin_models=False,
        ray_address="auto",
        ray_deployments=plan,
        reload_interval=None,
        workers=2,
        batch_workers=1,
    )
    try:
        yield server
    finally:
        server.close()


def submit(
    server: FrameServer, model: str, image: np.ndarray, *, priority: Priority, **knobs: object
) -> Future[InferenceResult]:
    entry = server.registry.get(model)
    request = build_request(entry, [torch.from_numpy(image)], knobs, priority=priority)
    return server.scheduler.submit(request)


def metrics(server: FrameServer) -> str:
    conn = http.client.HTTPConnection(*server.http_address, timeout=HANG_GUARD)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def test_ray_is_installed() -> None:
    """Ray Serve is a test extra: its absence fails the suite instead of skipping these."""
    ray, serve = import_ray()

    assert ray.__version__ >= "2.40" and serve is not None


def test_both_doors_answer_with_the_in_process_pixels(server: FrameServer) -> None:
    image = frame(3, height=48, width=64)
    entry = server.registry.get("scale")
    expected = Runner(server.registry, device="cpu").run(
        build_request(entry, [torch.from_numpy(image)], {})
    )
    wanted = expected.frames["image"].numpy()
    np.testing.assert_array_equal(wanted, image * 2.0)
    status, answer = http_infer(server, "scale", image)
    assert status == 200, answer
    np.testing.assert_array_equal(answer[1], wanted)
    np.testing.assert_array_equal(node_infer(server, "scale", image), wanted)
    fresh = frame(5, height=48, width=64)  # not in the result cache
    result = submit(server, "scale", fresh, priority=Priority.INTERACTIVE).result(CLUSTER_GUARD)
    assert result.worker is not None and result.worker != os.getpid()  # ran on a replica
    np.testing.assert_array_equal(result.frames["image"].numpy(), fresh * 2.0)
    assert server.host.status(entry).ready
    assert server.engine.model_memory(entry).loaded  # the dashboard's "loaded"


def test_a_model_that_raises_gives_the_client_a_clear_error(server: FrameServer) -> None:
    image = frame(1)
    future = submit(server, "raises", image, priority=Priority.INTERACTIVE)
    with pytest.raises(ModelRunError, match="raises on purpose"):
        future.result(CLUSTER_GUARD)
    status, answer = http_infer(server, "raises", image)
    assert status == 500 and "raises on purpose" in answer["error"], answer
    host, port = server.mlclient_address
    node = NodeClient(host, port, timeout=CLUSTER_GUARD)
    reply = node.infer(node.model("raises"), [image])
    assert reply.HasField("error") and "raises on purpose" in reply.error.msg


def test_an_interactive_request_overtakes_queued_batch_ones(server: FrameServer) -> None:
    image = frame(2)
    submit(server, "sleepy", image, priority=Priority.INTERACTIVE).result(CLUSTER_GUARD)  # warm
    done: dict[str, float] = {}
    batch = [
        submit(server, "sleepy", image, priority=Priority.BATCH, seconds=1.0) for _ in range(4)
    ]
    for index, future in enumerate(batch):
        future.add_done_callback(lambda _, i=index: done.setdefault(f"batch{i}", time.monotonic()))
    time.sleep(0.2)  # the first batch request runs, the others wait at the gateway
    assert server.engine.queue_depth(Priority.BATCH) >= 2
    started = time.monotonic()
    result = submit(server, "sleepy", image, priority=Priority.INTERACTIVE).result(CLUSTER_GUARD)
    done["interactive"] = time.monotonic()
    np.testing.assert_array_equal(result.frames["image"].numpy(), image)
    assert done["interactive"] - started < 0.9  # not after the running batch call
    for future in batch:
        future.result(CLUSTER_GUARD)
    order = sorted(done, key=done.__getitem__)
    assert order.index("interactive") <= 1, order  # at most the running batch call was first


def test_the_cache_answers_at_the_gateway(server: FrameServer) -> None:
    image = frame(7, height=16, width=16)

    def calls() -> float:
        lines = [
            line
            for line in metrics(server).splitlines()
            if line.startswith("frameserve_ray_replica_calls{") and 'model="scale"' in line
        ]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    first = http_infer(server, "scale", image)
    before = calls()
    second = http_infer(server, "scale", image)
    assert first[0] == second[0] == 200
    np.testing.assert_array_equal(first[1][1], second[1][1])
    assert calls() == before  # the second answer never reached the cluster
    assert 'frameserve_cache_lookups_total{result="hit"}' in metrics(server)


def test_metrics_show_each_replica(server: FrameServer) -> None:
    http_infer(server, "scale", frame(9))
    text = metrics(server)
    calls = [line for line in text.splitlines() if line.startswith("frameserve_ray_replica_calls{")]
    assert any('model="scale"' in line and 'replica="' in line for line in calls), text
    assert "frameserve_ray_replica_busy_seconds{" in text
    wait_for(
        lambda: (
            'frameserve_ray_replicas{model="scale",version="1",state="RUNNING"} 1'
            in metrics(server)
        ),
        what="the replica count in /metrics",
        timeout=CLUSTER_GUARD,
    )


def test_a_killed_replica_fails_only_its_requests_and_is_replaced(
    server: FrameServer, cluster: Path
) -> None:
    gate = cluster / "gate"
    image = frame(4)
    other = submit(server, "scale", image, priority=Priority.INTERACTIVE)
    future = submit(server, "gated", image, priority=Priority.INTERACTIVE)
    wait_for(lambda: list(gate.glob("started-*")), what="the gated call", timeout=CLUSTER_GUARD)
    pid = int(next(gate.glob("started-*")).name.split("-")[1])
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ModelCrashedError, match="died"):
        future.result(CLUSTER_GUARD)
    np.testing.assert_array_equal(other.result(CLUSTER_GUARD).frames["image"].numpy(), image * 2)
    (gate / "release").touch()
    deadline = time.monotonic() + CLUSTER_GUARD
    while True:  # Ray Serve starts a new replica; calls answer again
        try:
            result = submit(server, "gated", image, priority=Priority.INTERACTIVE).result(
                CLUSTER_GUARD
            )
            break
        except ModelCrashedError:
            assert time.monotonic() < deadline, "the replica was not replaced"
            time.sleep(0.5)
    assert result.worker is not None and result.worker != pid
    np.testing.assert_array_equal(result.frames["image"].numpy(), image)
    text = metrics(server)
    assert 'frameserve_worker_crashes_total{model="gated",reason="replica"} 1' in text, text
    assert 'frameserve_worker_restarts_total{model="gated",reason="replica died"} 1' in text


def test_a_changed_model_is_rolled_out_to_its_replicas(server: FrameServer, cluster: Path) -> None:
    folder = server.settings.model_folders[0] / "rolling"
    write_model(folder, scale_source("rolling", 2.0))
    server.registry.reload_changed()
    image = frame(11)
    first = submit(server, "rolling", image, priority=Priority.INTERACTIVE).result(CLUSTER_GUARD)
    np.testing.assert_array_equal(first.frames["image"].numpy(), image * 2.0)
    write_model(folder, scale_source("rolling", 3.0, label="Rolling three"))
    assert "rolling" in " ".join(server.registry.reload_changed())
    wait_for(
        lambda: server.host.status(server.registry.get("rolling")).ready,
        what="the new version deployed",
        timeout=CLUSTER_GUARD,
    )
    again = submit(server, "rolling", image, priority=Priority.INTERACTIVE).result(CLUSTER_GUARD)
    np.testing.assert_array_equal(again.frames["image"].numpy(), image * 3.0)
    assert again.worker is not None


def replica_nodes(server: FrameServer, model: str) -> set[str]:
    """The Ray nodes whose replicas of ``model`` answered calls (from ``/metrics``)."""
    nodes = set()
    for line in metrics(server).splitlines():
        if line.startswith("frameserve_ray_replica_calls{") and f'model="{model}"' in line:
            nodes.add(line.split('node="', 1)[1].split('"', 1)[0])
    return nodes


def test_models_are_placed_on_the_nodes_their_resources_name(server: FrameServer) -> None:
    ray, _ = import_ray()
    image = frame(12)
    assert http_infer(server, "scale", image)[0] == 200
    status, answer = http_infer(server, "sleepy", image)
    assert status == 200, answer
    np.testing.assert_array_equal(node_infer(server, "sleepy", image), image)
    having = {
        name: {node["NodeID"] for node in ray.nodes() if node["Resources"].get(name)}
        for name in ("node_a", "node_b")
    }
    assert len(having["node_a"]) == len(having["node_b"]) == 1
    assert having["node_a"] != having["node_b"]
    assert replica_nodes(server, "scale") == having["node_a"]
    assert replica_nodes(server, "sleepy") == having["node_b"]


def test_a_call_past_its_deadline_fails_with_a_timeout(server: FrameServer) -> None:
    entry = server.registry.get("sleepy")
    request = build_request(
        entry, [torch.from_numpy(frame(13))], {"seconds": 2.0}, deadline=time.monotonic() + 0.5
    )
    started = time.monotonic()
    with pytest.raises(ModelTimeoutError, match="timeout"):
        server.scheduler.submit(request).result(CLUSTER_GUARD)
    assert time.monotonic() - started < 1.5


def test_two_replicas_serve_about_twice_the_frames_of_one(server: FrameServer) -> None:
    image = frame(14)

    def seconds_for(model: str, frames: int) -> float:
        submit(server, model, image, priority=Priority.INTERACTIVE).result(CLUSTER_GUARD)
        started = time.monotonic()
        futures = []
        for _ in range(frames):  # a little apart: the model's second lane thread starts when
            # a request finds the first one busy
            futures.append(
                submit(server, model, image, priority=Priority.INTERACTIVE, seconds=0.25)
            )
            time.sleep(0.02)
        for future in futures:
            future.result(CLUSTER_GUARD)
        return time.monotonic() - started

    one = seconds_for("sleepy1", 8)
    two = seconds_for("sleepy2", 8)
    assert one / two >= 1.8, (one, two)
    replicas = [
        line
        for line in metrics(server).splitlines()
        if line.startswith("frameserve_ray_replica_calls{") and 'model="sleepy2"' in line
    ]
    assert len(replicas) == 2, replicas


def test_frameserve_run_fans_a_shot_over_the_replicas(
    server: FrameServer, cluster: Path, tmp_path: Path
) -> None:
    """``frameserve run --ray``: the frames of a shot on two replicas, written as locally."""
    from frameserve.media.image_read import read_image
    from tests.shots.plates import FRAMES, frameserve_run, output, write_plates

    models = tmp_path / "models"
    write_model(models / "runscale", scale_source("runscale", 2.0))  # its own deployment
    plan = tmp_path / "deployments.toml"
    write_file(plan, "[default]\nnum_cpus = 0.1\nmin_replicas = 2\nmax_replicas = 2\n")
    plates = write_plates(tmp_path / "plates")
    out = tmp_path / "out"
    argv = ["runscale", "--input", plates.pattern, "--output", str(out / "out.####.exr")]
    argv += ["--models", str(models), "--no-builtins", "--ray", "auto"]
    assert frameserve_run(*argv, "--ray-deployments", plan, "--jobs", "4") == 0
    for frame_number in FRAMES:
        written = read_image(output(out, frame_number)).pixels
        np.testing.assert_allclose(written, plates.pixels[frame_number] * 2.0, rtol=1e-3)
    assert frameserve_run(*argv) == 0  # resume: every frame is there, nothing runs again


def test_frameserve_retime_runs_on_the_cluster(tmp_path: Path) -> None:
    """``frameserve retime --ray``: the in-between comes from the retime model's replica."""
    from frameserve.catalogue.registry import ModelRegistry
    from frameserve.cli.main import main
    from frameserve.media.imageio import read_image, write_image
    from frameserve.shots.backends import LocalBackend

    rng = np.random.default_rng(3)
    base = rng.random((3, 64, 96), dtype=np.float32)
    sources = {1001: base, 1002: np.roll(base, 2, axis=2)}
    for number, pixels in sources.items():
        write_image(tmp_path / f"plate.{number}.exr", pixels)
    plan = tmp_path / "deployments.toml"
    write_file(plan, "[default]\nnum_cpus = 0.1\n")
    out = tmp_path / "slow"
    argv = ["retime", "--input", str(tmp_path / "plate.####.exr"), "--output"]
    argv += [str(out / "slow.####.exr"), "--speed", "0.5", "--ray", "auto"]
    assert main([*argv, "--ray-deployments", str(plan)]) == 0
    a, b = (read_image(tmp_path / f"plate.{n}.exr").hwc for n in (1001, 1002))
    local = LocalBackend(ModelRegistry([], builtins=True), device="cpu")
    expected, _ = local.infer("retime", {"a": a, "b": b}, {"t": 0.5}, colourspace=None)
    np.testing.assert_allclose(read_image(out / "slow.1002.exr").hwc, expected["image"], atol=1e-4)
    assert np.array_equal(read_image(out / "slow.1003.exr").hwc, b)
