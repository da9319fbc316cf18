"""A plug-in that allocates without end: its worker is killed at its cap, the server is spared.

``hog`` declares ``memory_limit_mb = 400`` (below the server's ``worker_memory_bytes``, 1 GiB
here): its worker is killed once past it, the client gets an error naming the cap (HTTP 500),
the server's own memory does not grow, and other models answer throughout. The test server
runs in this process, so its resident memory is this process's; the workers are children.
The server is ``tests/isolation/conftest.py``'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from frameserve.serve.server import FrameServer
from tests.support.misbehaving import (
    Doors,
    bring_back,
    index_entry,
    metric,
    new_frame,
    ready_status,
    sampling_rss,
    while_misbehaving,
)

#: The error names the memory cap: the word and hog's 400 MB (in MB, MiB or bytes).
MEMORY_CAP = r"memory"
CAP_SIZE = r"\b400\b|\b419430400\b|\b400000000\b"
#: How much the server's resident memory may grow while hog runs. It allocates far more than
#: this (its cap is 400 MB, and it writes to all it takes), so running it in the server's
#: process would blow through this bound; answering a few tiny frames does not come near it.
SERVER_GROWTH_BOUND = 100 << 20
#: Seconds for hog to pass its cap, be killed and answered: a bound, not a target.
KILL_BOUND = 15.0


def hog(doors: Doors, door: str) -> tuple[str, int]:
    """Run hog through ``door`` while others are checked; its error and the server's growth."""
    with sampling_rss(os.getpid()) as samples:
        [answer], probes = while_misbehaving(doors, [lambda: doors.call(door, "hog", new_frame())])
    assert probes
    assert answer.seconds < KILL_BOUND, f"hog answered after {answer.seconds:.1f} s"
    return answer.error_naming(500, "hog", MEMORY_CAP, CAP_SIZE), max(samples) - samples[0]


def test_a_worker_past_its_memory_cap_is_killed_and_the_server_does_not_grow(
    server: FrameServer, doors: Doors
) -> None:
    crashes = metric(server, "frameserve_worker_crashes_total", model="hog", reason="memory")
    _, growth = hog(doors, "http")
    assert growth < SERVER_GROWTH_BOUND, f"the server grew by {growth >> 20} MiB"
    assert (
        metric(server, "frameserve_worker_crashes_total", model="hog", reason="memory")
        == crashes + 1
    )


def test_the_next_request_gets_a_new_worker_then_the_model_is_failed(
    server: FrameServer, doors: Doors
) -> None:
    restarts = metric(server, "frameserve_worker_restarts_total", model="hog", reason="memory")
    _, growth = hog(doors, "mlclient")
    assert growth < SERVER_GROWTH_BOUND, f"the server grew by {growth >> 20} MiB"
    assert (
        metric(server, "frameserve_worker_restarts_total", model="hog", reason="memory")
        >= restarts + 1
    )
    # Two crashes (max_crashes): failed, listed with its error; the others serve on.
    assert ready_status(server, "hog") == 503
    assert index_entry(server, "hog")["state"] == "UNAVAILABLE"
    doors.call("http", "hog", new_frame()).error_naming(503, "hog")
    doors.check_others()


# -- fixed on disk: last, since it changes the plug-in ------------------------------------------


def test_fixing_the_file_brings_the_model_back(doors: Doors, plugins: Path) -> None:
    bring_back(doors, plugins / "hog", "hog")
