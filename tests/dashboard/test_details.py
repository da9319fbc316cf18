"""What the dashboard's pages show beyond the basics: each recent request's frame size (through
both doors), each model's memory and whether it is loaded (isolation on and off), and a
training job's settings (in the HTTP training API, the client and the training page's data)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frameserve.client import Client, ProtocolViolation
from frameserve.client._training import TrainingJob
from frameserve.serve.server import FrameServer
from tests.support.node_client import NodeClient
from tests.support.servers import start_server
from tests.training.helpers import ANSWER_GUARD, SETTINGS, api, write_pairs

Team = tuple[FrameServer, dict[str, str]]
JOBS = "/v2/training/jobs"


def dashboard(server: FrameServer, page: str, token: str | None = None) -> Any:
    """One look at a dashboard page's data."""
    status, data = api(server, "GET", f"/v2/dashboard/{page}", token=token)
    assert status == 200, data
    return data


def infer_http(
    server: FrameServer,
    token: str | None,
    model: str,
    shape: list[int],
    parameters: dict[str, Any] | None = None,
) -> tuple[int, bytes]:
    """Send zeros of ``shape`` ([H, W, C] or [N, H, W, C]) to ``model``; status and body."""
    frame = np.zeros(shape, np.float32).tobytes()
    header = json.dumps(
        {
            "parameters": parameters or {},
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(frame)},
                }
            ],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        server.http_url + f"/v2/models/{model}/infer", data=header + frame, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_GUARD) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def model_named(models: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [m for m in models if m["name"] == name]
    return found


# -- the size of each recent request ---------------------------------------------------------


def test_recent_requests_carry_their_frame_size_from_both_doors(team: Team) -> None:
    server, tokens = team
    assert infer_http(server, tokens["td"], "identity", [6, 8, 3])[0] == 200
    assert infer_http(server, tokens["td"], "identity", [2, 6, 8, 3])[0] == 200  # a batch
    knob = {"no_such_knob": 1}
    assert infer_http(server, tokens["td"], "identity", [6, 8, 3], knob)[0] == 400
    assert infer_http(server, tokens["td"], "no_such_model", [6, 8, 3])[0] == 404
    host, port = server.mlclient_address
    node = NodeClient(host, port)
    reply = node.infer(node.model("identity"), [np.zeros((3, 5, 7), np.float32)])
    assert not reply.HasField("error") or not reply.error.msg, reply.error.msg

    # a door records a request once its answer is sent: wait a moment for the last one
    until = time.monotonic() + 5
    while server.engine.recent.sequence < 5 and time.monotonic() < until:
        time.sleep(0.02)
    recent = dashboard(server, "overview", tokens["td"])["recent"]
    seen = [(r["protocol"], r["model"], r["outcome"], r["size"]) for r in recent[:5]]
    assert seen == [
        ("mlclient", "identity", "ok", "7x5"),  # the node's frame: width x height
        ("http", "unknown", "404", "-"),  # no model: no frames were read
        ("http", "identity", "400", "8x6"),  # read, then refused: its size is known
        ("http", "identity", "ok", "8x6 (2 frames)"),
        ("http", "identity", "ok", "8x6"),
    ]
    # an artist sees the sizes too (only who sent a request is hidden from them)
    recent = dashboard(server, "overview", tokens["artist"])["recent"]
    assert recent[0]["size"] == "7x5" and recent[0]["user"] == "someone"


# -- the memory each model holds ---------------------------------------------------------------


def test_a_model_used_once_is_loaded_and_holds_memory_an_unused_one_is_not(team: Team) -> None:
    server, tokens = team
    before = dashboard(server, "models", tokens["artist"])["models"]
    unused = model_named(before, "convnet")
    assert unused["loaded"] is False and unused["memory_bytes"] is None
    broken = model_named(before, "broken_import")
    assert broken["state"] == "failed" and broken["loaded"] is False

    assert infer_http(server, tokens["artist"], "convnet", [8, 8, 3])[0] == 200
    models = dashboard(server, "models", tokens["artist"])["models"]
    used = model_named(models, "convnet")
    assert used["state"] == "ready" and used["loaded"] is True
    # isolation is on: the worker's private memory (torch and the model), to the MiB
    assert used["memory_bytes"] >= 16 << 20 and used["memory_bytes"] % (1 << 20) == 0
    assert 0 < used["model_bytes"] < used["memory_bytes"]  # its parameters, a part of that
    assert model_named(models, "knobby")["loaded"] is False  # still unused
    # the figure is the one /metrics gives for that worker (read a moment apart: within 8 MiB)
    status, text = api(server, "GET", "/metrics", token=tokens["td"])
    assert status == 200
    (line,) = [
        line
        for line in text.decode().splitlines()
        if line.startswith('frameserve_worker_memory_bytes{model="convnet"')
    ]
    assert abs(float(line.rsplit(" ", 1)[1]) - used["memory_bytes"]) < 8 << 20


def test_without_isolation_the_pool_tells_each_models_size(tmp_path: Path) -> None:
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None, isolation=False)
    try:
        assert model_named(dashboard(server, "models")["models"], "convnet")["loaded"] is False
        assert infer_http(server, None, "convnet", [8, 8, 3])[0] == 200
        models = dashboard(server, "models")["models"]
        used = model_named(models, "convnet")
        expected = sum(p.numel() * 4 for p in _convnet_parameters(server))
        assert used["loaded"] is True and used["memory_bytes"] == used["model_bytes"] == expected
        assert model_named(models, "knobby")["loaded"] is False
    finally:
        server.close()


