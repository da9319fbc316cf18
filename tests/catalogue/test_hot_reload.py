"""Hot reload: model folders added, changed and removed while a real server runs on loopback.

The server looks at its model folders every 0.2 s (``reload_interval``); every wait here is
bounded by :data:`HANG_GUARD`. Models are written as real files, the way an editor saves them
(a temporary file renamed over the old one).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from frameserve.catalogue.registry import ModelRegistry
from frameserve.catalogue.watcher import ModelWatcher
from frameserve.cli.main import _parser
from frameserve.errors import ConfigError
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.support.model_folders import (
    HANG_GUARD,
    frame,
    http_call,
    http_infer,
    index_of,
    menu,
    node_infer,
    scale_source,
    wait_for,
    write_file,
    write_model,
)
from tests.support.servers import start_server

INTERVAL = 0.2


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """The server's models folder: ``scale`` (x2) to begin with."""
    root = tmp_path / "models"
    write_model(root / "scale", scale_source("scale", 2.0, label="Scale"))
    return root


@pytest.fixture
def server(models: Path) -> Iterator[FrameServer]:
    """A server with the built-ins and ``models``, reloading every 0.2 s, 4 workers."""
    running = start_server(model_folders=(models,), reload_interval=INTERVAL, workers=4)
    yield running
    running.close()


def result_of(server: FrameServer, model: str, image: np.ndarray) -> np.ndarray | None:
    """The model's HTTP result, or ``None`` if the request did not succeed."""
    status, answer = http_infer(server, model, image)
    return answer[1] if status == 200 else None


def scaled_by(server: FrameServer, model: str, image: np.ndarray, factor: float) -> bool:
    result = result_of(server, model, image)
    return result is not None and np.allclose(result, image * factor, rtol=1e-6)


def release(gate: Path) -> None:
    (gate / "release").touch()


def started(gate: Path) -> int:
    return len(list(gate.glob("started-*")))


# -- adding, changing, removing ----------------------------------------------------------------


