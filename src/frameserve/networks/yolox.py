"""YOLOX-Nano: COCO object boxes (80 classes), run with onnxruntime, decoded in PyTorch.

How a frame becomes boxes::

    plate (3, H, W) sRGB 0-1 --resize, aspect kept (ratio r = 416 / longer side)-->
        top-left of a 416 x 416 square padded with grey 114, BGR, values 0-255
    --YOLOX-Nano (ONNX)--> 3549 rows of 85: one per cell of the stride 8, 16 and 32 grids
        (52 x 52, 26 x 26, 13 x 13 cells, row by row): x, y, log w, log h, objectness,
        80 class probabilities
    --decode--> centre ((x, y) + cell) * stride, size exp(log w, log h) * stride, score
        objectness x class probability, in the square's pixels --/ r--> frame pixels
    --best class per row, score >= threshold--> --class-aware NMS (IoU 0.45)--> boxes

The network is Megvii's YOLOX-Nano (Apache-2.0; 0.91 M parameters, COCO box AP 25.8), as an
ONNX graph of 3.7 MB; it takes about 10 ms per square on a 2-core CPU, so onnxruntime on the
CPU serves every device (a GPU would save a few milliseconds and cost a copy each way).
Decoding and non-maximum suppression are plain PyTorch (:func:`decode`, :func:`batched_nms`).

**Tiles.** A 4K frame shrunk to 416 pixels turns a 60-pixel object into 6: too small for the
detector. :meth:`YoloxDetector.detect` with ``tiles=n`` also looks at an ``n x n`` grid of
overlapping tiles (each shrunk to 416 the same way), drops boxes that touch a tile's edge
inside the frame (the object is cut there; the whole frame or a neighbour sees it whole), and
merges everything with the class-aware NMS.

Coordinates are pixels of the full frame: x to the right, y down, the origin at the top-left
corner of the top-left pixel.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from frameserve.errors import KnobError, ModelSetupError

__all__ = [
    "COCO_CLASSES",
    "INPUT_SIZE",
    "PAD_VALUE",
    "PRESHRINK_SIDE",
    "STRIDES",
    "ObjectBoxes",
    "YoloxDetector",
    "anchor_grid",
    "batched_nms",
    "class_ids",
    "decode",
    "letterbox",
    "nms",
    "tile_layout",
]

#: The detector's square input side, in pixels.
INPUT_SIZE = 416
#: The grids' strides: 52 x 52, 26 x 26 and 13 x 13 cells of a 416 square, 3549 rows in all.
STRIDES = (8, 16, 32)
#: The grey the square is padded with (0-255), as the network was trained.
PAD_VALUE = 114.0
#: Frames longer than this are averaged down to it before the final bilinear resize.
PRESHRINK_SIDE = 1280
#: Boxes of one class overlapping a better one by more than this (IoU) are dropped.
NMS_IOU = 0.45
#: Candidates kept (by score) before NMS, so a frame full of weak rows stays cheap.
MAX_CANDIDATES = 2000
#: Tiles overlap their neighbours by this fraction of their side.
TILE_OVERLAP = 0.25
#: A tile's box closer than this fraction of the tile to an inner tile edge is dropped.
TILE_EDGE_MARGIN = 0.01

#: The 80 COCO classes, in the network's order (index = class id).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class ObjectBoxes:
    """Detected objects: float32 boxes ``(K, 4)`` as x0, y0, x1, y1 in frame pixels, scores
    ``(K,)`` in 0-1 and int64 COCO class ids ``(K,)``, highest score first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty(device: torch.device | None = None) -> ObjectBoxes:
        """Return no objects."""
        return ObjectBoxes(
            torch.zeros(0, 4, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
        )

    def select(self, index: torch.Tensor) -> ObjectBoxes:
        """Return the objects a boolean mask or index tensor picks."""
        return ObjectBoxes(self.boxes[index], self.scores[index], self.classes[index])


def class_ids(text: str) -> tuple[int, ...] | None:
    """Return the COCO class ids a comma-separated list of class names names.

    Names are matched ignoring case, with ``_`` or ``-`` standing for a space
    (``traffic_light``); an empty list gives ``None`` (every class).

    Raises:
        KnobError: a name is not a COCO class; the message lists the closest ones.
    """
    ids: list[int] = []
    for raw in text.split(","):
        name = " ".join(raw.strip().lower().replace("_", " ").replace("-", " ").split())
        if not name:
            continue
        if name not in COCO_CLASSES:
            close = difflib.get_close_matches(name, COCO_CLASSES, n=4, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise KnobError(
                f"knob 'classes': {raw.strip()!r} is not a COCO class; {hint}the classes are: "
                f"{', '.join(COCO_CLASSES)}"
            )
        ids.append(COCO_CLASSES.index(name))
    return tuple(sorted(set(ids))) if ids else None


def letterbox(image: torch.Tensor, size: int = INPUT_SIZE) -> tuple[torch.Tensor, float]:
    """Return the detector's input for an image, and the scale ``r`` from image to square.

    The image is resized with its aspect kept by ``r = size / max(H, W)`` into the square's
    top-left corner, the rest :data:`PAD_VALUE`, channels in BGR order, values 0-255: YOLOX's
    own preprocessing. Its training resize is a plain bilinear one (OpenCV's ``INTER_LINEAR``,
    no antialiasing), and the detector's scores depend on it: a smoother resize raises
    Sintel's rock from 0.41 to 0.65 "person". So the last step is that same plain bilinear
    resize; frames longer than :data:`PRESHRINK_SIDE` are first averaged down (area) to that
    side, so a 4K plate is not point-sampled (grain and fine texture would alias).

    Args:
        image: float32 ``(3, H, W)`` sRGB values in 0-1 (clip HDR frames first).
        size: the square's side.

    Returns:
        float32 ``(1, 3, size, size)``, and ``r``: an image pixel ``p`` lands at ``p * r``.
    """
    _, height, width = image.shape
    longer = max(height, width)
    ratio = size / longer
    new_h = min(size, max(1, round(height * ratio)))
    new_w = min(size, max(1, round(width * ratio)))
    work = image[None]
    if longer > PRESHRINK_SIDE:
        shrink = PRESHRINK_SIDE / longer
        work = F.interpolate(
            work, size=(max(1, round(height * shrink)), max(1, round(width * shrink))), mode="area"
        )
    resized = F.interpolate(work, size=(new_h, new_w), mode="bilinear", align_corners=False)
    square = torch.full((1, 3, size, size), PAD_VALUE, dtype=torch.float32, device=image.device)
    square[:, :, :new_h, :new_w] = resized.flip(1) * 255.0
    return square, ratio


def anchor_grid(
    size: int = INPUT_SIZE, strides: Sequence[int] = STRIDES, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each output row's grid cell ``(A, 2)`` as x, y and its stride ``(A, 1)``.

    Rows run over the stride-8 grid, then 16, then 32; within a grid row by row (y), and
    within a row left to right (x).
    """
    cells, steps = [], []
    for stride in strides:
        count = size // stride
        ys, xs = torch.meshgrid(
            torch.arange(count, device=device), torch.arange(count, device=device), indexing="ij"
        )
        cells.append(torch.stack([xs, ys], dim=-1).reshape(-1, 2))
        steps.append(torch.full((count * count, 1), stride, device=device))
    return torch.cat(cells).float(), torch.cat(steps).float()


def decode(raw: torch.Tensor, size: int = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode YOLOX's raw rows into boxes and per-class scores.

    Args:
        raw: float32 ``(N, A, 5 + C)``: x, y offsets in cells, log width and height in
            strides, objectness and C class probabilities (already sigmoided, 0-1).
        size: the square the rows belong to (A must be its rows for :data:`STRIDES`).

    Returns:
        Boxes ``(N, A, 4)`` as x0, y0, x1, y1 in the square's pixels, and scores
        ``(N, A, C)`` = objectness x class probability.
    """
    cells, strides = anchor_grid(size, device=raw.device)
    if raw.shape[1] != cells.shape[0]:
        raise ValueError(
            f"YOLOX output has {raw.shape[1]} rows; a {size} square has {cells.shape[0]}"
        )
    centre = (raw[..., :2] + cells) * strides
    half = torch.exp(raw[..., 2:4]) * strides / 2
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    return boxes, raw[..., 4:5] * raw[..., 5:]


def _iou_matrix(boxes: torch.Tensor) -> torch.Tensor:
    """The ``(K, K)`` intersection-over-union of boxes ``(K, 4)`` (an empty union gives 0)."""
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=-1)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: return the indices kept, highest score first.

    Going from the highest score down, a box is kept unless it overlaps a box already kept by
    more than ``iou_threshold`` (IoU). Equal scores keep their input order.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    # A loop over rows: cheap on the CPU, slow as GPU launches, so the matrix comes over.
    overlaps = (_iou_matrix(boxes[order]) > iou_threshold).cpu()
    dropped = torch.zeros(order.shape[0], dtype=torch.bool)
    keep: list[int] = []
    for row in range(order.shape[0]):
        if dropped[row]:
            continue
        keep.append(row)
        dropped |= overlaps[row]
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware NMS: boxes only suppress boxes of their own class; indices kept, best first.

    Each class's boxes are shifted to a region of their own, far from every other class's,
    so one :func:`nms` pass never compares boxes of two classes.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    span = float((boxes.max() - boxes.min()).item()) + 1.0
    shifted = boxes - boxes.min() + (classes.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def tile_layout(height: int, width: int, tiles: int) -> list[tuple[int, int, int, int]]:
    """Return ``tiles x tiles`` overlapping tiles covering a frame, as x0, y0, x1, y1.

    Tiles are ``1 / tiles`` of the frame plus :data:`TILE_OVERLAP` of that on each side, so
    neighbours overlap by a quarter of a tile; ``tiles=1`` gives the whole frame.
    """

    def spans(length: int) -> list[tuple[int, int]]:
        if tiles == 1:
            return [(0, length)]
        side = min(length, math.ceil(length / (tiles - (tiles - 1) * TILE_OVERLAP)))
        starts = [round(i * (length - side) / (tiles - 1)) for i in range(tiles)]
        return [(start, start + side) for start in starts]

    return [(x0, y0, x1, y1) for y0, y1 in spans(height) for x0, x1 in spans(width)]


class YoloxDetector:
    """YOLOX-Nano on onnxruntime (CPU), with decoding, NMS and tiling in PyTorch."""

    def __init__(self, path: Path) -> None:
        import onnxruntime  # type: ignore[import-untyped]

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings go to stderr, not logging
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelSetupError(f"cannot load YOLOX-Nano from {path}: {exc}") from exc
        (graph_input,) = self._session.get_inputs()
        if list(graph_input.shape) != [1, 3, INPUT_SIZE, INPUT_SIZE]:
            raise ModelSetupError(
                f"{path}: YOLOX-Nano takes [1, 3, {INPUT_SIZE}, {INPUT_SIZE}], this graph "
                f"takes {graph_input.shape}"
            )
        self._input = graph_input.name

    def raw(self, square: torch.Tensor) -> torch.Tensor:
        """Run the network on one ``(1, 3, 416, 416)`` BGR 0-255 square; ``(1, 3549, 85)``."""
        array: np.ndarray[Any, Any] = square.detach().to("cpu", torch.float32).numpy()
        (out,) = self._session.run(None, {self._input: np.ascontiguousarray(array)})
        return torch.from_numpy(out).to(square.device)

    def detect(
        self,
        image: torch.Tensor,
        *,
        threshold: float,
        classes: Sequence[int] | None = None,
        tiles: int = 1,
        iou_threshold: float = NMS_IOU,
    ) -> ObjectBoxes:
        """Return the objects in an image, in its pixels, highest score first.

        Args:
            image: float32 ``(3, H, W)`` sRGB values in 0-1 (clip HDR frames first).
            threshold: the lowest score (objectness x class probability) kept.
            classes: the COCO class ids kept (``None``: all). Each row's best class is taken
                among these only, so a "cup" row is not lost to a "bowl" guess.
            tiles: 1 looks at the whole frame; ``n`` > 1 also at ``n x n`` overlapping tiles.
            iou_threshold: boxes of one class overlapping more than this are merged.
        """
        _, height, width = image.shape
        windows = [(0, 0, width, height)]
        if tiles > 1:
            windows += tile_layout(height, width, tiles)
        boxes, scores, labels = [], [], []
        for x0, y0, x1, y1 in windows:
            square, ratio = letterbox(image[:, y0:y1, x0:x1])
            found_boxes, class_scores = decode(self.raw(square))
            found_boxes, class_scores = found_boxes[0], class_scores[0]
            if classes is not None:
                keep_classes = torch.tensor(list(classes), device=image.device)
                class_scores = class_scores[:, keep_classes]
            best, best_index = class_scores.max(dim=1)
            label = best_index if classes is None else keep_classes[best_index]
            keep = best >= threshold
            window_boxes, window_scores, window_labels = (
                found_boxes[keep] / ratio,
                best[keep],
                label[keep],
            )
            if (x0, y0, x1, y1) != (0, 0, width, height):
                inside = _clear_of_inner_edges(window_boxes, x0, y0, x1, y1, height, width)
                shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=image.device)
                window_boxes = window_boxes[inside] + shift
                window_scores, window_labels = window_scores[inside], window_labels[inside]
            boxes.append(window_boxes)
            scores.append(window_scores)
            labels.append(window_labels)
        found = ObjectBoxes(torch.cat(boxes), torch.cat(scores), torch.cat(labels))
        if len(found) > MAX_CANDIDATES:
            found = found.select(torch.topk(found.scores, MAX_CANDIDATES).indices)
        found = found.select(batched_nms(found.boxes, found.scores, found.classes, iou_threshold))
        limit = torch.tensor([width, height, width, height], dtype=torch.float32)
        clipped = torch.minimum(found.boxes.clamp(min=0.0), limit.to(found.boxes.device))
        return ObjectBoxes(clipped, found.scores, found.classes)


def _clear_of_inner_edges(
    boxes: torch.Tensor, x0: int, y0: int, x1: int, y1: int, height: int, width: int
) -> torch.Tensor:
    """Which boxes (tile pixels) stay clear of the tile's edges that lie inside the frame."""
    margin = TILE_EDGE_MARGIN * max(x1 - x0, y1 - y0)
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        keep &= boxes[:, 0] >= margin
    if y0 > 0:
        keep &= boxes[:, 1] >= margin
    if x1 < width:
        keep &= boxes[:, 2] <= (x1 - x0) - margin
    if y1 < height:
        keep &= boxes[:, 3] <= (y1 - y0) - margin
    return keep
