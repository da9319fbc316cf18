"""BlazeFace, MediaPipe's small face detector, in plain PyTorch (front and back variants).

BlazeFace (Bazarevsky et al., 2019, "BlazeFace: Sub-millisecond Neural Face Detection on Mobile
GPUs") is a single-shot detector built from depthwise-separable residual blocks. MediaPipe ships
two trained variants, both with 896 anchors and the same anchor layout (2 anchors per cell of a
16 x 16 grid, 6 per cell of an 8 x 8 grid):

============  ==========  ============================================================
variant       input       trained on
============  ==========  ============================================================
``front``     128 x 128   selfie-camera pictures: one or a few large faces
``back``      256 x 256   rear-camera pictures: smaller faces, further from the camera
============  ==========  ============================================================

The weights frameserve ships (``weights/face-detect/``) are M. Hollemans' PyTorch conversion of
MediaPipe's TFLite files (Apache-2.0); the parameter names here match them, so they load with
``strict=True``. Batch norms were folded into the convolutions, so there are none.

Each anchor predicts 16 numbers (a box centre and size, then 6 keypoints as x, y) in pixels of
the network input, relative to the anchor centre, and one score logit. :func:`decode` turns
them into boxes and keypoints in 0-1 coordinates of the input square and scores in 0-1;
:mod:`frameserve.networks.detection` merges overlapping detections.

Example::

    net = load_blazeface("front", torch.device("cpu"))
    anchors = load_anchors(torch.device("cpu"))
    square = torch.rand(1, 3, 128, 128)                       # sRGB values, 0-1
    raw_boxes, logits = net(to_network_range(square))
    boxes, keypoints, scores = decode(raw_boxes, logits, anchors, input_size=128)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frameserve.errors import ModelSetupError
from frameserve.networks.state_dicts import load_strict, read_state_dict
from frameserve.weights import shipped_weights_path

__all__ = [
    "KEYPOINT_NAMES",
    "NUM_ANCHORS",
    "VARIANTS",
    "BlazeFace",
    "BlazeFaceDetector",
    "BlazeFaceVariant",
    "VariantInfo",
    "decode",
    "load_anchors",
    "load_blazeface",
    "to_network_range",
]

BlazeFaceVariant = Literal["front", "back"]

#: The six keypoints, in the network's order. "Right" and "left" are the person's own: for a
#: face looking at the camera the right eye is on the left of the picture.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")
NUM_ANCHORS = 896
#: Numbers each anchor regresses: box centre x, y, width, height, then x, y of each keypoint.
NUM_COORDS = 4 + 2 * len(KEYPOINT_NAMES)
#: Logits are clipped to this magnitude before the sigmoid (MediaPipe's setting).
SCORE_CLIP = 100.0
WEIGHTS_FAMILY = "face-detect"


@dataclass(frozen=True)
class VariantInfo:
    """What differs between the two shipped variants."""

    input_size: int
    weights_file: str
    #: MediaPipe's default score threshold for this variant.
    score_threshold: float
    #: Tensors in the state dict (a check that the right file was loaded).
    tensor_count: int
    #: The smallest face (box height) found reliably, as a fraction of the input side.
    smallest_fraction: float


VARIANTS: dict[BlazeFaceVariant, VariantInfo] = {
    "front": VariantInfo(128, "blazeface.pth", 0.75, 74, 0.15),
    "back": VariantInfo(256, "blazefaceback.pth", 0.65, 138, 0.08),
}


class BlazeBlock(nn.Module):
    """A residual block: depthwise 3x3 then pointwise 1x1 convolution, plus the input, ReLU.

    With ``stride=2`` the depthwise convolution is padded on the right and bottom only
    (TFLite's "same" padding for even sizes) and the shortcut is a 2x2 max pool. When the block
    widens, the shortcut is padded with zero channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2) or out_channels < in_channels:
            raise ValueError(f"unsupported block {in_channels}->{out_channels}, stride {stride}")
        self.stride = stride
        self.extra_channels = out_channels - in_channels
        self.convs = nn.Sequential(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size=3,
                stride=stride,
                padding=1 if stride == 1 else 0,
                groups=in_channels,
            ),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            branch = self.convs(F.pad(x, (0, 2, 0, 2)))
            shortcut = F.max_pool2d(x, kernel_size=2, stride=2)
        else:
            branch = self.convs(x)
            shortcut = x
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(branch + shortcut)


