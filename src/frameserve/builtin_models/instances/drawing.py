"""What the ``instances`` model draws: instance colours, boxes and their labels.

Everything is drawn into float32 sRGB-encoded tensors in place, on the frame's device; only
the label text is rendered with OpenCV, into small masks on the CPU.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np
import torch

__all__ = ["LABEL_TEXT", "colour_instances", "draw_boxes", "instance_colours"]

#: Colour of the label text (sRGB); the label's background is the instance's colour.
LABEL_TEXT = (0.0, 0.0, 0.0)
#: How much of an instance's colour covers the plate where its mask is 1 (``colours``).
COLOUR_MIX = 0.6
#: Drawn lines are this many pixels wide per this many pixels of the frame's longer side.
LINE_WIDTH_PER = 800
#: Golden-ratio hue steps: neighbouring ids get clearly different colours, never repeating.
_HUE_STEP = (math.sqrt(5) - 1) / 2


def instance_colours(count: int) -> list[tuple[float, float, float]]:
    """Return the sRGB colour of instances 1..``count`` (saturated, bright, distinct hues)."""
    return [
        colorsys.hsv_to_rgb((0.08 + index * _HUE_STEP) % 1.0, 0.75, 1.0) for index in range(count)
    ]


def colour_instances(rgb: torch.Tensor, ids: torch.Tensor, matte: torch.Tensor, count: int) -> None:
    """Tint each instance with its colour over a ``(3, H, W)`` plate, in place.

    Args:
        rgb: the plate, float32 ``(3, H, W)``.
        ids: float32 ``(H, W)`` instance ids (0 outside every instance).
        matte: float32 ``(H, W)`` combined matte, 0-1: how much each pixel is tinted
            (:data:`COLOUR_MIX` of the instance's colour where it is 1).
        count: how many instances there are.
    """
    if count == 0:
        return
    palette = torch.tensor(
        [(0.0, 0.0, 0.0), *instance_colours(count)], dtype=rgb.dtype, device=rgb.device
    )
    colour = palette[ids.long().clamp(0, count)].permute(2, 0, 1)  # (3, H, W)
    mix = (matte * COLOUR_MIX).to(rgb.dtype)
    rgb.mul_(1.0 - mix).add_(colour * mix)


def draw_boxes(
    rgb: torch.Tensor, cover: torch.Tensor, boxes: list[list[float]], labels: list[str]
) -> None:
    """Draw each box and its label into a ``(3, H, W)`` image, in place.

    Box ``k`` is drawn in instance ``k + 1``'s colour, its label (text on a patch of that
    colour) just above its top-left corner, or inside the box when there is no room above.
    Lines are ``max(1, longer side / 800)`` pixels wide. ``cover``, float32 ``(H, W)``, is set
    to 1 wherever something was drawn.
    """
    _, height, width = rgb.shape
    line = max(1, round(max(height, width) / LINE_WIDTH_PER))
    colours = instance_colours(len(boxes))
    for box, label, colour in zip(boxes, labels, colours, strict=True):
        paint = torch.tensor(colour, dtype=rgb.dtype, device=rgb.device)[:, None, None]
        x0, y0, x1, y1 = (round(v) for v in box)
        for top, bottom, left, right in (
            (y0, y0 + line, x0, x1),  # top edge
            (y1 - line, y1, x0, x1),  # bottom edge
            (y0, y1, x0, x0 + line),  # left edge
            (y0, y1, x1 - line, x1),  # right edge
        ):
            _fill(rgb, cover, top, bottom, left, right, paint)
        _draw_label(rgb, cover, label, x0, y0, line, paint)


def _fill(
    rgb: torch.Tensor,
    cover: torch.Tensor,
    top: int,
    bottom: int,
    left: int,
    right: int,
    paint: torch.Tensor,
) -> None:
    """Fill a rectangle (clipped to the frame) with ``paint`` ``(3, 1, 1)``."""
    _, height, width = rgb.shape
    top, bottom = max(0, top), min(height, bottom)
    left, right = max(0, left), min(width, right)
    if top < bottom and left < right:
        rgb[:, top:bottom, left:right] = paint
        cover[top:bottom, left:right] = 1.0


def _draw_label(
    rgb: torch.Tensor,
    cover: torch.Tensor,
    text: str,
    x: int,
    y: int,
    line: int,
    paint: torch.Tensor,
) -> None:
    """Draw ``text`` on a patch of ``paint`` with its bottom-left corner at ``(x, y)``."""
    _, height, width = rgb.shape
    scale = 0.45 * line
    thickness = max(1, line)
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = 2 * line
    patch_h, patch_w = text_h + baseline + 2 * pad, text_w + 2 * pad
    glyphs = np.zeros((patch_h, patch_w), np.uint8)
    cv2.putText(
        glyphs,
        text,
        (pad, pad + text_h),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        255,
        thickness,
        cv2.LINE_AA,
    )
    top = y - patch_h if y - patch_h >= 0 else max(0, y)
    left = min(max(0, x), max(0, width - patch_w))
    bottom, right = min(height, top + patch_h), min(width, left + patch_w)
    if top >= bottom or left >= right:
        return
    ink = torch.from_numpy(glyphs[: bottom - top, : right - left]).to(rgb.device, rgb.dtype)
    ink = (ink / 255.0)[None]
    text_colour = torch.tensor(LABEL_TEXT, dtype=rgb.dtype, device=rgb.device)[:, None, None]
    rgb[:, top:bottom, left:right] = paint * (1.0 - ink) + text_colour * ink
    cover[top:bottom, left:right] = 1.0