def _convnet_parameters(server: FrameServer) -> list[torch.Tensor]:
    """The parameters of a fresh convnet test model (float32), counted here, not by the pool."""
    model = server.engine.model("convnet").model_class()
    model.setup(torch.device("cpu"))
    modules = [v for v in vars(model).values() if isinstance(v, torch.nn.Module)]
    assert modules
    return [p for module in modules for p in module.parameters()]


# -- a training job's settings -----------------------------------------------------------------


def test_a_jobs_status_carries_its_settings_through_the_api_and_the_client(
    team: Team, tmp_path: Path
) -> None:
    server, tokens = team
    [[source, target]] = write_pairs(tmp_path, 1)
    settings = {**SETTINGS, "steps": 3, "learning_rate": 0.001, "flips": False}
    pair = []
    for path in (source, target):
        uploads = f"/v2/training/uploads?filename={Path(path).name}"
        status, answer = api(
            server, "POST", uploads, raw=Path(path).read_bytes(), token=tokens["td"]
        )
        assert status in (200, 201), answer
        pair.append({"upload": answer["id"]})
    body = {"name": "settled", "pairs": [pair], "settings": settings}
    status, job = api(server, "POST", JOBS, body, token=tokens["td"])
    assert status == 201, job
    for key, value in settings.items():
        assert job["settings"][key] == value, key
    assert job["settings"]["device"] == "cpu" and "seed" in job["settings"]  # defaults too
    assert server.jobs.wait("settled", timeout=ANSWER_GUARD).state == "done"

    status, resumed = api(
        server, "POST", f"{JOBS}/settled/resume", {"steps": 5}, token=tokens["td"]
    )
    assert status == 200 and resumed["settings"]["steps"] == 5 == resumed["total_steps"]
    assert server.jobs.wait("settled", timeout=ANSWER_GUARD).state == "done"
    status, listed = api(server, "GET", JOBS, token=tokens["td"])
    (shown,) = [j for j in listed["jobs"] if j["name"] == "settled"]
    assert shown["settings"]["learning_rate"] == 0.001 and shown["settings"]["flips"] is False

    with Client(server.http_url, token=tokens["td"]) as client:
        parsed = client.training.job("settled")
    assert parsed.settings["steps"] == 5 and parsed.settings["crop_size"] == SETTINGS["crop_size"]
    hash(parsed)  # still hashable, as before
    # a server from before the field: the status still reads, with no settings
    older = {k: v for k, v in shown.items() if k != "settings"}
    assert TrainingJob.from_dict(older).settings == {}

    (page_job,) = [
        j for j in dashboard(server, "training", tokens["td"])["jobs"] if j["name"] == "settled"
    ]
    assert page_job["settings"] == shown["settings"]


def test_a_status_whose_settings_are_not_an_object_is_refused() -> None:
    data = {"name": "x", "state": "done", "step": 1, "total_steps": 1, "settings": [1, 2]}
    try:
        TrainingJob.from_dict(data)
    except ProtocolViolation as exc:
        assert "'settings' must be an object" in str(exc)
    else:
        raise AssertionError("a list of settings was accepted")