class DownsampleBlock(nn.Module):
    """The back variant's last block: a stride-2 depthwise-separable convolution, no shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, stride=2, groups=channels),
            nn.Conv2d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs(F.pad(x, (0, 2, 0, 2))))


#: ``(in, out, stride)`` of each block. Front: 128 -> 64 (stem) -> 32 -> 16, where the fine
#: heads look (16 x 16 grid); then -> 8 for the coarse heads (8 x 8 grid).
FRONT_FINE_BLOCKS = (
    (24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
    (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1),
)  # fmt: skip
FRONT_COARSE_BLOCKS = ((88, 96, 2), *[(96, 96, 1)] * 4)
#: Back: 256 -> 128 (stem) -> 64 -> 32 -> 16 (fine heads); its last block goes to 8.
BACK_FINE_BLOCKS = (
    *[(24, 24, 1)] * 7, (24, 24, 2), *[(24, 24, 1)] * 7, (24, 48, 2),
    *[(48, 48, 1)] * 7, (48, 96, 2), *[(96, 96, 1)] * 7,
)  # fmt: skip


def _stem() -> list[nn.Module]:
    return [nn.Conv2d(3, 24, kernel_size=5, stride=2), nn.ReLU(inplace=True)]


def _blocks(widths: tuple[tuple[int, int, int], ...]) -> list[nn.Module]:
    return [BlazeBlock(a, b, stride) for a, b, stride in widths]


class BlazeFace(nn.Module):
    """The BlazeFace network: a square sRGB image in, per-anchor box regressions and logits out.

    Args:
        variant: ``"front"`` (128 x 128 input) or ``"back"`` (256 x 256 input).
    """

    def __init__(self, variant: BlazeFaceVariant = "front") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown BlazeFace variant {variant!r}; choose front or back")
        self.variant = variant
        self.input_size = VARIANTS[variant].input_size
        fine_channels = 88 if variant == "front" else 96
        if variant == "front":
            self.backbone1 = nn.Sequential(*_stem(), *_blocks(FRONT_FINE_BLOCKS))
            self.backbone2 = nn.Sequential(*_blocks(FRONT_COARSE_BLOCKS))
        else:
            self.backbone = nn.Sequential(*_stem(), *_blocks(BACK_FINE_BLOCKS))
            self.final = DownsampleBlock(96)
        # The heads keep the converted weights' names: "_8" heads read the 16 x 16 grid (2
        # anchors per cell), "_16" heads the 8 x 8 grid (6 anchors per cell).
        self.classifier_8 = nn.Conv2d(fine_channels, 2, kernel_size=1)
        self.classifier_16 = nn.Conv2d(96, 6, kernel_size=1)
        self.regressor_8 = nn.Conv2d(fine_channels, 2 * NUM_COORDS, kernel_size=1)
        self.regressor_16 = nn.Conv2d(96, 6 * NUM_COORDS, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network.

        Args:
            x: float ``(N, 3, S, S)``, S the variant's input size, RGB values in -1..1 (see
                :func:`to_network_range`).

        Returns:
            ``raw_boxes``: ``(N, 896, 16)`` regressions, and ``logits``: ``(N, 896)`` score
            logits, anchors in the order of the anchors file (16 x 16 grid first, row by row).
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"BlazeFace {self.variant} takes (N, 3, {self.input_size}, {self.input_size}) "
                f"images, got {tuple(x.shape)}"
            )
        # TFLite pads the stride-2 stem by 1 before and 2 after.
        x = F.pad(x, (1, 2, 1, 2))
        if self.variant == "front":
            fine = self.backbone1(x)
            coarse = self.backbone2(fine)
        else:
            fine = self.backbone(x)
            coarse = self.final(fine)
        logits = torch.cat(
            [_per_anchor(self.classifier_8(fine), 1), _per_anchor(self.classifier_16(coarse), 1)],
            dim=1,
        )
        raw_boxes = torch.cat(
            [
                _per_anchor(self.regressor_8(fine), NUM_COORDS),
                _per_anchor(self.regressor_16(coarse), NUM_COORDS),
            ],
            dim=1,
        )
        return raw_boxes, logits[..., 0]


def _per_anchor(head: torch.Tensor, values: int) -> torch.Tensor:
    """``(N, A * values, H, W)`` head output to ``(N, H * W * A, values)``, cells row by row."""
    return head.permute(0, 2, 3, 1).reshape(head.shape[0], -1, values)


def to_network_range(image: torch.Tensor) -> torch.Tensor:
    """Map sRGB-encoded values to the -1..1 range BlazeFace was trained on.

    Values are clipped to 0-1 first (HDR highlights become white, NaN becomes black), so any
    scene-referred frame is safe to feed.
    """
    return torch.nan_to_num(image, nan=0.0).clamp(0.0, 1.0) * 2.0 - 1.0


def decode(
    raw_boxes: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor, *, input_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn the network's raw outputs into boxes, keypoints and scores.

    Args:
        raw_boxes: ``(N, 896, 16)`` regressions from :class:`BlazeFace`.
        logits: ``(N, 896)`` score logits.
        anchors: ``(896, 4)`` anchors (centre x, centre y, width, height in 0-1 input units).
        input_size: the network's input size in pixels (regressions are in its pixels).

    Returns:
        ``boxes`` ``(N, 896, 4)`` as x0, y0, x1, y1; ``keypoints`` ``(N, 896, 6, 2)`` as x, y;
        both in 0-1 units of the input square (x right, y down); and ``scores`` ``(N, 896)``
        in 0-1.
    """
    anchors = anchors.to(raw_boxes)
    centre = anchors[:, :2]
    size = anchors[:, 2:]
    points = raw_boxes.reshape(*raw_boxes.shape[:-1], -1, 2) / input_size
    box_centre = points[..., 0, :] * size + centre
    box_half = points[..., 1, :] * size / 2
    boxes = torch.cat([box_centre - box_half, box_centre + box_half], dim=-1)
    keypoints = points[..., 2:, :] * size[:, None, :] + centre[:, None, :]
    scores = torch.sigmoid(logits.clamp(-SCORE_CLIP, SCORE_CLIP))
    return boxes, keypoints, scores


