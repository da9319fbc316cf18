"""Body parts: BodyPix 2's 24 part labels, person matte and 17 keypoints, at any frame size.

How a frame becomes parts::

    plate (sRGB-encoded, any size) --clamp 0-1--> resized so its longer side is `resolution`
        (each side a multiple of 16) --BodyPix--> person logit, 24 part logits, 17 keypoint
        heatmaps and offsets on a grid of one cell per 16 network pixels
    person matte: the person logit sampled bilinearly at every frame pixel, then a sigmoid
    part labels: the most likely part at the network's resolution, where the matte is above
        `threshold`, enlarged to the frame (nearest)

**Output** (RGBA):

- ``output = "part_ids"``: R, G and B hold the part number + 1 (1 = ``left_face`` ...
  24 = ``right_foot``; 0 where there is no person): an ID matte to key with an expression;
  alpha is the person matte.
- ``output = "colours"``: each part in its own colour (:data:`PART_COLOURS`), black where there
  is no person; alpha is the person matte.
- ``output = "part"``: the plate untouched, the matte of the one part the ``part`` knob names
  in alpha (soft: person probability times that part's probability).
- ``output = "person"``: the plate untouched, the person matte in alpha.

**Objects**: one ``body`` object with one record when a person is found (the matte reaches
``threshold`` somewhere)::

    {"box": [x0, y0, x1, y1], "box_nuke": [...], "coverage": 0.21,
     "nose": [x, y], "nose_nuke": [x, y], "nose_score": 0.98, ... (17 keypoints)}

``box`` bounds the thresholded matte; ``coverage`` is the fraction of the frame it covers.
Keypoints are the strongest of each kind in the frame (BodyPix's single-person decoding).

**Colour**: sRGB-encoded values in (``colourspace_in = "srgb"``); values outside 0-1 are
clipped for the network only; NaN counts as black; RGB passes through untouched where it is
the plate.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from frameserve.networks.bodypix import (
    KEYPOINT_NAMES,
    OUTPUT_STRIDE,
    PART_NAMES,
    BodyPix,
    BodyPixOutput,
)
from frameserve.plugin.knobs import ChoiceKnob, FloatKnob, IntKnob, KnobValues
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, Prediction, SpatialNeeds
from frameserve.plugin.results import FieldValue, ResultObject

__all__ = ["PART_COLOURS", "BodyParts", "network_size", "sample_grid"]

#: One sRGB colour per part, around the hue circle (left and right sides a step apart).
PART_COLOURS = tuple(colorsys.hsv_to_rgb(index / len(PART_NAMES), 0.85, 1.0) for index in range(24))


class BodyParts(Model):
    """Labels the body parts of a person (BodyPix 2): part IDs, colours, one part's matte.

    Good on one or a few people seen from the front or back, standing or sitting, filling a
    good part of the frame. Weak on small figures, unusual clothing (space suits, costumes),
    people seen from the side (front and back parts are confused) and hands. Keypoints are the
    strongest of each kind in the frame: with several people they may mix.
    """

    id = "body_parts"
    label = "Body Parts (BodyPix)"
    description = (
        "Body-part labels: Google's BodyPix 2 (MobileNetV1, Apache-2.0), rebuilt in PyTorch. "
        "24 parts (face, arms front and back, hands, torso, legs, feet) as an ID matte, "
        "colours, or one part's matte; the person matte; 17 keypoints as objects."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=4),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"
    spatial = SpatialNeeds(fully_convolutional=False)
    weights = (
        WeightsLicence(
            name="BodyPix 2 (MobileNetV1 0.75, stride 16, int8)",
            licence="Apache-2.0",
            source=(
                "github.com/google-coral/project-bodypix (commit a46c428, models/"
                "bodypix_mobilenet_v1_075_720_1280_16_quant.tflite), dequantised to a PyTorch "
                "state dict"
            ),
            commercial=True,
        ),
    )
    knobs = (
        ChoiceKnob(
            "output",
            default="colours",
            choices=("colours", "part_ids", "part", "person"),
            help=(
                "colours: each part in its own colour. part_ids: the part number + 1 in RGB "
                "(0 outside the person). part: the plate with the chosen part's matte in "
                "alpha. person: the plate with the person matte in alpha."
            ),
        ),
        ChoiceKnob(
            "part",
            default="torso_front",
            choices=PART_NAMES,
            help="The part whose matte 'part' output gives.",
        ),
        FloatKnob(
            "threshold",
            default=0.5,
            min=0.05,
            max=0.95,
            help="Person probability (0-1) above which a pixel is labelled with a part.",
        ),
        IntKnob(
            "resolution",
            default=512,
            min=256,
            max=1280,
            help=(
                "The network's longer side in pixels (the frame is resized to it). Higher "
                "finds smaller people and finer edges, and costs time (4x per doubling)."
            ),
        ),
    )

    def setup(self, device: torch.device) -> None:
        self.net = BodyPix(device)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        plate = frames["image"]
        _, height, width = plate.shape
        net_h, net_w = network_size(height, width, int(knobs["resolution"]))
        clean = torch.nan_to_num(plate, nan=0.0).clamp(0.0, 1.0)
        mode = "area" if net_h * net_w < height * width else "bilinear"
        small = F.interpolate(clean[None], size=(net_h, net_w), mode=mode)[0]
        found = self.net(small)
        threshold = float(knobs["threshold"])
        person = torch.sigmoid(sample_grid(found.segments, (net_h, net_w), (height, width)))[0]
        image = plate.new_empty((4, height, width))
        output = knobs["output"]
        if output in ("colours", "part_ids"):
            # Labels at the network's resolution, then enlarged: 24 channels at 4K would be
            # 800 MB; the edges come from the full-resolution person matte.
            work = sample_grid(found.parts, (net_h, net_w), (net_h, net_w)).argmax(dim=0)
            labels = F.interpolate(work[None, None].float(), size=(height, width), mode="nearest")
            labels = labels[0, 0].long()
            inside = person > threshold
            if output == "part_ids":
                image[:3] = torch.where(inside, labels + 1, 0).to(image.dtype)
            else:
                palette = torch.tensor(PART_COLOURS, dtype=image.dtype, device=image.device)
                image[:3] = (palette[labels] * inside[..., None]).permute(2, 0, 1)
            image[3] = person
        else:
            image[:3] = plate
            if output == "part":
                index = PART_NAMES.index(str(knobs["part"]))
                chosen = torch.softmax(found.parts, dim=0)[index : index + 1]
                part = sample_grid(chosen, (net_h, net_w), (height, width))[0]
                image[3] = person * part
            else:
                image[3] = person
        return Prediction(
            frames={"image": image},
            objects=[_body_object(found, person, threshold, (net_h, net_w), (height, width))],
        )


def network_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """The network's input size for a frame: longer side ``resolution``, multiples of 16."""
    scale = resolution / max(height, width)

    def side(length: int) -> int:
        return max(OUTPUT_STRIDE, round(length * scale / OUTPUT_STRIDE) * OUTPUT_STRIDE)

    return side(height), side(width)


