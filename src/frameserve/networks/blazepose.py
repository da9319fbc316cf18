"""BlazePose GHUM (MediaPipe Pose): the person detector and the 33-landmark network, in PyTorch.

Two networks, rebuilt from Google's TFLite files by ``scripts/convert_tflite.py`` and run as
:class:`~frameserve.networks.tflite_graph.TFLiteGraph` (weights in
``weights/body-pose/``, Apache-2.0):

1. **Detector** (:class:`PoseDetector`): the frame letterboxed into 224 x 224, RGB in -1..1;
   2254 SSD anchors (strides 8, 16 and 32) each regress a box and four keypoints (0: the hip
   centre, 1: a point whose distance from it gives the body's size and whose direction gives
   its rotation, 2-3: the same for the upper body) and a score. Decoded and merged by
   weighted NMS (:func:`frameserve.networks.detection.weighted_nms`, IoU 0.3).
2. **Landmarks** (:class:`PoseLandmarker`, ``lite`` / ``full`` / ``heavy``): the rotated
   square crop around the body (:func:`body_crop`: centred on the hip centre, side 2.5 times
   the keypoint distance, turned so the body stands upright), 256 x 256 RGB in 0..1; gives 39
   landmarks (33 body points, :data:`LANDMARK_NAMES`, and 6 auxiliary ones) as x, y (crop
   pixels), z, visibility and presence logits, a pose-presence score and a 256 x 256 person
   segmentation logit map.

Coordinates are pixels of the full frame, x right, y down, the origin at the top-left corner
of the top-left pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.networks.detection import Detections, weighted_nms
from frameserve.networks.tflite_graph import TFLiteGraph
from frameserve.weights import shipped_weights_path

__all__ = [
    "DETECTOR_SIZE",
    "LANDMARK_NAMES",
    "LANDMARK_SIZE",
    "LANDMARK_VARIANTS",
    "SKELETON",
    "BodyCrop",
    "PoseDetector",
    "PoseLandmarker",
    "PoseLandmarks",
    "body_crop",
    "decode_detections",
    "pose_anchors",
]

FAMILY = "body-pose"
DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
#: The landmark networks shipped (``heavy`` converts with ``convert_tflite.py --heavy``).
LandmarkVariant = Literal["lite", "full", "heavy"]
LANDMARK_VARIANTS: tuple[LandmarkVariant, ...] = ("lite", "full")

#: The 33 body landmarks, in the network's order ("left" is the person's own left).
LANDMARK_NAMES = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)
#: Pairs of landmark indices joined by the drawn skeleton (MediaPipe's pose connections).
SKELETON = (
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10),
    (11, 12), (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),
    (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
    (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28),
    (27, 29), (28, 30), (29, 31), (30, 32), (27, 31), (28, 32),
)  # fmt: skip

_STRIDES = (8, 16, 32, 32, 32)
_MIN_SCALE, _MAX_SCALE = 0.1484375, 0.75
#: The crop's side is this many times the distance between the detector's keypoints 0 and 1.
CROP_SCALE = 2.0 * 1.25


def pose_anchors(device: torch.device | str = "cpu") -> torch.Tensor:
    """The detector's 2254 anchor centres, ``(2254, 2)`` x, y in 0..1 (all anchors 1 x 1).

    MediaPipe's SSD anchors for ``pose_detection``: feature maps 28, 14 and 7 (three layers
    at stride 32 share the 7 x 7 map), two anchors per cell and layer, row by row.
    """
    centres = []
    layer = 0
    while layer < len(_STRIDES):
        stride = _STRIDES[layer]
        count = 0
        while layer < len(_STRIDES) and _STRIDES[layer] == stride:
            count += 2  # aspect ratio 1 and the interpolated scale
            layer += 1
        cells = math.ceil(DETECTOR_SIZE / stride)
        grid = (torch.arange(cells, dtype=torch.float32) + 0.5) / cells
        ys, xs = torch.meshgrid(grid, grid, indexing="ij")
        cell = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
        centres.append(cell.repeat_interleave(count, dim=0))
    return torch.cat(centres).to(device)


def decode_detections(
    raw: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor, threshold: float
) -> Detections:
    """Decode one image's detector outputs into boxes and keypoints in 0..1 of its square.

    Args:
        raw: ``(2254, 12)`` regressors: box centre x, y, width, height, then four keypoints'
            x, y, in detector pixels relative to the anchor.
        logits: ``(2254,)`` score logits (clipped to +-100, then a sigmoid).
        anchors: :func:`pose_anchors`.
        threshold: the lowest score kept.
    """
    scores = torch.sigmoid(logits.clamp(-100.0, 100.0))
    keep = scores >= threshold
    raw, scores, anchors = raw[keep], scores[keep], anchors[keep]
    values = raw / DETECTOR_SIZE
    centre = values[:, :2] + anchors
    half = values[:, 2:4] / 2
    boxes = torch.cat([centre - half, centre + half], dim=1)
    keypoints = values[:, 4:].reshape(-1, 4, 2) + anchors[:, None, :]
    return Detections(boxes, keypoints, scores)


class PoseDetector(nn.Module):
    """BlazePose's person detector on frames of any size.

    Args:
        device: where the network runs.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.net = TFLiteGraph.from_files(
            shipped_weights_path(FAMILY, "pose_detection.graph.json"),
            shipped_weights_path(FAMILY, "pose_detection.pth"),
            "BlazePose detector",
            device,
        )
        self.register_buffer("anchors", pose_anchors(device), persistent=False)

    def forward(self, image: torch.Tensor, threshold: float = 0.5) -> Detections:
        """Return the people in a float32 ``(3, H, W)`` RGB image in 0..1, in its pixels.

        The image is shrunk (area average) and letterboxed into the detector's square; boxes
        and keypoints come back in the frame's pixels, highest score first.
        """
        _, height, width = image.shape
        scale = DETECTOR_SIZE / max(height, width)
        inner_h = max(1, round(height * scale))
        inner_w = max(1, round(width * scale))
        small = F.interpolate(image[None], size=(inner_h, inner_w), mode="area")
        square = small.new_zeros((1, 3, DETECTOR_SIZE, DETECTOR_SIZE))
        top, left = (DETECTOR_SIZE - inner_h) // 2, (DETECTOR_SIZE - inner_w) // 2
        square[:, :, top : top + inner_h, left : left + inner_w] = small * 2.0 - 1.0
        outputs = self.net(square)
        anchors = self.anchors
        assert isinstance(anchors, torch.Tensor)
        found = decode_detections(
            outputs["Identity"][0], outputs["Identity_1"][0, :, 0], anchors, threshold
        )
        found = weighted_nms(found, 0.3)
        # From the square's 0..1 to frame pixels.
        size = DETECTOR_SIZE / scale
        return found.mapped(size, size, -left / scale, -top / scale)


