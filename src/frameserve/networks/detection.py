"""Running a fixed-size square detector over frames of any size, and merging its detections.

Detectors such as BlazeFace look at a small square (128 x 128 pixels) and find objects from
about a fifth of that square up to its whole size. To find both large and small objects in a
big frame, :func:`plan_scan` lays out a pyramid of square *windows*:

- level 0 is the whole frame, scaled so that its longer side fits the detector's square (the
  rest of the square is black);
- each further level halves the window side (but never below the detector's own size: frames
  are not enlarged), with windows overlapping by half, so that any object up to half a window
  wide lies wholly inside one of them;
- levels stop once the smallest object a level finds is no bigger than the smallest object
  asked for.

:func:`scan` resizes the frame once per level (area average), cuts the windows, runs the
detector on them in batches, merges each window's detections with :func:`weighted_nms`, maps
them back to frame pixels, merges them across windows and levels the same way and drops those
nested in a better one (:func:`suppress_nested`). A detection that touches a window's edge
inside the frame is dropped: the object is cut there, and an overlapping window (or the level
above) sees it whole.

Coordinates are pixels of the full frame: x to the right, y down, the origin at the top-left
corner of the top-left pixel (so pixel ``(row, col)`` covers ``col..col+1``, ``row..row+1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "Detections",
    "ScanLevel",
    "SquareDetector",
    "box_containment",
    "box_iou",
    "plan_scan",
    "scan",
    "suppress_nested",
    "weighted_nms",
]


#: Windows run through the detector at once, on a CPU and on a GPU. On a CPU, batches beyond
#: a few windows fall out of the caches and get slower per window (BlazeFace back: 25 ms per
#: window in batches of 1 to 4, 160 ms in batches of 32; measured on a 2-core CI machine).
CPU_BATCH = 4
GPU_BATCH = 64
#: A detection closer than this fraction of the window to an inner window edge is dropped.
EDGE_MARGIN = 0.02


class SquareDetector(Protocol):
    """A detector that looks at squares of ``input_size`` pixels.

    Attributes:
        input_size: the side ``S`` of the squares it takes.
        keypoint_count: keypoints per detection.
        smallest_fraction: the smallest object it finds reliably, as a fraction of ``S``.
    """

    input_size: int
    keypoint_count: int
    smallest_fraction: float

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detect in float32 ``(N, 3, S, S)`` sRGB images, values 0-1.

        Returns:
            Candidate boxes ``(N, A, 4)`` as x0, y0, x1, y1 and keypoints ``(N, A, P, 2)`` as
            x, y, both in 0-1 units of the square (x right, y down), and scores ``(N, A)``.
        """
        ...


@dataclass(frozen=True)
class Detections:
    """Detected objects: float32 boxes ``(K, 4)`` as x0, y0, x1, y1, keypoints ``(K, P, 2)``
    as x, y, scores ``(K,)`` in 0-1."""

    boxes: torch.Tensor
    keypoints: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty(keypoints: int, device: torch.device | None = None) -> Detections:
        """Return no detections, each with ``keypoints`` keypoints."""
        return Detections(
            torch.zeros(0, 4, device=device),
            torch.zeros(0, keypoints, 2, device=device),
            torch.zeros(0, device=device),
        )

    @staticmethod
    def cat(parts: Sequence[Detections]) -> Detections:
        """Return all of ``parts`` as one set (at least one part is needed)."""
        return Detections(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.keypoints for p in parts]),
            torch.cat([p.scores for p in parts]),
        )

    def select(self, index: torch.Tensor) -> Detections:
        """Return the detections a boolean mask or index tensor picks."""
        return Detections(self.boxes[index], self.keypoints[index], self.scores[index])

    def mapped(self, scale_x: float, scale_y: float, shift_x: float, shift_y: float) -> Detections:
        """Return the detections with every x as ``x * scale_x + shift_x`` (and so for y)."""
        scale = torch.tensor([scale_x, scale_y], device=self.boxes.device)
        shift = torch.tensor([shift_x, shift_y], device=self.boxes.device)
        boxes = (self.boxes.reshape(-1, 2, 2) * scale + shift).reshape(-1, 4)
        return Detections(boxes, self.keypoints * scale + shift, self.scores)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the ``(A, B)`` intersection-over-union of boxes ``(A, 4)`` and ``(B, 4)``.

    Boxes are x0, y0, x1, y1 with x0 <= x1 and y0 <= y1; an empty union gives 0.
    """
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def weighted_nms(found: Detections, iou_threshold: float = 0.3) -> Detections:
    """Merge overlapping detections by blending them, as BlazeFace's paper describes.

    Going from the highest score down, each detection takes every remaining one whose box
    overlaps it by more than ``iou_threshold`` (IoU); the merged box and keypoints are the
    score-weighted mean of the group, and its score is the group's highest (MediaPipe's rule).

    Returns:
        The merged detections, highest score first.
    """
    if len(found) == 0:
        return found
    order = torch.argsort(found.scores, descending=True)
    ious = box_iou(found.boxes, found.boxes)
    taken = torch.zeros(len(found), dtype=torch.bool, device=found.scores.device)
    boxes, keypoints, scores = [], [], []
    for index in order.tolist():
        if taken[index]:
            continue
        group = (ious[index] > iou_threshold) & ~taken
        group[index] = True
        taken |= group
        weights = found.scores[group]
        total = weights.sum()
        boxes.append((found.boxes[group] * weights[:, None]).sum(dim=0) / total)
        keypoints.append((found.keypoints[group] * weights[:, None, None]).sum(dim=0) / total)
        scores.append(found.scores[index])
    return Detections(torch.stack(boxes), torch.stack(keypoints), torch.stack(scores))


def box_containment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the ``(A, B)`` fraction of each box of ``b`` that lies inside each box of ``a``."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=-1)
    return inter / area_b.clamp(min=1e-12)[None, :]


def suppress_nested(found: Detections, containment: float = 0.5) -> Detections:
    """Drop each detection that lies mostly inside a higher-scoring one.

    Small windows of a scan see parts of a big face (an eye, a cheek) and sometimes take them
    for faces; the big face, seen whole by a larger window, scores higher. A detection is
    dropped when more than ``containment`` of its box lies inside the box of a detection with
    a higher score. ``found`` must be sorted by score, highest first (as
    :func:`weighted_nms` returns it).
    """
    if len(found) < 2:
        return found
    inside = box_containment(found.boxes, found.boxes).triu(diagonal=1) > containment
    keep = torch.ones(len(found), dtype=torch.bool, device=found.scores.device)
    for index in range(len(found)):
        if keep[index]:
            keep &= ~inside[index]
    return found.select(keep)


@dataclass(frozen=True)
class ScanLevel:
    """One level of a scan: the frame resized to ``height`` x ``width``, and the top-left
    corners ``(x, y)`` of the detector-sized windows cut from it."""

    height: int
    width: int
    windows: tuple[tuple[int, int], ...]

    @property
    def window_count(self) -> int:
        """How many windows this level runs."""
        return len(self.windows)


def _positions(length: int, window: int) -> list[int]:
    """Window starts along one side: the whole side covered, neighbours overlapping by half."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / (window / 2)) + 1
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def plan_scan(
    height: int, width: int, *, input_size: int, smallest_fraction: float, smallest_object: float
) -> list[ScanLevel]:
    """Lay out the pyramid of windows that finds objects down to ``smallest_object`` pixels.

    Args:
        height, width: the frame's size in pixels.
        input_size: the detector's square side ``S`` in pixels.
        smallest_fraction: the smallest object the detector finds reliably, as a fraction of
            ``S`` (about 0.2 for BlazeFace front).
        smallest_object: the smallest object wanted, in frame pixels. Levels are added until
            one finds objects this small, or its windows are ``S`` frame pixels wide (the frame
            is never enlarged); ``inf`` gives level 0 alone.

    Returns:
        The levels, largest windows first; level 0 always covers the whole frame in one window.
    """
    side = float(max(height, width))
    levels: list[ScanLevel] = []
    while True:
        scale = min(1.0, input_size / side)
        level_h = max(1, round(height * scale))
        level_w = max(1, round(width * scale))
        windows = tuple(
            (x, y) for y in _positions(level_h, input_size) for x in _positions(level_w, input_size)
        )
        levels.append(ScanLevel(level_h, level_w, windows))
        if side * smallest_fraction <= smallest_object or side <= input_size:
            return levels
        side = max(side / 2, float(input_size))