def test_an_added_model_appears_in_both_doors(
    server: FrameServer, models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = frame(1)
    with caplog.at_level(logging.INFO, logger="frameserve.catalogue.registry"):
        write_model(models / "added", scale_source("added", 4.0, label="Added"))
        wait_for(lambda: ("added", "1") in index_of(server), what="the new model in the index")
    assert index_of(server)[("added", "1")]["state"] == "READY"
    assert menu(server)["added"] == "Added"
    assert scaled_by(server, "added", image, 4.0)
    np.testing.assert_allclose(node_infer(server, "added", image), image * 4.0, rtol=1e-6)
    lines = [r.getMessage() for r in caplog.records if r.name == "frameserve.catalogue.registry"]
    assert lines == [f"added model added v1 from {models / 'added'}"]


def test_a_changed_model_gives_new_results_never_a_cached_old_one(
    server: FrameServer, models: Path
) -> None:
    image = frame(2)
    assert scaled_by(server, "scale", image, 2.0)
    np.testing.assert_allclose(node_infer(server, "scale", image), image * 2.0, rtol=1e-6)
    assert scaled_by(server, "scale", image, 2.0)  # now in the cache
    old = server.registry.get("scale")
    write_model(models / "scale", scale_source("scale", 3.0, label="Scale"))
    wait_for(lambda: server.registry.get("scale").token != old.token, what="the reload")
    assert scaled_by(server, "scale", image, 3.0)  # the same frame: not the cached x2
    np.testing.assert_allclose(node_infer(server, "scale", image), image * 3.0, rtol=1e-6)
    assert server.runner.loaded_models().count("scale") == 1  # the old instance is gone


def test_a_removed_model_disappears(server: FrameServer, models: Path) -> None:
    assert scaled_by(server, "scale", frame(3), 2.0)
    shutil.rmtree(models / "scale")
    wait_for(lambda: "scale" not in server.registry, what="the removal")
    status, answer = http_infer(server, "scale", frame(3))
    assert status == 404 and "unknown model 'scale'" in answer["error"]
    assert ("scale", "1") not in index_of(server)
    assert "scale" not in menu(server)
    wait_for(lambda: "scale" not in server.runner.loaded_models(), what="the unload")


def test_a_broken_edit_is_listed_with_its_error_while_the_others_serve(
    server: FrameServer, models: Path
) -> None:
    image = frame(4)
    write_model(models / "scale", "import torch\nraise ValueError('half-way through an edit')\n")
    wait_for(lambda: "scale" not in server.registry, what="the failed reload")
    item = index_of(server)[("scale", "1")]
    assert item["state"] == "UNAVAILABLE"
    assert item["reason"] == "ValueError: half-way through an edit (model.py, line 2)"
    status, answer = http_infer(server, "scale", image)
    assert status == 503 and "half-way through an edit" in answer["error"]
    assert scaled_by(server, "identity", image, 1.0)
    assert "scale" not in menu(server) and "identity" in menu(server)

    write_model(models / "scale", scale_source("scale", 5.0, label="Scale"))
    wait_for(lambda: "scale" in server.registry, what="the fixed model")
    assert index_of(server)[("scale", "1")]["state"] == "READY"
    assert scaled_by(server, "scale", image, 5.0)


def test_a_new_version_folder_becomes_the_default(server: FrameServer, models: Path) -> None:
    write_model(models / "versioned" / "1", scale_source("versioned", 1.0, label="Versioned"))
    wait_for(lambda: "versioned" in server.registry, what="version 1")
    assert menu(server)["versioned"] == "Versioned"
    write_model(models / "versioned" / "2", scale_source("versioned", 2.0, label="Versioned"))
    wait_for(lambda: len(server.registry.versions("versioned")) == 2, what="version 2")
    assert menu(server)["versioned"] == "Versioned (v2)"
    image = frame(5)
    assert scaled_by(server, "versioned", image, 2.0)
    status, (version, output) = http_infer(server, "versioned", image, version="1")
    assert status == 200 and version == "1"
    np.testing.assert_allclose(output, image, rtol=1e-6)


# -- requests in flight ------------------------------------------------------------------------


def test_requests_in_flight_finish_on_the_model_they_started_with(
    server: FrameServer, models: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    write_model(models / "held", scale_source("held", 2.0, gate=gate))
    write_model(models / "doomed", scale_source("doomed", 7.0, gate=gate))
    wait_for(lambda: "held" in server.registry and "doomed" in server.registry, what="models")
    image = frame(6)
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(result_of, server, "held", image) for _ in range(2)]
        doomed = pool.submit(result_of, server, "doomed", image)
        wait_for(lambda: started(gate) == 3, what="three requests running")
        write_model(models / "held", scale_source("held", 3.0))  # replaced: no gate
        shutil.rmtree(models / "doomed")  # removed
        wait_for(lambda: "doomed" not in server.registry, what="the removal")
        wait_for(lambda: scaled_by(server, "held", image, 3.0), what="the new held model")
        assert http_infer(server, "doomed", image)[0] == 404
        assert not any(future.done() for future in [*held, doomed])
        release(gate)
        for future in held:
            np.testing.assert_allclose(future.result(HANG_GUARD), image * 2.0, rtol=1e-6)
        np.testing.assert_allclose(doomed.result(HANG_GUARD), image * 7.0, rtol=1e-6)
    wait_for(lambda: server.runner.loaded_models().count("held") == 1, what="the old unloaded")
    assert "doomed" not in server.runner.loaded_models()


def test_no_request_fails_while_models_are_added_replaced_and_removed(
    server: FrameServer, models: Path
) -> None:
    write_model(models / "doomed", scale_source("doomed", 7.0))
    wait_for(lambda: "doomed" in server.registry, what="the model to remove")
    image = frame(7)
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, list[float]] = {}

    def loop(name: str, model: str, mlclient: bool) -> None:
        factors = seen.setdefault(name, [])
        while not stop.is_set():
            try:
                if mlclient:
                    output = node_infer(server, model, image)
                else:
                    status, answer = http_infer(server, model, image)
                    if status != 200:
                        failures.append(f"{name}: HTTP {status}: {answer}")
                        continue
                    output = answer[1]
            except Exception as exc:  # every failure is a finding, whatever its kind
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            factors.append(round(float(np.median(output / image)), 3))

    loops = [
        ("identity over HTTP", "identity", False),
        ("identity over MLClient", "identity", True),
        ("scale over HTTP", "scale", False),
        ("scale over MLClient", "scale", True),
    ]
    threads = [threading.Thread(target=loop, args=spec) for spec in loops]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(len(seen.get(n, [])) >= 3 for n, *_ in loops), what="requests")
        write_model(models / "added", scale_source("added", 4.0))
        write_model(models / "scale", scale_source("scale", 3.0))
        shutil.rmtree(models / "doomed")
        wait_for(lambda: "added" in server.registry, what="the added model")
        wait_for(lambda: "doomed" not in server.registry, what="the removal")
        for name in ("scale over HTTP", "scale over MLClient"):
            wait_for(lambda n=name: 3.0 in seen[n], what=f"{name} to see the new model")  # type: ignore[misc]
        counts = {name: len(factors) for name, factors in seen.items()}
        wait_for(lambda: all(len(seen[n]) >= counts[n] + 3 for n in counts), what="more rounds")
    finally:
        stop.set()
        for thread in threads:
            thread.join(HANG_GUARD)
    assert failures == []
    for name, *_ in loops[:2]:
        assert set(seen[name]) == {1.0}, name
    for name, *_ in loops[2:]:
        switch = seen[name].index(3.0)  # each client sees x2 until the swap, then x3 only
        assert set(seen[name][:switch]) == {2.0} and set(seen[name][switch:]) == {3.0}, seen[name]


