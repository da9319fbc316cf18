"""Tests for the ``frameserve`` command, run as a real subprocess: models, infer and serve.

Every command starts a Python process that imports torch (about 1.5 s), so the commands of a
test are started together where they do not depend on each other. The tests of ``infer``'s
pixels and printed objects run the command line's ``main`` in this process instead
(:func:`~tests.support.commands.frameserve_here`); its error messages, exit statuses and
output streams are checked on real processes.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
import torch

from frameserve.builtin_models.blur.model import REC709_LUMA, gaussian_blur
from frameserve.engine.colour import default_manager
from frameserve.media.imageio import read_image, write_image
from tests.support.commands import cli_env, command, frameserve_here
from tests.support.commands import frameserve as run_commands
from tests.support.node_client import NodeClient, decode_image
from tests.support.paths import TEST_MODELS

Frame = npt.NDArray[np.float32]


COMMAND_TIMEOUT = 120.0


def frameserve(*commands: list[str | Path], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run ``frameserve`` once per argument list, all at once; return each finished process."""
    return run_commands(*commands, cwd=cwd, timeout=COMMAND_TIMEOUT)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``result``, after checking that the command succeeded."""
    assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photograph (scikit-image's astronaut, 512x512 RGB) saved as a PNG."""
    rgb = skimage.data.astronaut()
    pixels = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    write_image(path, pixels)
    return path


def high_frequency_energy(image: Frame) -> float:
    """Mean squared difference between horizontally and vertically adjacent pixels."""
    dx = np.diff(image, axis=2)
    dy = np.diff(image, axis=1)
    return float((dx**2).mean() + (dy**2).mean())


# -- frameserve models -------------------------------------------------------------------------


def test_models_lists_builtins_test_models_and_failures(tmp_path: Path) -> None:
    as_json, as_text = frameserve(
        ["models", "--json", "--models", TEST_MODELS],
        ["models", "--models", TEST_MODELS],
        cwd=tmp_path,
    )
    entries = {entry["id"]: entry for entry in json.loads(ok(as_json).stdout)}
    assert {"identity", "blur", "difference", "knobby", "slow", "broken_import"} <= set(entries)
    assert [entries[i]["builtin"] for i in ("identity", "blur", "difference")] == [True] * 3
    assert entries["difference"]["inputs"] == [
        {"name": "a", "channels": 3},
        {"name": "b", "channels": 3},
    ]

    knobby = entries["knobby"]
    assert knobby["builtin"] is False and knobby["error"] is None
    assert knobby["source"] == str(TEST_MODELS / "knobby" / "model.py")
    assert knobby["label"] == "Knobby (test)"
    assert knobby["inputs"] == knobby["outputs"] == [{"name": "image", "channels": 3}]
    knobs = {knob["name"]: knob for knob in knobby["knobs"]}
    assert {name: knob["type"] for name, knob in knobs.items()} == {
        "invert": "bool",
        "steps": "int",
        "gain": "float",
        "note": "string",
        "mode": "choice",
        "report": "button",
    }
    assert knobs["steps"] == {
        "name": "steps",
        "type": "int",
        "default": 2,
        "label": "steps",
        "help": "A whole number.",
        "min": 1,
        "max": 10,
    }
    assert knobs["mode"]["choices"] == ["fast", "best"]

    broken = entries["broken_import"]
    assert broken["error"] == "RuntimeError: this plug-in is broken on purpose (model.py, line 3)"
    assert "inputs" not in broken and broken["builtin"] is False

    text = ok(as_text).stdout
    for model_id in ("identity", "blur", "difference", "knobby", "slow"):
        assert re.search(rf"^{model_id}  '", text, re.MULTILINE), text
    assert "broken_import  FAILED TO LOAD" in text
    assert "error: RuntimeError: this plug-in is broken on purpose" in text
    assert "knob size: float = 5.0 [0.0..100.0]  Standard deviation in pixels." in text
    assert "inputs:  a (3 ch), b (3 ch)" in text


# -- frameserve infer --------------------------------------------------------------------------


