"""The fast guided filter: upsample a low-resolution matte so its edges follow a full-size plate.

He, Sun and Tang's guided filter (ECCV 2010, PAMI 2013) fits, in every window, a linear map
from the guide's colours to the input (``q = A . I + b``); where the window straddles an edge in
the guide, the fitted map turns that edge into an edge of the output. The *fast* variant (He and
Sun, arXiv 1505.00996) solves for ``A`` and ``b`` at a low resolution, where the window is
cheap, and applies them to the full-resolution guide, so the output's edges are as sharp as
the plate's while the solve costs only the low resolution::

    coefficients = solve_guided_filter(guide_small, matte_small, radius=8, eps=1e-3)
    matte = apply_guided_filter(coefficients, plate)     # (1, H, W), edges from the plate

Window means use box filters built from cumulative sums (cost independent of the radius),
computed on centred values so that float32 variances of nearly flat windows stay accurate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["GuidedFilterCoefficients", "apply_guided_filter", "box_mean", "solve_guided_filter"]


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Return the mean of ``x`` over a ``(2 radius + 1)`` square window around every pixel.

    Args:
        x: ``(C, H, W)`` float tensor (any dtype; the sums are taken in its own precision).
        radius: the window's half size in pixels (0 returns ``x``).

    Near the borders the window is cut to the frame and the mean is over what remains, so a
    constant image stays constant everywhere.
    """
    if radius <= 0:
        return x
    return _box_mean_along(_box_mean_along(x, radius, dim=1), radius, dim=2)


def _box_mean_along(x: torch.Tensor, radius: int, *, dim: int) -> torch.Tensor:
    length = x.shape[dim]
    radius = min(radius, length - 1)  # a window past both ends is the whole line
    if radius <= 0:
        return x
    # sums[k] = x[0] + ... + x[k]; the window [i - radius, i + radius] cut to the line sums to
    # sums[min(i + radius, last)] - sums[i - radius - 1] (nothing to subtract for i <= radius).
    sums = x.cumsum(dim)
    out = torch.empty_like(sums)
    last = length - 1
    head = radius + 1  # i < head: the window starts at 0
    reach = min(head, length - radius)  # i < reach: the window ends at i + radius
    out.narrow(dim, 0, reach).copy_(sums.narrow(dim, radius, reach))
    if head > reach:
        out.narrow(dim, reach, head - reach).copy_(
            sums.narrow(dim, last, 1).expand(_sized(x.shape, dim, head - reach))
        )
    middle = length - radius - head  # head <= i < length - radius: both ends inside
    if middle > 0:
        torch.sub(
            sums.narrow(dim, head + radius, middle),
            sums.narrow(dim, 0, middle),
            out=out.narrow(dim, head, middle),
        )
    start = max(head, length - radius)  # i >= start: the window ends at the last element
    if start < length:
        torch.sub(
            sums.narrow(dim, last, 1),
            sums.narrow(dim, start - radius - 1, length - start),
            out=out.narrow(dim, start, length - start),
        )
    index = torch.arange(length, device=x.device)
    count = (index + radius + 1).clamp(max=length) - (index - radius).clamp(min=0)
    view = [1] * x.dim()
    view[dim] = length
    return out.mul_(count.to(x.dtype).reciprocal().view(view))


def _sized(shape: torch.Size, dim: int, size: int) -> list[int]:
    resized = list(shape)
    resized[dim] = size
    return resized


@dataclass(frozen=True)
class GuidedFilterCoefficients:
    """The window-averaged linear map ``q = slope . I + offset``, at the solve resolution.

    Attributes:
        slope: ``(C, h, w)`` float32, one coefficient per guide channel.
        offset: ``(1, h, w)`` float32.
    """

    slope: torch.Tensor
    offset: torch.Tensor


