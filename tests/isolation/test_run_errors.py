"""Plug-ins that fail in predict (raise, return the wrong shape, return NaN) in worker processes.

Their clients get the answers they got when models ran in the server's process: a raising
plug-in and one returning the wrong shape fail their own request (HTTP 500, an MLClient
``Error`` naming the model and what was wrong), a NaN frame comes back as NaN. The worker
lives on (an exception in predict is not a crash), other models keep answering on both doors,
and a fixed file brings the model back. The server is ``tests/isolation/conftest.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from frameserve.serve.server import FrameServer
from tests.support.misbehaving import (
    DOORS,
    Answer,
    Doors,
    bring_back,
    metric,
    new_frame,
    while_misbehaving,
)
from tests.support.model_folders import wait_for


def bad_call(doors: Doors, door: str, model: str) -> Callable[[], Answer]:
    return lambda: doors.call(door, model, new_frame())


@pytest.mark.parametrize("door", DOORS)
def test_a_raising_plugin_fails_its_own_request_and_others_keep_answering(
    server: FrameServer, doors: Doors, door: str
) -> None:
    crashes = metric(server, "frameserve_worker_crashes_total", model="raises")
    [answer], probes = while_misbehaving(doors, [bad_call(doors, door, "raises")])
    answer.error_naming(500, "raises", r"RuntimeError: this plug-in raises on purpose")
    assert probes
    # An exception in predict fails the request; it is not a crash of the worker.
    assert metric(server, "frameserve_worker_crashes_total", model="raises") == crashes


def test_a_raising_plugin_keeps_its_worker(
    server: FrameServer, doors: Doors, served_by: Callable[[str], list[str]]
) -> None:
    restarts = metric(server, "frameserve_worker_restarts_total", model="raises")
    for door in DOORS:
        doors.call(door, "raises", new_frame()).error_naming(500, "raises", "RuntimeError")
    wait_for(lambda: len(served_by("raises")) == 2, what="a log line per request")
    first, second = served_by("raises")
    assert first.isdigit() and first == second, f"served by worker {first}, then {second}"
    assert metric(server, "frameserve_worker_restarts_total", model="raises") == restarts


def test_the_request_log_names_the_worker(
    doors: Doors, served_by: Callable[[str], list[str]]
) -> None:
    for door in DOORS:
        assert doors.call(door, "nan", new_frame()).ok
    wait_for(lambda: len(served_by("nan")) == 2, what="a log line per request")
    first, second = served_by("nan")
    assert first.isdigit() and first == second, f"served by worker {first}, then {second}"


@pytest.mark.parametrize("door", DOORS)
def test_a_plugin_returning_the_wrong_shape_fails_its_own_request(doors: Doors, door: str) -> None:
    [answer], probes = while_misbehaving(doors, [bad_call(doors, door, "wrong_shape")])
    answer.error_naming(500, "wrong_shape", r"output 'image'", r"\(C, H, W\)", r"\(8, 8\)")
    assert probes


@pytest.mark.parametrize("door", DOORS)
def test_a_plugin_returning_nan_gets_nan_to_its_client(doors: Doors, door: str) -> None:
    image = new_frame()
    [answer], probes = while_misbehaving(doors, [lambda: doors.call(door, "nan", image)])
    assert answer.ok, answer.error
    assert answer.image is not None and answer.image.shape == image.shape
    assert np.isnan(answer.image).all()  # never cleaned or clipped on the way back
    assert probes


# -- fixed on disk: last, since it changes the plug-ins -----------------------------------------


@pytest.mark.parametrize("model", ["raises", "wrong_shape", "nan"])
def test_fixing_the_file_brings_the_model_back(doors: Doors, plugins: Path, model: str) -> None:
    bring_back(doors, plugins / model, model)
