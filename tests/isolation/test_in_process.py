"""With ``isolation=False`` models run in the server's process, and bad plug-ins are contained.

A plug-in that raises, returns the wrong shape or NaN gets the answers it gets in a worker;
one that calls ``sys.exit`` fails its own request and must not end a scheduler thread: more
such requests than there are scheduler threads, and every model still answers, on both
doors. ``segfaults``, ``loops`` and ``hog`` are never run here: they would take the test
process down, hang it, or fill its memory. The server is ``tests/isolation/conftest.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from frameserve.serve.server import FrameServer
from tests.support.http_client import request
from tests.support.misbehaving import DOORS, Doors, metric, new_frame, while_misbehaving
from tests.support.model_folders import wait_for

SETTINGS = {"isolation": False, "workers": 2}


@pytest.mark.parametrize("door", DOORS)
def test_a_raising_plugin_fails_its_own_request(doors: Doors, door: str) -> None:
    [answer], probes = while_misbehaving(doors, [lambda: doors.call(door, "raises", new_frame())])
    answer.error_naming(500, "raises", r"RuntimeError: this plug-in raises on purpose")
    assert probes


@pytest.mark.parametrize("door", DOORS)
def test_a_plugin_returning_the_wrong_shape_fails_its_own_request(doors: Doors, door: str) -> None:
    answer = doors.call(door, "wrong_shape", new_frame())
    answer.error_naming(500, "wrong_shape", r"output 'image'", r"\(C, H, W\)", r"\(8, 8\)")
    doors.check_others()


@pytest.mark.parametrize("door", DOORS)
def test_a_plugin_returning_nan_gets_nan_to_its_client(doors: Doors, door: str) -> None:
    image = new_frame()
    answer = doors.call(door, "nan", image)
    assert answer.ok, answer.error
    assert answer.image is not None and answer.image.shape == image.shape
    assert np.isnan(answer.image).all()
    doors.check_others()


def test_sys_exit_in_a_plugin_ends_no_scheduler_thread(server: FrameServer, doors: Doors) -> None:
    # Three requests per door, six in all: more than the two scheduler threads, so a thread
    # ended by SystemExit would leave the later ones, and every other model, unanswered.
    for _ in range(3):
        for door in DOORS:
            answer = doors.call(door, "exits", new_frame())
            answer.error_naming(500, "exits", r"exit.*\b3\b")
    doors.check_others()
    assert request(server, "GET", "/v2/health/ready").status == 200
    # No worker process: nothing was restarted.
    assert metric(server, "frameserve_worker_restarts_total") == 0


def test_the_request_log_says_no_worker_served(
    doors: Doors, served_by: Callable[[str], list[str]]
) -> None:
    for door in DOORS:
        assert doors.call(door, "nan", new_frame()).ok
    wait_for(lambda: len(served_by("nan")) == 2, what="a log line per request")
    assert served_by("nan") == ["-", "-"]