def solve_guided_filter(
    guide: torch.Tensor, source: torch.Tensor, *, radius: int, eps: float
) -> GuidedFilterCoefficients:
    """Fit the guided filter of ``source`` by ``guide`` (both at the solve resolution).

    Args:
        guide: ``(C, h, w)`` float, C = 1 (grey guide) or 3 (colour guide, a 3x3 covariance per
            window); values around 0-1.
        source: ``(1, h, w)`` float, the image to filter (here: a matte, 0-1).
        radius: window half size in pixels of the solve resolution.
        eps: regularisation: larger values smooth more; edges whose contrast (standard
            deviation in the window) is well below ``sqrt(eps)`` are smoothed away.

    Returns:
        The window-averaged coefficients, to apply at any resolution with
        :func:`apply_guided_filter`.
    """
    channels = guide.shape[0]
    if channels not in (1, 3):
        raise ValueError(f"the guide must have 1 or 3 channels, got {channels}")
    if source.shape[0] != 1 or source.shape[1:] != guide.shape[1:]:
        raise ValueError(
            f"source {tuple(source.shape)} must be (1, h, w) at the guide's size "
            f"{tuple(guide.shape[1:])}"
        )
    # Centred values keep the running sums small, so float32 sums stay accurate to about 1e-6
    # (variances are differences of such sums; eps is far above that).
    centre_g = guide.mean(dim=(1, 2), keepdim=True)
    g = guide.to(torch.float32) - centre_g
    p = source.to(torch.float32) - 0.5
    mean_g = box_mean(g, radius)
    mean_p = box_mean(p, radius)
    cov_gp = box_mean(g * p, radius) - mean_g * mean_p
    if channels == 1:
        var = box_mean(g * g, radius) - mean_g * mean_g
        slope = cov_gp / (var + eps)
    else:
        slope = _solve_3x3(g, mean_g, cov_gp, radius, eps)
    # Back to uncentred values: q = a . (I - centre) + b + 0.5 = a . I + (b + 0.5 - a . centre).
    offset = mean_p + 0.5 - (slope * (mean_g + centre_g)).sum(dim=0, keepdim=True)
    return GuidedFilterCoefficients(slope=box_mean(slope, radius), offset=box_mean(offset, radius))


def _solve_3x3(
    g: torch.Tensor, mean_g: torch.Tensor, cov_gp: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """Solve (Sigma + eps I) a = cov_gp per pixel, Sigma the guide's 3x3 window covariance."""
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    products = torch.stack([g[i] * g[j] for i, j in pairs])
    means = torch.stack([mean_g[i] * mean_g[j] for i, j in pairs])
    s00, s01, s02, s11, s12, s22 = (box_mean(products, radius) - means).unbind(0)
    s00 = s00 + eps
    s11 = s11 + eps
    s22 = s22 + eps
    # The inverse of a symmetric 3x3 matrix from its cofactors.
    c00 = s11 * s22 - s12 * s12
    c01 = s02 * s12 - s01 * s22
    c02 = s01 * s12 - s02 * s11
    c11 = s00 * s22 - s02 * s02
    c12 = s01 * s02 - s00 * s12
    c22 = s00 * s11 - s01 * s01
    determinant = s00 * c00 + s01 * c01 + s02 * c02
    v0, v1, v2 = cov_gp.unbind(0)
    return (
        torch.stack(
            [
                c00 * v0 + c01 * v1 + c02 * v2,
                c01 * v0 + c11 * v1 + c12 * v2,
                c02 * v0 + c12 * v1 + c22 * v2,
            ]
        )
        / determinant
    )


def apply_guided_filter(
    coefficients: GuidedFilterCoefficients,
    guide: torch.Tensor,
    *,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Apply solved coefficients to a full-resolution guide: ``(1, H, W)`` float32.

    Args:
        coefficients: from :func:`solve_guided_filter` (any smaller resolution).
        guide: ``(C, H, W)`` float, the same channels the solve saw.
        clamp: clamp each guide channel to this range first (the range the solve's guide was
            clamped to; NaN becomes the low end), one channel at a time rather than as a full
            copy.

    The coefficients are upsampled bilinearly one channel at a time, so the memory beyond the
    output is two single-channel frames at the full size.
    """
    size = (int(guide.shape[1]), int(guide.shape[2]))
    result = _upsample(coefficients.offset, size)
    for channel in range(guide.shape[0]):
        slope = _upsample(coefficients.slope[channel : channel + 1], size)
        values = guide[channel : channel + 1].to(torch.float32)
        if clamp is not None:
            low, high = clamp
            values = torch.nan_to_num(values, nan=low, posinf=high, neginf=low).clamp_(low, high)
        result.addcmul_(slope, values)
    return result


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[1:]) == size:
        return x.clone()
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
