"""The artist's prompts for Segment Anything: clicks and a box from knobs, strokes from hints.

Everything here ends in image pixels (x right, y down, origin at the frame's top-left corner),
the coordinates :mod:`frameserve.networks.sam` takes. Knobs are in Nuke's coordinates: pixels
with the origin at the frame's *bottom-left* corner and y up, so ``y_image = height - y_nuke``
(x is the same).

- ``points``: ``"x,y,+ x,y,-"``, clicks separated by spaces or semicolons; ``+`` (or ``1``)
  includes, ``-`` (or ``0``) excludes; a click without a sign includes.
- the box: ``box_left``, ``box_bottom``, ``box_right``, ``box_top`` (Nuke's BBox order); off
  while its width or height is zero.
- ``hints`` (optional input, the convention of ``person_matte``): channel 0 (red) painted
  where the object *is*, channel 1 (green) where it is *not* (a third channel is ignored).
  Every painted stroke (a connected area) gives clicks spread along it (include or exclude);
  a solid painted *blob* (it fills at least half of its bounding box, and that box is at least
  :data:`BLOB_MIN_SIDE` of the frame's short side) in the include channel stands for a box
  around the object, when no box knob is set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from frameserve.errors import FrameError, KnobError

__all__ = [
    "BLOB_MIN_SIDE",
    "MAX_STROKE_POINTS",
    "Prompt",
    "box_from_knobs",
    "hint_prompt",
    "parse_points",
]

#: A solid include blob whose bounding box is at least this fraction of the frame's short side
#: stands for a box prompt.
BLOB_MIN_SIDE = 0.05
#: At most this many clicks are taken from one painted stroke.
MAX_STROKE_POINTS = 3
#: Hints are analysed on a copy whose longest side is at most this many pixels.
HINT_ANALYSIS_SIZE = 512
#: Strokes smaller than this fraction of the analysed area are specks, ignored.
MIN_STROKE_AREA = 2e-5

_CLICK = re.compile(r"^([-+0-9.eE]+),([-+0-9.eE]+)(?:,([-+01]|include|exclude))?$")


@dataclass(frozen=True)
class Prompt:
    """Clicks and a box in image pixels.

    Attributes:
        points: ``(N, 2)`` float32 ``(x, y)``.
        labels: ``(N,)`` int, 1 include, 0 exclude.
        box: ``(x0, y0, x1, y1)`` or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: tuple[float, float, float, float] | None

    @property
    def empty(self) -> bool:
        """Whether there is nothing to prompt with."""
        return len(self.points) == 0 and self.box is None

    @property
    def includes(self) -> bool:
        """Whether the prompt says where the object is (an include click or a box)."""
        return self.box is not None or bool((self.labels == 1).any())

    def merged(self, other: Prompt) -> Prompt:
        """Return both prompts' clicks; this prompt's box, else ``other``'s."""
        return Prompt(
            points=np.concatenate([self.points, other.points]).astype(np.float32),
            labels=np.concatenate([self.labels, other.labels]).astype(np.int64),
            box=self.box if self.box is not None else other.box,
        )


def no_prompt() -> Prompt:
    """Return an empty prompt."""
    return Prompt(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), None)


def parse_points(text: str, height: int) -> Prompt:
    """Parse the ``points`` knob (Nuke coordinates) into clicks in image pixels.

    Raises:
        KnobError: a click is not ``x,y`` or ``x,y,+`` / ``x,y,-``.
    """
    compact = re.sub(r"\s*,\s*", ",", text.strip())  # "x, y, +" is one click
    joined = [part for part in re.split(r"[;\s]+", compact) if part]
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    for click in joined:
        match = _CLICK.match(click)
        if match is None:
            raise KnobError(
                f"knob 'points': {click!r} is not a click; write x,y,+ (include) or x,y,- "
                "(exclude) in Nuke pixel coordinates, separated by spaces, e.g. '960,540,+ "
                "200,80,-'"
            )
        try:
            x, y = float(match.group(1)), float(match.group(2))
        except ValueError:
            raise KnobError(f"knob 'points': {click!r} holds a number that is not one") from None
        sign = match.group(3) or "+"
        points.append((x, height - y))
        labels.append(0 if sign in ("-", "0", "exclude") else 1)
    return Prompt(np.array(points, np.float32).reshape(-1, 2), np.array(labels, np.int64), None)