def load_blazeface(variant: BlazeFaceVariant, device: torch.device) -> BlazeFace:
    """Return the shipped BlazeFace ``variant`` on ``device``, in eval mode.

    Raises:
        ModelSetupError: the weights file is missing or does not fit the architecture.
    """
    info = VARIANTS[variant]
    path = shipped_weights_path(WEIGHTS_FAMILY, info.weights_file)
    state = read_state_dict(path, f"BlazeFace {variant}")
    if len(state) != info.tensor_count:
        raise ModelSetupError(
            f"{path} holds {len(state)} tensors; BlazeFace {variant} has {info.tensor_count}"
        )
    return load_strict(BlazeFace(variant), state, path, f"BlazeFace {variant}", device)


def load_anchors(device: torch.device) -> torch.Tensor:
    """Return the shipped ``(896, 4)`` float32 anchors (shared by both variants) on ``device``."""
    path = shipped_weights_path(WEIGHTS_FAMILY, "anchors.npy")
    anchors = np.load(path, allow_pickle=False)
    if anchors.shape != (NUM_ANCHORS, 4):
        raise ModelSetupError(f"{path} holds {anchors.shape} anchors, expected ({NUM_ANCHORS}, 4)")
    return torch.from_numpy(anchors.astype(np.float32)).to(device)


class BlazeFaceDetector(nn.Module):
    """A shipped BlazeFace variant with its anchors: sRGB squares in, decoded detections out.

    It follows :class:`frameserve.networks.detection.SquareDetector`, so
    :func:`~frameserve.networks.detection.scan` can run it over frames of any size.
    """

    anchors: torch.Tensor

    def __init__(self, variant: BlazeFaceVariant, device: torch.device) -> None:
        super().__init__()
        info = VARIANTS[variant]
        self.variant = variant
        self.input_size = info.input_size
        self.keypoint_count = len(KEYPOINT_NAMES)
        self.smallest_fraction = info.smallest_fraction
        self.net = load_blazeface(variant, device)
        self.register_buffer("anchors", load_anchors(device))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detect faces in float ``(N, 3, S, S)`` sRGB images (values clipped to 0-1 here).

        Returns:
            ``(boxes, keypoints, scores)`` for all 896 anchors, as :func:`decode` gives them.
        """
        if images.device.type == "cpu":
            # measured twice as fast on a CPU (depthwise convolutions); the same values
            images = images.contiguous(memory_format=torch.channels_last)
        raw_boxes, logits = self.net(to_network_range(images))
        return decode(raw_boxes, logits, self.anchors, input_size=self.input_size)
