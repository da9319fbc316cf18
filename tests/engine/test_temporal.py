"""Temporal models: neighbouring frames as inputs, from a sequence, over HTTP and MLClient."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from frameserve.cli.main import main
from frameserve.errors import ConfigError
from frameserve.media.imageio import read_image, write_image
from frameserve.plugin.model import ImageSpec, Model
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.support.node_client import NodeClient

#: A model that needs the next frame: it returns next minus current (a crude motion cue).
NEXT_MINUS_THIS = """
from frameserve import ImageSpec, Model


class NextMinusThis(Model):
    id = "next_minus_this"
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 3),)
    temporal_window = (0, 1)

    def predict(self, frames, knobs):
        return frames["image@+1"] - frames["image"]


class ThisMinusPrevious(Model):
    id = "this_minus_previous"
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 3),)
    temporal_window = (1, 0)

    def predict(self, frames, knobs):
        return frames["image"] - frames["image@-1"]
"""
FRAMES = range(1, 6)


@pytest.fixture
def temporal_models(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "temporal"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(NEXT_MINUS_THIS)
    return tmp_path / "models"


@pytest.fixture
def shot(tmp_path: Path) -> dict[int, np.ndarray]:
    """Five frames of a real photo panning right by 3 pixels a frame, as an EXR sequence."""
    photo = skimage.data.astronaut()[100:140, 100:300].astype(np.float32) / 255.0
    frames = {}
    for frame in FRAMES:
        pixels = np.ascontiguousarray(photo[:, 3 * frame : 3 * frame + 64].transpose(2, 0, 1))
        write_image(tmp_path / f"plate.{frame:04d}.exr", pixels)
        frames[frame] = pixels
    return frames


def test_a_temporal_model_declares_one_input_per_neighbour() -> None:
    class Window(Model):
        id = "window"
        inputs = (ImageSpec("image", 3), ImageSpec("matte", 1))
        temporal_window = (2, 1)

        def predict(self, frames, knobs):  # type: ignore[no-untyped-def]
            return frames["image"]

    spec = Window.spec()
    names = [i.name for i in spec.inputs]
    assert names == [
        "image", "image@-2", "image@-1", "image@+1",
        "matte", "matte@-2", "matte@-1", "matte@+1",
    ]  # fmt: skip
    assert [i.channels for i in spec.inputs] == [3, 3, 3, 3, 1, 1, 1, 1]
    assert spec.input_source("matte@-2") == ("matte", -2)
    assert spec.input_source("image") == ("image", 0)


def test_a_bad_temporal_window_is_a_config_error() -> None:
    class Bad(Model):
        id = "bad"
        temporal_window = (-1, 2)

        def predict(self, frames, knobs):  # type: ignore[no-untyped-def]
            return frames["image"]

    with pytest.raises(ConfigError, match="temporal_window"):
        Bad.spec()


def test_run_reads_the_next_frame_and_repeats_the_last_at_the_end(
    temporal_models: Path, shot: dict[int, np.ndarray], tmp_path: Path
) -> None:
    status = main(
        [
            "run", "next_minus_this", "--models", str(temporal_models), "--no-builtins",
            "--input", str(tmp_path / "plate.####.exr"),
            "--output", str(tmp_path / "out.####.exr"),
            "--frames", "1-5",
        ]
    )  # fmt: skip
    assert status == 0
    for frame in FRAMES:
        result = read_image(tmp_path / f"out.{frame:04d}.exr").pixels
        following = shot.get(frame + 1, shot[frame])  # the last frame is its own neighbour
        np.testing.assert_allclose(result, following - shot[frame], atol=1e-6)
    assert np.abs(read_image(tmp_path / "out.0003.exr").pixels).max() > 0.05  # real motion


def test_run_repeats_the_first_frame_for_a_previous_neighbour(
    temporal_models: Path, shot: dict[int, np.ndarray], tmp_path: Path
) -> None:
    status = main(
        [
            "run", "this_minus_previous", "--models", str(temporal_models), "--no-builtins",
            "--input", str(tmp_path / "plate.####.exr"),
            "--output", str(tmp_path / "back.####.exr"), "--frames", "2-4",
        ]
    )  # fmt: skip
    assert status == 0
    # Frame 1 exists on disk although it is outside --frames: it is used as frame 2's neighbour.
    np.testing.assert_allclose(
        read_image(tmp_path / "back.0002.exr").pixels, shot[2] - shot[1], atol=1e-6
    )


@pytest.fixture
def temporal_server(temporal_models: Path) -> Iterator[FrameServer]:
    server = FrameServer(
        ServerSettings(port=0, http_port=0, model_folders=(temporal_models,), builtin_models=False)
    ).start()
    yield server
    server.close()


def test_http_clients_send_the_neighbour_frames_by_name(
    temporal_server: FrameServer, shot: dict[int, np.ndarray]
) -> None:
    conn = http.client.HTTPConnection(*temporal_server.http_address, timeout=30)
    conn.request("GET", "/v2/models/next_minus_this")
    metadata = json.loads(conn.getresponse().read())
    assert [i["name"] for i in metadata["inputs"]] == ["image", "image@+1"]
    inputs = []
    for name, frame in (("image", shot[2]), ("image@+1", shot[3])):
        hwc = frame.transpose(1, 2, 0)
        inputs.append(
            {
                "name": name,
                "datatype": "FP32",
                "shape": list(hwc.shape),
                "data": hwc.ravel().tolist(),
            }
        )
    conn.request("POST", "/v2/models/next_minus_this/infer", body=json.dumps({"inputs": inputs}))
    reply = json.loads(conn.getresponse().read())
    conn.close()
    result = np.asarray(reply["outputs"][0]["data"], dtype=np.float32).reshape(40, 64, 3)
    np.testing.assert_allclose(result, (shot[3] - shot[2]).transpose(1, 2, 0), atol=1e-6)


def test_the_mlclient_node_shows_an_input_per_neighbour(temporal_server: FrameServer) -> None:
    node = NodeClient(*temporal_server.mlclient_address)
    model = node.model("next_minus_this")
    assert [i.name for i in model.inputs] == ["image", "image@+1"]
