"""Plug-ins whose worker dies (``sys.exit(3)``, SIGSEGV): contained, restarted, then failed.

Each crash fails only the request the worker held, with an error naming the model and what
happened (HTTP 500); the next request reaches a new worker; after ``max_crashes`` (2 here)
crashes within ``crash_window`` the model is marked failed (not ready, listed with its error,
answering 503) until its file is fixed. Other models answer on both doors throughout, and
the server stays ready. Servers: ``tests/isolation/conftest.py``'s, and one serving nothing
but ``segfaults`` for the server's own readiness.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from frameserve.serve.server import FrameServer
from tests.isolation.conftest import ISOLATED
from tests.support.http_client import request
from tests.support.misbehaving import (
    DOORS,
    Doors,
    bring_back,
    index_entry,
    metric,
    new_frame,
    ready_status,
    while_misbehaving,
)
from tests.support.model_folders import wait_for
from tests.support.paths import MISBEHAVING
from tests.support.servers import start_server

#: What each crash is: a regular expression its error message must match.
CAUSES = {"exits": r"exit.*\b3\b", "segfaults": r"SIGSEGV|signal 11"}
#: The ``reason`` label of its crash and restart counters.
REASONS = {"exits": "exit", "segfaults": "signal"}
#: Seconds for a crashed request to be answered, the worker restarted (torch imported) with
#: backoff and the next request answered: a bound against hanging, not a target.
CRASH_BOUND = 15.0


def crash(doors: Doors, door: str, model: str) -> str:
    """Send ``model`` a request that crashes its worker while others are checked; the error."""
    [answer], probes = while_misbehaving(doors, [lambda: doors.call(door, model, new_frame())])
    assert probes
    assert answer.seconds < CRASH_BOUND, f"{model} answered after {answer.seconds:.1f} s"
    return answer.error_naming(500, model, CAUSES[model])


def counted(server: FrameServer, what: str, model: str) -> float:
    """Model ``model``'s ``frameserve_worker_{what}_total`` for its kind of crash."""
    return metric(server, f"frameserve_worker_{what}_total", model=model, reason=REASONS[model])


@pytest.mark.parametrize("model", sorted(CAUSES))
def test_a_crash_fails_its_request_and_the_next_reaches_a_new_worker(
    server: FrameServer, doors: Doors, served_by: Callable[[str], list[str]], model: str
) -> None:
    crashes, restarts = counted(server, "crashes", model), counted(server, "restarts", model)
    crash(doors, "mlclient", model)
    assert counted(server, "crashes", model) == crashes + 1
    crash(doors, "http", model)
    assert counted(server, "crashes", model) == crashes + 2
    # The second crash was a new worker's: the first was restarted.
    assert counted(server, "restarts", model) >= restarts + 1
    wait_for(lambda: len(served_by(model)) == 2, what="a log line per request")
    first, second = served_by(model)
    assert first.isdigit() and second.isdigit() and first != second, (first, second)


@pytest.mark.parametrize("model", sorted(CAUSES))
def test_after_max_crashes_the_model_is_failed_and_the_rest_serve(
    server: FrameServer, doors: Doors, model: str
) -> None:
    # The previous test crashed it twice (max_crashes): it is failed now.
    assert metric(server, "frameserve_worker_crashes_total", model=model) == 2
    assert ready_status(server, model) == 503
    entry = index_entry(server, model)
    why = rf"{CAUSES[model]}|crash"
    assert entry["state"] == "UNAVAILABLE", entry
    assert re.search(why, entry["reason"], re.IGNORECASE), entry
    for door in DOORS:
        answer = doors.call(door, model, new_frame())
        answer.error_naming(503, model, why)
        assert answer.seconds < CRASH_BOUND
    # Failing refuses at once: no new worker is started to crash again.
    assert metric(server, "frameserve_worker_crashes_total", model=model) == 2
    assert request(server, "GET", "/v2/health/ready").status == 200
    assert ready_status(server, "identity") == 200
    doors.check_others()


# -- fixed on disk: last, since it changes the plug-ins -----------------------------------------


@pytest.mark.parametrize("model", sorted(CAUSES))
def test_fixing_the_file_brings_a_failed_model_back(
    server: FrameServer, doors: Doors, plugins: Path, model: str
) -> None:
    assert ready_status(server, model) == 503  # failed by the tests above
    bring_back(doors, plugins / model, model)
    assert index_entry(server, model)["state"] == "READY"


# -- a server whose only model fails -----------------------------------------------------------


@pytest.fixture(scope="module")
def lonely(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FrameServer, Path]]:
    """A server with no built-ins and one model, ``segfaults``; and its plug-in folder."""
    root = tmp_path_factory.mktemp("lonely")
    shutil.copytree(MISBEHAVING / "segfaults", root / "segfaults")
    running = start_server(**{**ISOLATED, "model_folders": (root,), "builtin_models": False})
    yield running, root / "segfaults"
    running.close()


def test_the_server_is_not_ready_while_no_model_can_serve(
    lonely: tuple[FrameServer, Path],
) -> None:
    server, folder = lonely
    assert request(server, "GET", "/v2/health/ready").status == 200
    doors = Doors(server)
    for door in DOORS:
        doors.call(door, "segfaults", new_frame()).error_naming(
            500, "segfaults", CAUSES["segfaults"]
        )
    ready = request(server, "GET", "/v2/health/ready")
    assert ready.status == 503 and ready.json() == {"ready": False}
    assert request(server, "GET", "/v2/health/live").status == 200
    bring_back(doors, folder, "segfaults")
    assert request(server, "GET", "/v2/health/ready").status == 200