@dataclass(frozen=True)
class BodyCrop:
    """A rotated square region of the frame: centre, side (pixels) and rotation (radians).

    A rotation ``r`` turns the crop's axes clockwise on screen (y down) by ``r``: crop point
    ``(a, b)`` (each -0.5..0.5 of the side) is frame point
    ``centre + side * (a cos r - b sin r, a sin r + b cos r)``.
    """

    cx: float
    cy: float
    side: float
    rotation: float

    def to_frame(self, points: torch.Tensor) -> torch.Tensor:
        """Map ``(..., 2)`` crop coordinates in 0..1 to frame pixels."""
        a = points[..., 0] - 0.5
        b = points[..., 1] - 0.5
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        x = self.cx + self.side * (a * cos - b * sin)
        y = self.cy + self.side * (a * sin + b * cos)
        return torch.stack([x, y], dim=-1)

    def to_crop(self, points: torch.Tensor) -> torch.Tensor:
        """Map ``(..., 2)`` frame pixels to crop coordinates in 0..1 (the inverse)."""
        dx = (points[..., 0] - self.cx) / self.side
        dy = (points[..., 1] - self.cy) / self.side
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        return torch.stack([dx * cos + dy * sin + 0.5, -dx * sin + dy * cos + 0.5], dim=-1)


def body_crop(hip: tuple[float, float], top: tuple[float, float]) -> BodyCrop:
    """The landmark network's crop from two keypoints in frame pixels.

    ``hip`` is the body's centre (detector keypoint 0, or auxiliary landmark 33), ``top`` the
    point that gives its size and direction (keypoint 1, or landmark 34): the crop is centred on
    ``hip``, :data:`CROP_SCALE` times their distance wide, turned so ``top`` is straight up.
    """
    dx, dy = top[0] - hip[0], top[1] - hip[1]
    rotation = math.pi / 2 - math.atan2(-dy, dx)
    rotation = rotation - 2 * math.pi * math.floor((rotation + math.pi) / (2 * math.pi))
    side = max(CROP_SCALE * math.hypot(dx, dy), 1.0)
    return BodyCrop(hip[0], hip[1], side, rotation)


