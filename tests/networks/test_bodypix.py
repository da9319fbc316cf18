"""BodyPix's int8 graph rebuilt in PyTorch against Google's interpreter (LiteRT) on a real photo.

The reference runs the per-channel quantised ``.tflite`` file the state dict was made from
(input 1280 x 720, portrait). Part labels (the most likely of the 24 parts in each cell) must
agree on at least 98% of cells; the person logits on almost every cell within two steps of
their int8 grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from frameserve.networks.bodypix import PART_NAMES, BodyPix

SOURCE = Path("/work/shared/weights/body-parts/bodypix_mobilenet_v1_075_720_1280_16_quant.tflite")

litert = pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture(scope="module")
def astronaut_portrait() -> np.ndarray:
    """The astronaut in a 1280 x 720 portrait frame (stretched), uint8 (1, H, W, 3)."""
    image = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float()
    resized = F.interpolate(image, size=(1280, 720), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()


@pytest.mark.skipif(not SOURCE.is_file(), reason="the .tflite file is not here")
def test_part_labels_agree_with_litert(astronaut_portrait: np.ndarray) -> None:
    interpreter = litert.Interpreter(model_path=str(SOURCE))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], astronaut_portrait)
    interpreter.invoke()
    theirs = {}
    for detail in interpreter.get_output_details():
        scale, zero = detail["quantization"]
        raw = interpreter.get_tensor(detail["index"]).astype(np.float32)
        theirs[detail["name"]] = ((raw - zero) * scale, scale)
    net = BodyPix()
    image = torch.from_numpy(astronaut_portrait[0]).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        mine = net(image)
    parts, _ = theirs["float_part_heatmaps"]
    assert mine.parts.shape == (len(PART_NAMES), 81, 46)
    assert parts.shape == (1, 81, 46, len(PART_NAMES))
    agree = (mine.parts.argmax(dim=0).numpy() == parts[0].argmax(axis=-1)).mean()
    assert agree >= 0.98, f"part labels agree on {agree:.2%} of cells"
    segments, step = theirs["float_segments"]
    error = np.abs(mine.segments[0].numpy() - segments[0, ..., 0])
    assert (error <= 2 * step + 1e-6).mean() >= 0.98
    # The person is found: most cells of the suit are person in both.
    assert (segments[0, ..., 0] > 0).mean() > 0.3


def test_bodypix_takes_any_multiple_of_16_and_refuses_others() -> None:
    net = BodyPix()
    with torch.no_grad():
        out = net(torch.full((3, 96, 160), 0.5))
    assert out.segments.shape == (1, 7, 11)
    assert out.parts.shape == (24, 7, 11)
    assert out.heatmaps.shape == (17, 7, 11) and out.offsets.shape == (34, 7, 11)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(3, 100, 160))