def box_from_knobs(
    left: float, bottom: float, right: float, top: float, height: int
) -> tuple[float, float, float, float] | None:
    """Return the box knobs (Nuke coordinates) as ``(x0, y0, x1, y1)`` image pixels, or None.

    The box is off while its width or height is zero; corners given the wrong way round are
    put in order.
    """
    x0, x1 = sorted((left, right))
    y0, y1 = sorted((bottom, top))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return (x0, height - y1, x1, height - y0)


def hint_prompt(hints: torch.Tensor, height: int, width: int) -> Prompt:
    """Turn painted hints ``(C >= 2, H, W)`` (include, exclude, ...; 0-1) into clicks and a box.

    Raises:
        FrameError: the hints are not the image's size.
    """
    if tuple(hints.shape[1:]) != (height, width):
        raise FrameError(
            f"input 'hints' of model 'segment' is {hints.shape[2]}x{hints.shape[1]}; it must "
            f"be the size of 'image', {width}x{height}"
        )
    scale = min(1.0, HINT_ANALYSIS_SIZE / max(height, width))
    small = torch.nan_to_num(hints[:2].detach().float().cpu(), nan=0.0).clamp(0.0, 1.0)
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        small = F.interpolate(small[None], size=size, mode="area")[0]
    include = (small[0] > 0.25) & ~(small[1] > 0.25)
    exclude = small[1] > 0.25
    to_image = (width / small.shape[2], height / small.shape[1])
    prompt = no_prompt()
    for mask, label in ((include.numpy(), 1), (exclude.numpy(), 0)):
        points, box = _strokes(mask.astype(np.uint8), label)
        if len(points):
            pts = (np.array(points, np.float32) + 0.5) * np.array(to_image, np.float32)
            prompt = prompt.merged(Prompt(pts, np.full(len(pts), label, np.int64), None))
        if box is not None and prompt.box is None:
            x0, y0, x1, y1 = box
            prompt = Prompt(
                prompt.points,
                prompt.labels,
                (x0 * to_image[0], y0 * to_image[1], x1 * to_image[0], y1 * to_image[1]),
            )
    return prompt


def _strokes(
    mask: np.ndarray, label: int
) -> tuple[list[tuple[float, float]], tuple[float, float, float, float] | None]:
    """Clicks along every stroke of a binary mask, and the box of its largest solid blob."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    points: list[tuple[float, float]] = []
    best_box: tuple[float, float, float, float] | None = None
    best_area = 0
    min_area = max(1, int(MIN_STROKE_AREA * mask.size))
    short_side = min(mask.shape)
    for index in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[index])
        if area < min_area:
            continue
        solid = area >= 0.5 * w * h and min(w, h) >= BLOB_MIN_SIDE * short_side
        if label == 1 and solid and area > best_area:
            best_area, best_box = area, (float(x), float(y), float(x + w), float(y + h))
        points.extend(_spread(components == index, solid))
    return points, best_box


def _spread(stroke: np.ndarray, solid: bool) -> list[tuple[float, float]]:
    """Up to :data:`MAX_STROKE_POINTS` clicks on a stroke: its deepest point for a blob,
    points spread along its length for a line."""
    if solid:
        inside = cv2.distanceTransform(stroke.astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
        return [(float(x), float(y))]
    ys, xs = np.nonzero(stroke)
    # Order the stroke's pixels along its main direction and take evenly spaced ones.
    coords = np.stack([xs, ys], axis=1).astype(np.float32)
    centred = coords - coords.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(centred @ direction)
    count = min(MAX_STROKE_POINTS, len(order))
    picks = order[np.linspace(0, len(order) - 1, count + 2)[1:-1].round().astype(int)]
    return [(float(coords[i, 0]), float(coords[i, 1])) for i in picks]
