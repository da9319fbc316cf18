"""Pools (Ray Serve's model multiplexing) and cancelled calls, on a real Ray cluster.

One server shares a pool of 1 replica that holds at most 2 models between 3 models (real model
folders whose setup counts its loads in a file and holds a tensor). Both doors answer with
each model's pixels; a third model unloads the least recently used one, on the same replica,
as ``/metrics`` and the load counts show. The deployment file's pool tables are checked here
too. A model of its own that waits at a gate shows that when the clients of running calls
disconnect, the next queued request starts on the replica at once.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.engine.cluster.connect import import_ray
from frameserve.engine.cluster.deployments import load_deployments
from frameserve.engine.request import Priority, build_request
from frameserve.errors import ConfigError
from frameserve.serve.server import FrameServer
from tests.serve.net.peers import abort
from tests.support.model_folders import (
    HANG_GUARD,
    frame,
    gated_source,
    http_infer,
    node_infer,
    wait_for,
    write_file,
    write_model,
)
from tests.support.ray_cluster import RayCluster
from tests.support.servers import start_server

#: Ray starts replicas in seconds; waits on the cluster get this long.
CLUSTER_GUARD = 60.0


def counted_source(model_id: str, factor: float, loads: Path) -> str:
    """A model that multiplies by ``factor``, holds 1 MiB of weights and counts its setups."""
    return textwrap.dedent(
        f'''
        """Pool test model {model_id}: its input times {factor}; counts its loads."""

        import os

        import torch

        from frameserve import ImageSpec, Model


        class Counted(Model):
            id = {model_id!r}
            cacheable = False
            inputs = (ImageSpec("image", channels=3),)
            outputs = (ImageSpec("image", channels=3),)

            def setup(self, device):
                self.weights = torch.ones(256, 1024, device=device)  # 1 MiB
                with open({str(loads / model_id)!r}, "a") as counts:
                    counts.write(f"{{os.getpid()}}\\n")

            def predict(self, frames, knobs):
                return frames["image"] * {factor!r}
        '''
    )


FACTORS = {"alpha": 2.0, "beta": 3.0, "gamma": 5.0}


@pytest.fixture(scope="module")
def loads(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the models count their loads (one line with the process id per setup)."""
    folder = tmp_path_factory.mktemp("pool-loads")
    return folder


