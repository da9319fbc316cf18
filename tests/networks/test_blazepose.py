"""BlazePose rebuilt in PyTorch against Google's own interpreter (LiteRT) on real photos.

The reference is the ``.tflite`` file in ``/work/shared/weights/body-pose`` run by
``ai_edge_litert``; ours is the shipped state dict and layer graph run by
:class:`~frameserve.networks.tflite_graph.TFLiteGraph`. Float networks must agree within 1e-3
of each output's range (coordinates run to hundreds of crop pixels, logits to a thousand).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.networks.blazepose import (
    DETECTOR_SIZE,
    LANDMARK_SIZE,
    BodyCrop,
    body_crop,
    pose_anchors,
)
from frameserve.networks.tflite_graph import TFLiteGraph, same_padding
from frameserve.weights import shipped_weights_path

SOURCE = Path("/work/shared/weights/body-pose")
ROOT = Path(__file__).resolve().parents[2]

litert = pytest.importorskip("ai_edge_litert.interpreter")
needs_source = pytest.mark.skipif(not SOURCE.is_dir(), reason="the .tflite files are not here")


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as float32 (1, 3, H, W), 0-1."""
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return torch.from_numpy(image[..., :3].astype(np.float32) / 255).permute(2, 0, 1)[None]


def reference(path: Path, nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Run a ``.tflite`` file with LiteRT; outputs by name, dequantised."""
    interpreter = litert.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], nhwc)
    interpreter.invoke()
    return {
        detail["name"]: interpreter.get_tensor(detail["index"]).astype(np.float32)
        for detail in interpreter.get_output_details()
    }


def ours(name: str, nchw: torch.Tensor) -> dict[str, np.ndarray]:
    net = TFLiteGraph.from_files(
        shipped_weights_path("body-pose", f"{name}.graph.json"),
        shipped_weights_path("body-pose", f"{name}.pth"),
        name,
    )
    with torch.no_grad():
        outputs = net(nchw)
    return {
        key: (value.permute(0, 2, 3, 1) if value.dim() == 4 else value).numpy()
        for key, value in outputs.items()
    }


def assert_matches(mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert mine.keys() == theirs.keys()
    for key, expected in theirs.items():
        assert mine[key].shape == expected.shape, key
        scale = max(1.0, float(np.abs(expected).max()))
        error = float(np.abs(mine[key] - expected).max())
        assert error <= 1e-3 * scale, f"{key}: max error {error} over a range of {scale}"


@needs_source
@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_detector_matches_litert(name: str) -> None:
    image = F.interpolate(photo(name), size=(DETECTOR_SIZE, DETECTOR_SIZE), mode="area") * 2 - 1
    theirs = reference(SOURCE / "pose_detection.tflite", image.permute(0, 2, 3, 1).numpy().copy())
    assert_matches(ours("pose_detection", image), theirs)


@needs_source
@pytest.mark.parametrize("variant", ["lite", "full"])
def test_landmarks_match_litert(variant: str) -> None:
    # The astronaut's upper body and a grey photograph, each as a 256 x 256 crop.
    crops = [
        F.interpolate(photo("astronaut")[:, :, 40:512, 20:492], size=(256, 256), mode="area"),
        F.interpolate(photo("camera"), size=(LANDMARK_SIZE, LANDMARK_SIZE), mode="area"),
    ]
    for crop in crops:
        theirs = reference(
            SOURCE / f"pose_landmark_{variant}.tflite", crop.permute(0, 2, 3, 1).numpy().copy()
        )
        assert_matches(ours(f"pose_landmark_{variant}", crop), theirs)


def test_converter_reproduces_the_shipped_detector_weights() -> None:
    """The detector holds sparse (DENSIFY) float16 weights: the script's own reading of them."""
    if not SOURCE.is_dir():
        pytest.skip("the .tflite files are not here")
    script = _load_script()
    state, graph = script.convert(SOURCE / "pose_detection.tflite")
    shipped = torch.load(shipped_weights_path("body-pose", "pose_detection.pth"), weights_only=True)
    assert state.keys() == shipped.keys()
    for key, value in state.items():
        assert value.dtype == torch.float16, key
        assert torch.equal(value, shipped[key]), key
    assert graph["input_shape"] == [1, DETECTOR_SIZE, DETECTOR_SIZE, 3]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "convert_tflite", ROOT / "scripts/convert_tflite.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_padding_puts_the_extra_pixel_after() -> None:
    assert same_padding(224, 3, 2, 1) == (0, 1)
    assert same_padding(225, 3, 2, 1) == (1, 1)
    assert same_padding(56, 5, 1, 1) == (2, 2)
    assert same_padding(28, 4, 2, 1) == (1, 1)
    assert same_padding(7, 1, 1, 1) == (0, 0)


def test_anchors_are_cell_centres_two_or_six_per_cell() -> None:
    anchors = pose_anchors()
    assert anchors.shape == (2254, 2)
    torch.testing.assert_close(anchors[0], torch.tensor([0.5 / 28, 0.5 / 28]))
    torch.testing.assert_close(anchors[1], anchors[0])
    torch.testing.assert_close(anchors[1568], torch.tensor([0.5 / 14, 0.5 / 14]))
    torch.testing.assert_close(anchors[1960:1966], torch.full((6, 2), 0.5 / 7))
    torch.testing.assert_close(anchors[-1], torch.tensor([6.5 / 7, 6.5 / 7]))


def test_body_crop_turns_the_body_upright_and_maps_both_ways() -> None:
    upright = body_crop((100.0, 200.0), (100.0, 120.0))  # top straight above the hip
    assert upright == BodyCrop(100.0, 200.0, 200.0, 0.0)
    lying = body_crop((100.0, 200.0), (180.0, 200.0))  # top to the right: turned 90 degrees
    assert lying.rotation == pytest.approx(math.pi / 2)
    # The crop's top centre is the frame point to the right of the hip.
    top = lying.to_frame(torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(top, torch.tensor([200.0, 200.0]))
    points = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.7, 0.2]])
    torch.testing.assert_close(lying.to_crop(lying.to_frame(points)), points)
