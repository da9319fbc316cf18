"""BodyPix 2 (MobileNetV1 0.75, stride 16): person segmentation, 24 body parts, 17 keypoints.

Rebuilt from Google's int8 TFLite file by ``scripts/convert_tflite.py`` and run as a
:class:`~frameserve.networks.tflite_graph.TFLiteGraph` (weights in ``weights/body-parts/``,
Apache-2.0). The network is fully convolutional: it takes any size that is a multiple of 16
(RGB, values ``(v - 128) / 128`` for 8-bit ``v``) and gives, on a grid of
``(H / 16 + 1, W / 16 + 1)`` cells (cell ``(i, j)`` sits on input pixel ``(16 i, 16 j)``):

- ``segments``: one person logit;
- ``parts``: 24 part logits (:data:`PART_NAMES`), meaningful where there is a person;
- ``heatmaps``: 17 keypoint logits (:data:`KEYPOINT_NAMES`) and ``offsets`` (34: the 17 y
  offsets, then the 17 x offsets, in input pixels) from a cell to the keypoint.

The int8 graph is reproduced in float32 with every activation rounded to its int8 grid, so
part labels agree with Google's interpreter on more than 98% of cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from frameserve.networks.tflite_graph import TFLiteGraph
from frameserve.weights import shipped_weights_path

__all__ = ["KEYPOINT_NAMES", "OUTPUT_STRIDE", "PART_NAMES", "BodyPix", "BodyPixOutput"]

FAMILY = "body-parts"
OUTPUT_STRIDE = 16
#: BodyPix's 24 part labels, in the network's order ("left" is the person's own left).
PART_NAMES = (
    "left_face",
    "right_face",
    "left_upper_arm_front",
    "left_upper_arm_back",
    "right_upper_arm_front",
    "right_upper_arm_back",
    "left_lower_arm_front",
    "left_lower_arm_back",
    "right_lower_arm_front",
    "right_lower_arm_back",
    "left_hand",
    "right_hand",
    "torso_front",
    "torso_back",
    "left_upper_leg_front",
    "left_upper_leg_back",
    "right_upper_leg_front",
    "right_upper_leg_back",
    "left_lower_leg_front",
    "left_lower_leg_back",
    "right_lower_leg_front",
    "right_lower_leg_back",
    "left_foot",
    "right_foot",
)
#: The 17 COCO keypoints BodyPix (PoseNet) finds.
KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)


@dataclass(frozen=True)
class BodyPixOutput:
    """The network's outputs for one image, each ``(C, H / 16 + 1, W / 16 + 1)`` float32."""

    segments: torch.Tensor
    parts: torch.Tensor
    heatmaps: torch.Tensor
    offsets: torch.Tensor


class BodyPix(nn.Module):
    """BodyPix 2 on images whose sides are multiples of 16.

    Args:
        device: where it runs.
        fake_quant: round activations to the int8 grid, as the TFLite file does (default).
    """

    def __init__(self, device: torch.device | str = "cpu", *, fake_quant: bool = True) -> None:
        super().__init__()
        name = "bodypix_mobilenet_v1_075"
        self.net = TFLiteGraph.from_files(
            shipped_weights_path(FAMILY, f"{name}.graph.json"),
            shipped_weights_path(FAMILY, f"{name}.pth"),
            "BodyPix",
            device,
            fake_quant=fake_quant,
        )

    def forward(self, image: torch.Tensor) -> BodyPixOutput:
        """Run on a float32 ``(3, H, W)`` RGB image in 0..1 (``H``, ``W`` multiples of 16)."""
        _, height, width = image.shape
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(f"BodyPix takes sides that are multiples of 16, got {width}x{height}")
        outputs = self.net(image[None] * (255.0 / 128.0) - 1.0)
        return BodyPixOutput(
            segments=outputs["float_segments"][0],
            parts=outputs["float_part_heatmaps"][0],
            heatmaps=outputs["float_heatmaps"][0],
            offsets=outputs["float_short_offsets"][0],
        )