def sample_crop(image: torch.Tensor, crop: BodyCrop, size: int) -> torch.Tensor:
    """Cut ``crop`` out of a ``(3, H, W)`` image as ``(1, 3, size, size)``, bilinear.

    A crop much larger than ``size`` samples a copy of the frame shrunk by a whole factor
    first (area average), so a 4K frame is not aliased; outside the frame is black.
    """
    factor = max(1, int(crop.side / size / 1.5))
    source = F.avg_pool2d(image[None], factor, ceil_mode=True) if factor > 1 else image[None]
    small_h, small_w = source.shape[2], source.shape[3]
    steps = (torch.arange(size, device=image.device, dtype=torch.float32) + 0.5) / size
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    frame = crop.to_frame(torch.stack([xs, ys], dim=-1))  # (size, size, 2) frame pixels
    grid = torch.stack(
        [
            frame[..., 0] / (factor * small_w) * 2 - 1,
            frame[..., 1] / (factor * small_h) * 2 - 1,
        ],
        dim=-1,
    )
    return F.grid_sample(source, grid[None].to(source.dtype), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class PoseLandmarks:
    """One person's landmarks from the landmark network.

    Attributes:
        points: ``(39, 3)`` x, y in frame pixels and z (relative depth, in the crop's pixel
            scale, smaller is nearer the camera).
        visibility: ``(39,)`` 0-1, how likely each point is visible (not occluded).
        presence: ``(39,)`` 0-1, how likely each point lies inside the crop.
        score: 0-1, how sure the network is that the crop holds a person.
        crop: where the network looked.
        segmentation: ``(256, 256)`` person logits over the crop.
    """

    points: torch.Tensor
    visibility: torch.Tensor
    presence: torch.Tensor
    score: float
    crop: BodyCrop
    segmentation: torch.Tensor


class PoseLandmarker(nn.Module):
    """BlazePose's landmark network (``lite``, ``full`` or ``heavy``) on a body crop.

    Args:
        variant: which network; ``heavy`` needs ``pose_landmark_heavy.pth`` (not shipped).
        device: where it runs.
    """

    def __init__(self, variant: LandmarkVariant, device: torch.device | str = "cpu") -> None:
        super().__init__()
        name = f"pose_landmark_{variant}"
        self.net = TFLiteGraph.from_files(
            shipped_weights_path(FAMILY, f"{name}.graph.json"),
            shipped_weights_path(FAMILY, f"{name}.pth"),
            f"BlazePose {variant} landmarks",
            device,
        )

    def forward(self, image: torch.Tensor, crop: BodyCrop) -> PoseLandmarks:
        """Run on ``crop`` of a float32 ``(3, H, W)`` RGB image in 0..1."""
        outputs = self.net(sample_crop(image, crop, LANDMARK_SIZE))
        values = outputs["Identity"][0].reshape(39, 5).float()
        crop_xy = values[:, :2] / LANDMARK_SIZE
        points = torch.cat([crop.to_frame(crop_xy), values[:, 2:3] * crop.side / LANDMARK_SIZE], 1)
        return PoseLandmarks(
            points=points,
            visibility=torch.sigmoid(values[:, 3]),
            presence=torch.sigmoid(values[:, 4]),
            score=float(outputs["Identity_1"].reshape(-1)[0]),
            crop=crop,
            segmentation=outputs["Identity_2"][0, 0],
        )


def paint_segmentation(matte: torch.Tensor, person: PoseLandmarks) -> None:
    """Paint a person's segmentation (0-1) into a float32 ``(H, W)`` matte, keeping the max.

    Only the frame pixels under the person's crop are sampled (bilinear in the 256 x 256
    logits, then a sigmoid), so a 4K frame costs what the crop covers.
    """
    height, width = matte.shape
    crop = person.crop
    reach = crop.side * math.sqrt(0.5)
    left, right = max(0, int(crop.cx - reach)), min(width, math.ceil(crop.cx + reach))
    top, bottom = max(0, int(crop.cy - reach)), min(height, math.ceil(crop.cy + reach))
    if left >= right or top >= bottom:
        return
    xs = torch.arange(left, right, device=matte.device, dtype=torch.float32) + 0.5
    ys = torch.arange(top, bottom, device=matte.device, dtype=torch.float32) + 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    inside = crop.to_crop(torch.stack([grid_x, grid_y], dim=-1)) * 2 - 1
    logits = person.segmentation.to(torch.float32)[None, None]
    sampled = F.grid_sample(logits, inside[None], mode="bilinear", align_corners=False)
    value = torch.sigmoid(sampled[0, 0]).to(matte.dtype)
    outside = (inside.abs() > 1).any(dim=-1)
    value = value.masked_fill(outside, 0.0)
    region = matte[top:bottom, left:right]
    region.copy_(torch.maximum(region, value))