# -- the watcher itself ------------------------------------------------------------------------


def test_a_folder_is_reloaded_once_it_has_settled(tmp_path: Path) -> None:
    registry = ModelRegistry([tmp_path], builtins=False)
    watcher = ModelWatcher(registry, interval=60.0)  # polled by hand, never started
    assert watcher.poll() == []
    write_model(tmp_path / "scale", scale_source("scale", 2.0))
    assert watcher.poll() == []  # seen once: it may still be being written
    assert watcher.poll() == [f"added model scale v1 from {tmp_path / 'scale'}"]
    assert watcher.poll() == []
    write_file(tmp_path / "scale" / "weights.bin", "1")
    assert watcher.poll() == []
    write_file(tmp_path / "scale" / "weights.bin", "12")  # still changing
    assert watcher.poll() == []
    assert watcher.poll() == [
        f"reloaded model scale v1 from {tmp_path / 'scale'} (its files changed)"
    ]
    shutil.rmtree(tmp_path / "scale")
    assert watcher.poll() == [] and "scale" in registry
    assert watcher.poll() == [f"removed model scale v1 ({tmp_path / 'scale'} is gone)"]
    assert "scale" not in registry


def test_every_failed_reload_has_its_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_model(tmp_path / "scale", scale_source("scale", 2.0))
    registry = ModelRegistry([tmp_path], builtins=False)
    broken = f"model scale from {folder / 'model.py'} failed to load: SyntaxError: "
    with caplog.at_level(logging.INFO, logger="frameserve.catalogue.registry"):
        for text in ("def predict(:\n", "def predict(:\n\n"):  # the same error twice
            write_model(folder, text)
            (line,) = registry.reload_changed()
            assert line.startswith(broken) and line.endswith("(model.py, line 1)")
        write_model(folder, scale_source("scale", 3.0))
        assert registry.reload_changed() == [
            f"reloaded model scale v1 from {folder} (its files changed)"
        ]
    levels = [r.levelname for r in caplog.records if r.name == "frameserve.catalogue.registry"]
    assert levels == ["WARNING", "WARNING", "INFO"]


def test_a_missing_models_folder_may_appear_later(tmp_path: Path) -> None:
    root = tmp_path / "later"
    registry = ModelRegistry([root], builtins=False)
    failed = registry.failure("later")
    assert failed is not None and "does not exist" in (failed.error or "")
    write_model(root / "scale", scale_source("scale", 2.0))
    watcher = ModelWatcher(registry, interval=60.0)
    watcher.poll()
    watcher.poll()
    assert registry.versions("scale") == ["1"] and registry.failure("later") is None


def test_the_watcher_survives_a_failing_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry([tmp_path], builtins=False)
    looks: list[int] = []

    def failing_scan() -> list[object]:
        looks.append(1)
        raise OSError("the file server went away")

    monkeypatch.setattr(registry, "scan", failing_scan)
    watcher = ModelWatcher(registry, interval=0.01).start()
    try:
        wait_for(lambda: len(looks) >= 3, what="three looks")
    finally:
        watcher.close()
    assert "looking for changed model folders failed" in caplog.text


def test_reload_interval_settings_and_flag() -> None:
    assert ServerSettings().reload_interval == 1.0
    assert ServerSettings(reload_interval=None).reload_interval is None
    for wrong in (0, -1.0):
        with pytest.raises(ConfigError, match="reload_interval must be above 0"):
            ServerSettings(reload_interval=wrong)
    with pytest.raises(ConfigError, match="reload interval must be above 0"):
        ModelWatcher(ModelRegistry(builtins=False), interval=0)
    assert _parser().parse_args(["serve"]).reload_interval == 1.0
    assert _parser().parse_args(["serve", "--reload-interval", "0.5"]).reload_interval == 0.5


def test_a_server_without_hot_reload_has_no_watcher(models: Path) -> None:
    running = start_server(model_folders=(models,), reload_interval=None)
    try:
        assert running.watcher is None
        status, answer = http_call(running, "GET", "/v2/models/scale")
        assert status == 200 and answer["versions"] == ["1"]
    finally:
        running.close()
