"""Drawing skeletons over a plate: thick line segments and dots, with their coverage.

Used by ``pose`` (the skeleton) and ``body_parts`` (the 17 keypoints). Images are float32
``(3, H, W)``; ``cover`` is float32 ``(H, W)``, set to 1 wherever something was drawn (the
drawing's alpha). Coordinates are frame pixels, continuous (the top-left pixel covers 0..1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["draw_dot", "draw_segment", "line_width"]

#: Drawn lines are this many pixels wide per this many pixels of the frame's longer side.
LINE_WIDTH_PER = 600


def line_width(height: int, width: int) -> int:
    """Line width in pixels for a frame: ``max(2, longer side / 600)``."""
    return max(2, round(max(height, width) / LINE_WIDTH_PER))


def _span(start: float, end: float, length: int) -> tuple[int, int]:
    return max(0, math.floor(start)), min(length, math.ceil(end))


def draw_segment(
    rgb: torch.Tensor,
    cover: torch.Tensor,
    start: Sequence[float],
    end: Sequence[float],
    width: float,
    colour: Sequence[float],
) -> None:
    """Paint the segment ``start``-``end`` ``width`` pixels wide (round caps), in place."""
    _, height, frame_width = rgb.shape
    radius = width / 2
    (x0, y0), (x1, y1) = start, end
    left, right = _span(min(x0, x1) - radius, max(x0, x1) + radius, frame_width)
    top, bottom = _span(min(y0, y1) - radius, max(y0, y1) + radius, height)
    if left >= right or top >= bottom:
        return
    xs = torch.arange(left, right, device=rgb.device, dtype=torch.float32) + 0.5
    ys = torch.arange(top, bottom, device=rgb.device, dtype=torch.float32) + 0.5
    px, py = xs[None, :] - x0, ys[:, None] - y0
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = ((px * dx + py * dy) / length2).clamp(0.0, 1.0) if length2 > 0 else px * 0.0
    inside = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= radius * radius
    _paint(rgb, cover, top, bottom, left, right, inside, colour)


def draw_dot(
    rgb: torch.Tensor,
    cover: torch.Tensor,
    centre: Sequence[float],
    radius: float,
    colour: Sequence[float],
) -> None:
    """Paint a filled disc of ``radius`` pixels at ``centre``, in place."""
    draw_segment(rgb, cover, centre, centre, 2 * radius, colour)


def _paint(
    rgb: torch.Tensor,
    cover: torch.Tensor,
    top: int,
    bottom: int,
    left: int,
    right: int,
    inside: torch.Tensor,
    colour: Sequence[float],
) -> None:
    paint = torch.tensor(list(colour), dtype=rgb.dtype, device=rgb.device)[:, None, None]
    region = rgb[:, top:bottom, left:right]
    region.copy_(torch.where(inside, paint, region))
    cover[top:bottom, left:right][inside] = 1.0