def sample_grid(
    grid: torch.Tensor, network: tuple[int, int], frame: tuple[int, int]
) -> torch.Tensor:
    """Sample BodyPix's ``(C, H / 16 + 1, W / 16 + 1)`` cell grid at every pixel of a frame.

    Cell ``(i, j)`` sits on network pixel ``(16 i, 16 j)`` (its centre, ``+ 0.5``); the network
    saw the frame resized to ``network`` ``(h, w)``. Bilinear; returns ``(C, *frame)``.
    """
    cells_h, cells_w = grid.shape[1], grid.shape[2]
    device = grid.device

    def axis(frame_len: int, net_len: int, cells: int) -> torch.Tensor:
        centres = torch.arange(frame_len, device=device, dtype=torch.float32) + 0.5
        position = (centres * (net_len / frame_len) - 0.5) / OUTPUT_STRIDE
        return position / max(cells - 1, 1) * 2 - 1

    ys = axis(frame[0], network[0], cells_h)
    xs = axis(frame[1], network[1], cells_w)
    sample = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    return F.grid_sample(
        grid[None].float(), sample[None], mode="bilinear", align_corners=True, padding_mode="border"
    )[0]


def _body_object(
    found: BodyPixOutput,
    person: torch.Tensor,
    threshold: float,
    network: tuple[int, int],
    frame: tuple[int, int],
) -> ResultObject:
    """Return the ``body`` object (see the module docstring): box, coverage, 17 keypoints."""
    height, width = frame
    inside = person > threshold
    if not bool(inside.any()):
        return ResultObject("body", [])
    rows = torch.nonzero(inside.any(dim=1)).flatten()
    cols = torch.nonzero(inside.any(dim=0)).flatten()
    x0, x1 = float(cols[0]), float(cols[-1]) + 1
    y0, y1 = float(rows[0]), float(rows[-1]) + 1
    record: dict[str, FieldValue] = {
        "box": [x0, y0, x1, y1],
        "box_nuke": [x0, height - y1, x1, height - y0],
        "coverage": round(float(inside.float().mean()), 4),
    }
    heatmaps, offsets = found.heatmaps, found.offsets
    cells_w = heatmaps.shape[2]
    scale_y, scale_x = height / network[0], width / network[1]
    count = len(KEYPOINT_NAMES)
    for index, name in enumerate(KEYPOINT_NAMES):
        flat = int(heatmaps[index].argmax())
        row, col = divmod(flat, cells_w)
        y = row * OUTPUT_STRIDE + float(offsets[index, row, col]) + 0.5
        x = col * OUTPUT_STRIDE + float(offsets[index + count, row, col]) + 0.5
        x, y = x * scale_x, y * scale_y
        record[name] = [round(x, 2), round(y, 2)]
        record[f"{name}_nuke"] = [round(x, 2), round(height - y, 2)]
        record[f"{name}_score"] = round(float(torch.sigmoid(heatmaps[index, row, col])), 4)
    return ResultObject("body", [record])