@pytest.fixture(scope="module")
def server(loads: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrameServer]:
    """A server whose three models share a pool of one replica holding two models."""
    root = tmp_path_factory.mktemp("pool")
    models = root / "models"
    for model_id, factor in FACTORS.items():
        write_model(models / model_id, counted_source(model_id, factor, loads))
    (loads / "gate").mkdir()
    write_model(models / "gated", gated_source(loads / "gate"))
    plan = root / "deployments.toml"
    write_file(
        plan,
        '[default]\nnum_cpus = 0.1\npool = "small"\n\n'
        "[pools.small]\nnum_cpus = 0.1\nmax_models_per_replica = 2\n\n"
        '[models.gated]\npool = ""\n',  # an application of its own
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


def metrics(server: FrameServer) -> str:
    conn = http.client.HTTPConnection(*server.http_address, timeout=HANG_GUARD)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def held(server: FrameServer) -> dict[str, set[str]]:
    """The models each pool replica holds, from ``/metrics``: model ids by replica."""
    found: dict[str, set[str]] = {}
    for line in metrics(server).splitlines():
        if line.startswith("frameserve_ray_replica_models{"):
            replica = line.split('replica="', 1)[1].split('"', 1)[0]
            model = line.split('model="', 1)[1].split('"', 1)[0]
            found.setdefault(replica, set()).add(model)
    return found


def load_count(loads: Path, model: str) -> int:
    path = loads / model
    return len(path.read_text().split()) if path.exists() else 0


def run(server: FrameServer, model: str, image: np.ndarray) -> int:
    """Run ``image`` through ``model`` on the scheduler; check its pixels; return the pid."""
    entry = server.registry.get(model)
    request = build_request(entry, [torch.from_numpy(image)], {}, priority=Priority.INTERACTIVE)
    result = server.scheduler.submit(request).result(CLUSTER_GUARD)
    np.testing.assert_array_equal(result.frames["image"].numpy(), image * FACTORS[model])
    assert result.worker is not None
    return result.worker


def test_three_models_share_one_replica_that_holds_two(
    server: FrameServer, loads: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="frameserve.engine.cluster.pools")
    image = frame(1, height=16, width=24)
    status, answer = http_infer(server, "alpha", image)  # deploys the pool, loads alpha
    assert status == 200, answer
    np.testing.assert_array_equal(answer[1], image * 2.0)
    np.testing.assert_array_equal(node_infer(server, "beta", image), image * 3.0)
    pid = run(server, "alpha", image)
    assert run(server, "beta", image) == pid  # one replica serves both
    assert list(held(server).values()) == [{"alpha", "beta"}]
    assert server.engine.model_memory(server.registry.get("alpha")).loaded
    assert server.engine.model_memory(server.registry.get("alpha")).model_bytes >= 2**20
    assert load_count(loads, "alpha") == load_count(loads, "beta") == 1
    assert set(server.host.loaded_models()) == {"alpha", "beta"}

    run(server, "alpha", image)  # alpha is now the most recently used; beta the least
    assert run(server, "gamma", image) == pid  # the same replica loads gamma, unloads beta
    assert list(held(server).values()) == [{"alpha", "gamma"}]
    assert f"replica {next(iter(held(server)))} of pool small unloaded model beta@1" in caplog.text
    assert not server.engine.model_memory(server.registry.get("beta")).loaded
    assert set(server.host.loaded_models()) == {"alpha", "gamma"}
    assert "frameserve_ray_replica_unloads{" in metrics(server)
    assert load_count(loads, "gamma") == 1
    assert load_count(loads, "alpha") == 1  # still held: not loaded again
    _, serve = import_ray()
    info = serve.get_app_handle("frameserve.pool:small").info.remote().result(timeout_s=10)
    assert info["pid"] == pid and info["unloads"] == 1
    assert info["freed_bytes"] >= 2**20  # the runner no longer holds beta's 1 MiB

    np.testing.assert_array_equal(node_infer(server, "beta", image), image * 3.0)
    assert load_count(loads, "beta") == 2  # loaded again, in the same process
    assert set((loads / "beta").read_text().split()) == {str(pid)}
    assert list(held(server).values()) == [{"gamma", "beta"}]  # alpha was least recent


def test_a_changed_model_replaces_its_old_version_in_the_pool(
    server: FrameServer, loads: Path
) -> None:
    image = frame(2, height=8, width=8)
    run(server, "gamma", image)
    folder = server.settings.model_folders[0] / "gamma"
    before = load_count(loads, "gamma")
    FACTORS["gamma"] = 7.0
    write_model(folder, counted_source("gamma", 7.0, loads))
    assert "gamma" in " ".join(server.registry.reload_changed())
    wait_for(  # the roll-out makes the replica holding gamma load its new version
        lambda: load_count(loads, "gamma") == before + 1,
        what="the new gamma loaded",
        timeout=CLUSTER_GUARD,
    )
    run(server, "gamma", image)  # the new pixels, no further load
    assert load_count(loads, "gamma") == before + 1
    wait_for(
        lambda: server.engine.model_memory(server.registry.get("gamma")).loaded,
        what="the new gamma shown as loaded",
    )
    assert list(held(server).values()) == [{"gamma", "beta"}]  # the old gamma is gone


def http_send(server: FrameServer, model: str, image: np.ndarray) -> socket.socket:
    """Send an HTTP inference request for ``image`` and return its socket, unread."""
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    tensor = {"name": "image", "datatype": "FP32", "shape": list(hwc.shape)}
    tensor["data"] = hwc.reshape(-1).tolist()
    body = json.dumps({"inputs": [tensor]}).encode()
    sock = socket.create_connection(server.http_address, timeout=HANG_GUARD)
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_when_clients_disconnect_their_calls_give_the_replica_up(
    server: FrameServer, loads: Path
) -> None:
    """Both lanes of ``gated`` run calls whose clients then disconnect: the queued request
    starts on the replica at once (the abandoned calls' threads finish in their own time)."""
    gate = loads / "gate"
    image = frame(3, height=8, width=8)
    gone = [http_send(server, "gated", image) for _ in range(2)]  # both lanes (workers=2)
    wait_for(lambda: len(list(gate.glob("started-*"))) == 2, what="2 calls", timeout=CLUSTER_GUARD)
    entry = server.registry.get("gated")
    request = build_request(entry, [torch.from_numpy(image)], {}, priority=Priority.INTERACTIVE)
    queued = server.scheduler.submit(request)  # waits at the gateway: no lane is free
    time.sleep(0.3)
    assert len(list(gate.glob("started-*"))) == 2 and not queued.done()
    left = time.monotonic()
    for sock in gone:
        abort(sock)
    wait_for(lambda: len(list(gate.glob("started-*"))) == 3, what="the queued call started")
    started = time.monotonic() - left
    assert not list(gate.glob("ended-*"))  # the abandoned calls still run: threads go on
    (gate / "release").touch()
    np.testing.assert_array_equal(queued.result(CLUSTER_GUARD).frames["image"].numpy(), image)
    assert started < 1.5, started  # without cancellation: when the gate opens (30 s)
    print(f"the queued call started {started * 1000:.0f} ms after its clients left")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models.x]\npool = "gpu"\n', "pool 'gpu' is not defined; allowed: none"),
        ('[pools.gpu]\n[default]\npool = "cpu"\n', "pool 'cpu' is not defined; allowed: gpu"),
        ("[pools.gpu]\nmax_models_per_replica = 0\n", r"\[pools.gpu\]: max_models_per_replica"),
        ("[pools.gpu]\nmax_models_per_replica = 1.5\n", "must be a whole number"),
        ('[pools.gpu]\npool = "x"\n', r"unknown key\(s\) pool; allowed: .*max_models_per_replica"),
        ('[pools."a b"]\n', "a pool's name is"),
        ("[pools.gpu]\nmax_replicas = 0\n", r"\[pools.gpu\]: replicas"),
        ('[pools.gpu]\n[models.x]\npool = "gpu"\nnum_gpus = 1\n', "remove num_gpus"),
        ('[pools.gpu]\n[default]\npool = "gpu"\n[models.x]\nnum_cpus = 2\n', r"\[models.x\]"),
        ("[pools.gpu]\n[models.x]\npool = 3\n", "pool must be a pool's name"),
        ("pools = 1\n", r"\[pools\] must be a table"),
    ],
)
def test_bad_pools_are_refused_with_what_is_allowed(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "deployments.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_deployments(path)


def test_pool_tables_put_models_in_pools(tmp_path: Path) -> None:
    path = tmp_path / "deployments.toml"
    path.write_text(
        '[default]\nnum_cpus = 0.5\npool = "gpu"\n\n'
        "[pools.gpu]\nnum_gpus = 1\nmax_replicas = 2\nmax_models_per_replica = 4\n\n"
        '[models.big]\npool = ""\nnum_gpus = 1\n'
    )
    plan = load_deployments(path)
    pool = plan.pool_of("denoise", "1")
    assert pool is not None and pool.name == "gpu" and pool.max_models_per_replica == 4
    assert pool.resources.num_gpus == 1 and pool.resources.max_replicas == 2
    assert plan.pool_of("big", "1") is None  # a deployment of its own
    assert plan.for_model("big", "1").num_gpus == 1