def scan(
    image: torch.Tensor,
    detector: SquareDetector,
    levels: Sequence[ScanLevel],
    *,
    score_threshold: float,
    iou_threshold: float = 0.3,
) -> Detections:
    """Run ``detector`` over the windows of ``levels`` and merge what it finds.

    Args:
        image: float32 ``(3, H, W)`` sRGB image, values 0-1 (clip HDR frames first; NaN is
            left to the detector).
        detector: the square detector.
        levels: windows from :func:`plan_scan` for this frame size and detector.
        score_threshold: detections scoring below this are dropped before merging.
        iou_threshold: boxes overlapping more than this are merged (:func:`weighted_nms`).

    Returns:
        The merged detections in frame pixels, highest score first.
    """
    _, height, width = image.shape
    size = detector.input_size
    batch = CPU_BATCH if image.device.type == "cpu" else GPU_BATCH
    found: list[Detections] = []
    for level in levels:
        resized = image
        if (level.height, level.width) != (height, width):
            resized = F.interpolate(image[None], size=(level.height, level.width), mode="area")[0]
        padded = F.pad(
            resized, (0, max(0, size - level.width), 0, max(0, size - level.height)), value=0.0
        )
        scale_x, scale_y = width / level.width, height / level.height
        for start in range(0, level.window_count, batch):
            corners = level.windows[start : start + batch]
            squares = torch.stack([padded[:, y : y + size, x : x + size] for x, y in corners])
            boxes, keypoints, scores = detector(squares)
            for (x, y), box, points, score in zip(corners, boxes, keypoints, scores, strict=True):
                keep = score >= score_threshold
                if not bool(keep.any()):
                    continue
                window = Detections(box[keep] * size, points[keep] * size, score[keep])
                window = weighted_nms(window, iou_threshold)
                window = window.select(_clear_of_inner_edges(window.boxes, x, y, level, size))
                found.append(window.mapped(scale_x, scale_y, x * scale_x, y * scale_y))
    if not found:
        return Detections.empty(detector.keypoint_count, device=image.device)
    return suppress_nested(weighted_nms(Detections.cat(found), iou_threshold))


def _clear_of_inner_edges(
    boxes: torch.Tensor, x: int, y: int, level: ScanLevel, size: int
) -> torch.Tensor:
    """Which boxes (window pixels) stay clear of the window's edges that lie inside the frame."""
    margin = EDGE_MARGIN * size
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    if x > 0:
        keep &= boxes[:, 0] >= margin
    if y > 0:
        keep &= boxes[:, 1] >= margin
    if x + size < level.width:
        keep &= boxes[:, 2] <= size - margin
    if y + size < level.height:
        keep &= boxes[:, 3] <= size - margin
    return keep
