"""Workers busy and idle, for real: the calls each model runs now, as the engine and the
overview tell them (a slow request in flight makes its model busy, idle once it is answered)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from frameserve.serve.server import FrameServer
from tests.dashboard.test_details import dashboard, infer_http
from tests.support.servers import start_server

Team = tuple[FrameServer, dict[str, str]]
#: How long the slow request computes: long enough to be seen in flight on a loaded machine.
SLOW_SECONDS = 3.0


def worker_of(overview: dict[str, Any], model: str) -> dict[str, Any]:
    (found,) = [w for w in overview["workers"] if w["model"] == model]
    return found


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll ``check()`` until it answers something true; fail naming ``what``."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout:g} s for {what}")


def test_a_slow_request_in_flight_makes_its_model_busy_then_idle(team: Team) -> None:
    server, tokens = team
    token = tokens["artist"]
    before = worker_of(dashboard(server, "overview", token), "slow")
    # isolation is on: no worker runs a model before its first request
    assert before["running"] == 0 and before["up"] is False and before["activity"] == "stopped"

    answers: list[int] = []
    sender = threading.Thread(
        target=lambda: answers.append(
            infer_http(server, token, "slow", [8, 8, 3], {"seconds": SLOW_SECONDS})[0]
        )
    )
    sender.start()
    try:
        busy = wait_for(
            lambda: (
                (w := worker_of(dashboard(server, "overview", token), "slow"))["running"] == 1 and w
            ),
            "the slow model to be busy",
        )
        assert busy["activity"] == "busy"
        activity = {a.model: a for a in server.engine.running()}
        assert activity["slow"].busy and activity["slow"].running == 1
        assert not activity["identity"].busy  # the others run nothing
        overview = dashboard(server, "overview", token)
        others = [w for w in overview["workers"] if w["model"] != "slow"]
        assert all(w["running"] == 0 and w["activity"] != "busy" for w in others)
        assert answers == []  # still in flight when it was seen busy
    finally:
        sender.join(60)
    assert answers == [200]
    after = wait_for(
        lambda: (
            (w := worker_of(dashboard(server, "overview", token), "slow"))["running"] == 0 and w
        ),
        "the slow model to be idle",
    )
    # its worker stays up, running nothing: idle
    assert after["up"] is True and after["activity"] == "idle" and after["worker"] is not None
    assert not {a.model: a for a in server.engine.running()}["slow"].busy


def test_in_process_every_model_is_up_and_busy_only_while_it_runs(tmp_path: Path) -> None:
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None, isolation=False)
    try:
        workers = {w["model"]: w for w in dashboard(server, "overview")["workers"]}
        assert workers["slow"]["up"] is True and workers["slow"]["activity"] == "idle"
        assert workers["slow"]["worker"] is None  # the server process itself
        sender = threading.Thread(
            target=infer_http, args=(server, None, "slow", [4, 4, 3], {"seconds": SLOW_SECONDS})
        )
        sender.start()
        try:
            wait_for(
                lambda: worker_of(dashboard(server, "overview"), "slow")["activity"] == "busy",
                "the slow model to be busy in-process",
            )
        finally:
            sender.join(60)
        wait_for(
            lambda: worker_of(dashboard(server, "overview"), "slow")["activity"] == "idle",
            "the slow model to be idle in-process",
        )
    finally:
        server.close()
