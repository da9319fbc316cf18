"""``frameserve run --server``: the same runs through a real server's HTTP door."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from frameserve.catalogue.registry import ModelRegistry
from frameserve.errors import (
    FrameServeError,
    KnobError,
)
from frameserve.media.imageio import read_image
from frameserve.serve.server import FrameServer
from frameserve.shots.backends import LocalBackend, ServerBackend, knob_spec_from_config
from tests.shots.plates import (
    DATA_WINDOW,
    FRAMES,
    Plates,
    frameserve_run,
    output,
    photo_frame,
    write_plates,
)
from tests.support.paths import REPO, TEST_MODELS


def server_url(server: FrameServer) -> str:
    return str(server.http_url)


def test_server_blur_matches_local(
    plates: Plates, tmp_path: Path, http_server: FrameServer
) -> None:
    common = ["--input", plates.pattern, "--frames", "1001-1005", "--knob", "size=1.5"]
    common += ["--knob", "brightest=true", "--colourspace", "srgb"]
    assert frameserve_run("blur", *common, "--output", tmp_path / "local.####.exr") == 0
    code = frameserve_run(
        "blur", *common, "--output", tmp_path / "remote.####.exr",
        "--server", server_url(http_server), "--jobs", "3",
    )  # fmt: skip
    assert code == 0
    for frame in FRAMES:
        local = read_image(output(tmp_path, frame, "local"))
        remote = read_image(output(tmp_path, frame, "remote"))
        np.testing.assert_allclose(remote.pixels, local.pixels, rtol=0, atol=1e-6)
        assert remote.data_window == DATA_WINDOW
        local_objects = json.loads(output(tmp_path, frame, "local", "json").read_text())
        remote_objects = json.loads(output(tmp_path, frame, "remote", "json").read_text())
        assert remote_objects == local_objects


def test_server_two_inputs_and_rgba(
    tmp_path: Path, http_server: FrameServer, extra_models: Path
) -> None:
    left = write_plates(tmp_path / "left", "left", rgba=True)
    right = write_plates(tmp_path / "right", "right", shift=2)
    url = server_url(http_server)
    code = frameserve_run(
        "difference", "--server", url, "--input", f"a={left.pattern}",
        "--input", f"b={right.pattern}", "--output", tmp_path / "diff.####.exr",
        "--frames", "1001-1003", "--channels", "R,G,B",
    )  # fmt: skip
    assert code == 0
    expected = np.abs(left.pixels[1002][:3] - right.pixels[1002])
    result = read_image(output(tmp_path, 1002, "diff")).pixels
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)

    code = frameserve_run(
        "rgba_identity", "--server", url, "--input", left.pattern, "--channels", "rgba",
        "--output", tmp_path / "rgba.####.exr", "--frames", "1001-1002",
    )  # fmt: skip
    assert code == 0
    assert np.array_equal(read_image(output(tmp_path, 1001, "rgba")).pixels, left.pixels[1001])


def test_server_knobs_are_parsed_with_the_served_specs(
    plates: Plates, tmp_path: Path, http_server: FrameServer
) -> None:
    url = server_url(http_server)
    argv = ["knobby", "--server", url, "--input", plates.pattern, "--frames", "1001"]
    argv += ["--output", tmp_path / "k.####.exr"]
    with pytest.raises(KnobError, match="9 is above the maximum 4"):
        frameserve_run(*argv, "--knob", "gain=9")
    with pytest.raises(KnobError, match="choose one of 'fast', 'best'"):
        frameserve_run(*argv, "--knob", "mode=slow")
    code = frameserve_run(
        *argv, "--knob", "gain=0.5", "--knob", "steps=3", "--knob", "mode=best",
        "--knob", "invert=on", "--knob", "note=shot 10", "--knob", "report=1",
    )  # fmt: skip
    assert code == 0
    objects = json.loads(output(tmp_path, 1001, "k", "json").read_text())
    assert objects[0]["records"][0] == {
        "invert": True, "steps": 3, "gain": 0.5, "note": "shot 10", "mode": "best", "report": True,
    }  # fmt: skip
    np.testing.assert_allclose(
        read_image(output(tmp_path, 1001, "k")).pixels, -0.5 * plates.pixels[1001], atol=1e-6
    )


def test_server_unknown_model(plates: Plates, tmp_path: Path, http_server: FrameServer) -> None:
    with pytest.raises(FrameServeError, match="nothing_here"):
        frameserve_run(
            "nothing_here", "--server", server_url(http_server), "--input", plates.pattern,
            "--output", tmp_path / "o.####.exr",
        )  # fmt: skip


def test_knob_specs_from_server_config_round_trip() -> None:
    spec = ModelRegistry([TEST_MODELS]).get("knobby").spec
    assert spec is not None
    for knob in spec.knobs:
        rebuilt = knob_spec_from_config(knob.describe())
        assert type(rebuilt) is type(knob)
        assert rebuilt.describe() == knob.describe()
    unknown = knob_spec_from_config({"name": "colour", "type": "rgb", "default": [1, 0, 0]})
    assert unknown.parse_text("1 0 0") == "1 0 0"  # sent as text, checked by the server


def test_server_backend_is_the_only_user_of_the_http_client() -> None:
    """The local path never imports frameserve.client."""
    code = (
        "import sys, frameserve.cli.run\n"
        "assert 'frameserve.client' not in sys.modules, 'local path imported the client'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_both_backends_take_and_give_interleaved_frames(http_server: FrameServer) -> None:
    """A backend's frames are (H, W, C), as read from a file; both backends agree."""
    frame = np.ascontiguousarray(photo_frame(0).transpose(1, 2, 0))  # (24, 32, 3)
    local = LocalBackend(ModelRegistry([TEST_MODELS]))
    remote = ServerBackend(server_url(http_server))
    try:
        for backend in (local, remote):
            outputs, objects = backend.infer("identity", {"image": frame}, {}, colourspace=None)
            assert outputs["image"].shape == (24, 32, 3) and objects == []
            assert outputs["image"].dtype == np.float32
            np.testing.assert_array_equal(outputs["image"], frame)
            knobs = {"gain": 2.0, "absolute": False}
            both = {"a": frame, "b": frame[:, :, ::-1]}  # a strided view goes as well
            outputs, _ = backend.infer("difference", both, knobs, colourspace=None)
            np.testing.assert_allclose(outputs["image"], (frame - frame[:, :, ::-1]) * 2)
    finally:
        remote.close()
