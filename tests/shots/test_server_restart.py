"""``frameserve run --server`` rides out a restart of the server (``--wait``), frames kept.

A real server is stopped under a running shot and a new one starts on the same port a second
later, as a TD's restart does; the run waits, says so, and finishes every frame.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from frameserve.media.imageio import read_image
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.shots.plates import FRAMES, Plates, frameserve_run, output
from tests.support.paths import TEST_MODELS

#: Seconds the server stays away: longer than the HTTP client's own retries (0.3 s in all), so
#: the run must wait (its pauses between tries: 0.5 s, then 1 s, ...).
AWAY = 1.0


def start(http_port: int = 0) -> FrameServer:
    settings = ServerSettings(port=0, http_port=http_port, model_folders=(TEST_MODELS,))
    return FrameServer(settings).start()


def run_in_thread(argv: list[str | Path]) -> tuple[threading.Thread, list[int]]:
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(frameserve_run(*argv)), daemon=True)
    thread.start()
    return thread, code


def wait_for_file(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_run_waits_for_a_restarted_server_and_finishes(
    plates: Plates, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start()
    port = server.http_address[1]
    argv: list[str | Path] = [
        "slow", "--server", server.http_url, "--input", plates.pattern, "--knob", "seconds=0.4",
        "--output", tmp_path / "out.####.exr", "--jobs", "1", "--stop-after", "1",
    ]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="frameserve.shots.backends"):
        thread, code = run_in_thread(argv)
        wait_for_file(output(tmp_path, FRAMES[0]))
        server.close()  # a frame may be in flight: it is dropped or answered 503
        time.sleep(AWAY)
        server = start(http_port=port)
        thread.join(timeout=120)
    server.close()
    assert code == [0]
    for frame in FRAMES:
        written = read_image(output(tmp_path, frame)).pixels
        np.testing.assert_allclose(written, plates.pixels[frame], rtol=0, atol=1e-6)
    lines = [record.getMessage() for record in caplog.records]
    assert any("is away" in line and "waiting up to 120 s" in line for line in lines), lines
    back = [line for line in lines if "is back after" in line]
    assert back, lines
    assert float(back[0].split("is back after ")[1].split(" s")[0]) >= AWAY - 0.5


def test_a_server_that_does_not_come_back_fails_the_run_after_wait(
    plates: Plates, tmp_path: Path
) -> None:
    server = start()
    argv: list[str | Path] = [
        "slow", "--server", server.http_url, "--input", plates.pattern, "--knob", "seconds=0.4",
        "--output", tmp_path / "out.####.exr", "--jobs", "1", "--stop-after", "1",
        "--wait", "1",
    ]  # fmt: skip
    thread, code = run_in_thread(argv)
    wait_for_file(output(tmp_path, FRAMES[0]))
    server.close()
    stopped = time.monotonic()
    thread.join(timeout=60)
    assert code and code[0] != 0
    assert time.monotonic() - stopped < 20  # --wait 1, not the default 120
    assert output(tmp_path, FRAMES[0]).exists()  # frames already written are kept
    assert not output(tmp_path, FRAMES[-1]).exists()
