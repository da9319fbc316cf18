"""Matte edge controls: threshold and softness, and grow/choke by whole pixels.

Both work on ``(1, H, W)`` float32 mattes (0 = background, 1 = person) at the full frame size.
Growing uses a square window (like Nuke's Erode (fast)), computed with a logarithmic number of
shifted maxima per axis, so its cost barely depends on the distance.
"""

from __future__ import annotations

import torch

from frameserve.plugin.knobs import FloatKnob, IntKnob

__all__ = ["EDGE_KNOBS", "grow_matte", "shape_edge"]

#: The knobs that place and shape a refined matte's edge (:func:`shape_edge`, then
#: :func:`grow_matte`), the same on every matte model (``person_matte``, ``cutout``,
#: ``segment``).
EDGE_KNOBS = (
    FloatKnob(
        "threshold",
        default=0.5,
        min=0.0,
        max=1.0,
        help="Where the edge is: the refined matte value that becomes 0.5. Lower takes more.",
    ),
    FloatKnob(
        "softness",
        default=0.5,
        min=0.0,
        max=1.0,
        help=(
            "Width of the edge's transition, in matte values around the threshold: 0 is a "
            "hard edge, 1 keeps the refined matte's own gradient."
        ),
    ),
    IntKnob(
        "grow",
        default=0,
        min=-200,
        max=200,
        help="Grow the matte by this many pixels; negative values choke (shrink) it.",
    ),
)


def shape_edge(values: torch.Tensor, threshold: float, softness: float) -> torch.Tensor:
    """Map soft matte values to a matte whose edge lies at ``threshold``.

    Args:
        values: ``(1, H, W)`` float32, the refined network matte (about 0-1, may overshoot).
        threshold: the value that becomes 0.5, i.e. where the edge is (0-1).
        softness: the width of the transition in matte values: values below
            ``threshold - softness / 2`` become 0, above ``threshold + softness / 2`` become 1,
            with a smooth step between; 0 gives a hard (aliased) edge.

    Returns:
        ``(1, H, W)`` float32 in 0-1.
    """
    if softness <= 0:
        return (values >= threshold).to(values.dtype)
    ramp = ((values - threshold) / softness + 0.5).clamp_(0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def grow_matte(matte: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow (``pixels`` > 0) or choke (< 0) a matte by that many pixels.

    Each pixel becomes the largest (growing) or smallest (choking) value within ``|pixels|``
    pixels horizontally and vertically (a square window), so soft edges keep their profile
    and move as a whole. Beyond the frame, the edge pixels are repeated.

    Args:
        matte: ``(1, H, W)`` float tensor.
        pixels: distance in pixels; 0 returns ``matte`` unchanged.
    """
    if pixels == 0:
        return matte
    if pixels < 0:
        return -grow_matte(-matte, -pixels)
    grown = _window_max(matte, pixels, dim=-1)
    return _window_max(grown, pixels, dim=-2)


def _window_max(x: torch.Tensor, radius: int, *, dim: int) -> torch.Tensor:
    """The maximum over ``[i - radius, i + radius]`` along ``dim``, edges repeated."""
    length = x.shape[dim]
    window = 2 * radius + 1
    padded = torch.cat(
        [
            x.narrow(dim, 0, 1).expand(_sized(x.shape, dim, radius)),
            x,
            x.narrow(dim, length - 1, 1).expand(_sized(x.shape, dim, radius)),
        ],
        dim=dim,
    )
    # Doubling: after each step, spans[i] is the maximum over padded[i : i + span].
    spans = padded
    span = 1
    while span * 2 <= window:
        count = spans.shape[dim] - span
        spans = torch.maximum(spans.narrow(dim, 0, count), spans.narrow(dim, span, count))
        span *= 2
    # Two overlapping spans (span > window / 2) cover each window exactly.
    return torch.maximum(spans.narrow(dim, 0, length), spans.narrow(dim, window - span, length))


def _sized(shape: torch.Size, dim: int, size: int) -> list[int]:
    resized = list(shape)
    resized[dim] = size
    return resized