def test_infer_blur_on_a_photo_with_the_brightest_button(
    photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (result,) = frameserve_here(
        ["infer", "blur", photo, "blurred.png", "--knob", "size=2", "--knob", "brightest=true"]
    )
    ok(result)
    source = read_image(photo).pixels
    # a PNG holds sRGB values; blur works on scene-linear ones: the command converts both ways
    colour = default_manager()
    linear = colour.convert(torch.from_numpy(source), "srgb", "scene_linear")
    blurred = gaussian_blur(linear.contiguous(), 2.0, "extend")
    expected = colour.convert(blurred, "scene_linear", "srgb").numpy()
    output = read_image(tmp_path / "blurred.png").pixels
    assert output.shape == source.shape == (3, 512, 512)
    np.testing.assert_allclose(output, expected, rtol=0, atol=1 / 255 + 1e-6)
    assert high_frequency_energy(output) < 0.5 * high_frequency_energy(source)

    objects = json.loads(result.stdout)
    assert [obj["name"] for obj in objects] == ["PythonScript"]
    script = objects[0]["records"][0]["script"]
    pattern = r"nuke\.message\('Brightest pixel: x=(\d+), y=(\d+), value \(.*\)'\)"
    match = re.fullmatch(pattern, script)
    assert match, script
    x, y = int(match[1]), int(match[2])
    luma = np.einsum("chw,c->hw", expected, np.array(REC709_LUMA, np.float32))
    row = 511 - y  # the report counts y from the bottom, as Nuke does
    assert luma[row, x] == pytest.approx(luma.max(), abs=1e-5)


def test_infer_identity_and_difference_keep_float_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    a = (rng.normal(size=(3, 21, 34)) * 8).astype(np.float32)  # above 1 and negative
    a[0, 0, :4] = [1e-30, -65504.0, 3.0e5, 0.0]
    b = (rng.normal(size=(3, 21, 34)) * 8).astype(np.float32)
    write_image(tmp_path / "a.exr", a)
    write_image(tmp_path / "b.exr", b)
    monkeypatch.chdir(tmp_path)
    identity, difference = frameserve_here(
        ["infer", "identity", "a.exr", "same.exr"],
        ["infer", "difference", "a.exr", "diff.exr", "--input", "b=b.exr"],
    )
    assert ok(identity).stdout == ""  # a model without result objects prints nothing
    same = read_image(tmp_path / "same.exr").pixels
    np.testing.assert_array_equal(same, a)
    assert same.max() > 1 and same.min() < 0

    ok(difference)
    np.testing.assert_array_equal(read_image(tmp_path / "diff.exr").pixels, np.abs(a - b))


def test_infer_errors_are_short_messages(tmp_path: Path) -> None:
    write_image(tmp_path / "in.png", np.full((3, 8, 8), 0.5, np.float32))
    cases: list[tuple[list[str | Path], int, str]] = [
        (
            ["infer", "sharpen", "in.png", "out.png"],
            1,
            "frameserve infer: unknown model 'sharpen'; available models: blur, ",
        ),
        (
            ["infer", "blur", "in.png", "out.png", "--knob", "radius=2"],
            1,
            "frameserve infer: unknown knob 'radius'; model 'blur' has: size, edges, brightest",
        ),
        (
            ["infer", "blur", "in.png", "out.png", "--knob", "size=300"],
            1,
            "frameserve infer: knob 'size': 300 is above the maximum 100",
        ),
        (
            ["infer", "blur", "missing.png", "out.png"],
            1,
            "frameserve infer: cannot read image 'missing.png'",
        ),
    ]
    results = frameserve(*(args for args, _, _ in cases), cwd=tmp_path)
    for (args, status, message), result in zip(cases, results, strict=True):
        assert result.returncode == status, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""
    assert not (tmp_path / "out.png").exists()


# -- frameserve serve --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_serving(client: NodeClient, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll with info requests until the server answers (30 s at most)."""
    deadline = time.monotonic() + 30.0
    while True:
        if process.poll() is not None:
            pytest.fail(f"frameserve serve exited {process.returncode}:\n{log.read_text()}")
        try:
            client.info()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"frameserve serve did not answer within 30 s:\n{log.read_text()}")
            time.sleep(0.1)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is a POSIX signal")
def test_serve_answers_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command(
                "serve",
                "--port",
                str(port),
                "--models",
                TEST_MODELS,
                "--mlclient-models",
                "identity",
                "*",
            ),
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        client = NodeClient("127.0.0.1", port, timeout=10.0)
        wait_until_serving(client, process, log)
        frame = np.linspace(-1.0, 4.0, 3 * 24 * 40, dtype=np.float32).reshape(3, 24, 40)
        reply = client.infer(client.model("identity"), [frame])
        assert not reply.HasField("error"), reply.error.msg
        np.testing.assert_array_equal(decode_image(reply.r2.images[0]), frame)

        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        status = process.wait(timeout=10)
        assert status == 0, log.read_text()
        assert time.monotonic() - started < 5.0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    line = re.search(
        r"^.* INFO frameserve\.serve\.mlclient\.server: 127\.0\.0\.1:\d+ infer "
        r"model=identity size=40x24 \d+\.\d ms worker=\d+ ok$",
        text,
        re.MULTILINE,
    )
    assert line, text
    menu = re.search(
        r"MLClient protocol door \(port \d+\) lists \d+ model\(s\) in (\d+) bytes", text
    )
    assert menu and int(menu.group(1)) <= 1448, text
    assert "signal 15: shutting down" in text
