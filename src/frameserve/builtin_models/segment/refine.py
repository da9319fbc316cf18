"""Refining SAM's mask to the plate's edges, with the plate's half of the work done once per frame.

The fast guided filter (:mod:`frameserve.networks.guided_filter`: He and Sun's solve at a low
resolution, applied to the full-resolution plate) fits, per window, ``q = A . I + b``. With a
colour guide, ``A = (Sigma + eps I)^-1 cov(I, p)``: the guide's 3x3 window covariance and its
inverse depend only on the plate, and are most of the solve's cost. :class:`PlateGuide` holds
them for one frame (kept beside the frame's embedding), so a new click on the same frame only
pays for the terms that involve the mask::

    guide = PlateGuide.from_plate(plate, solve_size=(288, 512), radius=3, eps=1e-4)
    matte = guide.refine(probability_small, plate)      # (1, H, W), the plate's edges

The result equals :func:`~frameserve.networks.guided_filter.solve_guided_filter` followed by
:func:`~frameserve.networks.guided_filter.apply_guided_filter` (tested), except that the
full-resolution apply runs only inside the box where the matte is not 0
(:meth:`PlateGuide.refine_region`): an object that fills a tenth of a 4K frame costs a tenth
of the apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from frameserve.networks.guided_filter import (
    GuidedFilterCoefficients,
    apply_guided_filter,
    box_mean,
)

__all__ = ["PlateGuide"]

_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
#: Matte values at or below this, at the solve size, count as 0 (outside the refined box).
ZERO = 1e-3
#: The refined box reaches this many solve pixels past the last value above :data:`ZERO`.
BOX_MARGIN = 2


@dataclass(frozen=True)
class PlateGuide:
    """The plate's share of a colour guided filter solve, at the solve size.

    Attributes:
        centred: ``(3, h, w)`` the guide minus its mean colour.
        centre: ``(3, 1, 1)`` that mean colour.
        mean: ``(3, h, w)`` window means of ``centred``.
        inverse: ``(6, h, w)`` the symmetric inverse of each window's ``Sigma + eps I``
            (entries 00, 01, 02, 11, 12, 22).
        radius: the window's half size at the solve size.
    """

    centred: torch.Tensor
    centre: torch.Tensor
    mean: torch.Tensor
    inverse: torch.Tensor
    radius: int

    @classmethod
    def from_plate(
        cls, plate: torch.Tensor, *, solve_size: tuple[int, int], radius: int, eps: float
    ) -> PlateGuide:
        """Shrink ``plate`` ``(3, H, W)`` (sRGB 0-1; NaN as 0, clamped) and solve its half."""
        guide = plate
        if tuple(plate.shape[1:]) != solve_size:
            guide = F.interpolate(plate[None], size=solve_size, mode="bilinear", antialias=True)[0]
        guide = torch.nan_to_num(guide.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
        centre = guide.mean(dim=(1, 2), keepdim=True)
        g = guide - centre
        mean = box_mean(g, radius)
        products = torch.stack([g[i] * g[j] for i, j in _PAIRS])
        means = torch.stack([mean[i] * mean[j] for i, j in _PAIRS])
        s00, s01, s02, s11, s12, s22 = (box_mean(products, radius) - means).unbind(0)
        s00, s11, s22 = s00 + eps, s11 + eps, s22 + eps
        c00 = s11 * s22 - s12 * s12
        c01 = s02 * s12 - s01 * s22
        c02 = s01 * s12 - s02 * s11
        c11 = s00 * s22 - s02 * s02
        c12 = s01 * s02 - s00 * s12
        c22 = s00 * s11 - s01 * s01
        determinant = s00 * c00 + s01 * c01 + s02 * c02
        inverse = torch.stack([c00, c01, c02, c11, c12, c22]) / determinant
        return cls(centred=g, centre=centre, mean=mean, inverse=inverse, radius=radius)

    @property
    def size(self) -> tuple[int, int]:
        """The solve size ``(h, w)``."""
        return int(self.centred.shape[1]), int(self.centred.shape[2])

    def coefficients(self, source: torch.Tensor) -> GuidedFilterCoefficients:
        """Solve the filter of ``source`` ``(1, h, w)`` (a 0-1 matte at the solve size)."""
        p = source.float() - 0.5
        mean_p = box_mean(p, self.radius)
        cov = box_mean(self.centred * p, self.radius) - self.mean * mean_p
        i00, i01, i02, i11, i12, i22 = self.inverse.unbind(0)
        v0, v1, v2 = cov.unbind(0)
        slope = torch.stack(
            [
                i00 * v0 + i01 * v1 + i02 * v2,
                i01 * v0 + i11 * v1 + i12 * v2,
                i02 * v0 + i12 * v1 + i22 * v2,
            ]
        )
        offset = mean_p + 0.5 - (slope * (self.mean + self.centre)).sum(dim=0, keepdim=True)
        return GuidedFilterCoefficients(
            slope=box_mean(slope, self.radius), offset=box_mean(offset, self.radius)
        )

    def refine(self, source: torch.Tensor, plate: torch.Tensor) -> torch.Tensor:
        """Return the ``(1, H, W)`` matte: ``source``'s filter applied to the full ``plate``
        (0 outside :meth:`refine_region`'s box)."""
        values, (top, bottom, left, right) = self.refine_region(source, plate)
        matte = torch.zeros(1, int(plate.shape[1]), int(plate.shape[2]), device=values.device)
        matte[:, top:bottom, left:right] = values
        return matte

    def refine_region(
        self, source: torch.Tensor, plate: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        """Apply ``source``'s filter to the full ``plate`` only where the matte is not 0.

        The filter is first applied at the solve size; the full-resolution apply (the costly
        part at 4K) runs only inside the box, padded by :data:`BOX_MARGIN` solve pixels, of
        the solve-size values above :data:`ZERO`. Outside it the matte is 0.

        Returns:
            ``(1, h, w)`` values and their box ``(top, bottom, left, right)`` in the plate.
        """
        coefficients = self.coefficients(source)
        small = apply_guided_filter(coefficients, self.centred + self.centre, clamp=(0.0, 1.0))
        rows = torch.nonzero((small[0] > ZERO).any(dim=1)).flatten()
        cols = torch.nonzero((small[0] > ZERO).any(dim=0)).flatten()
        height, width = int(plate.shape[1]), int(plate.shape[2])
        if not len(rows):
            return torch.zeros(1, 0, 0, device=plate.device), (0, 0, 0, 0)
        sh, sw = self.size
        top = max(0, math.floor((int(rows[0]) - BOX_MARGIN) * height / sh))
        bottom = min(height, math.ceil((int(rows[-1]) + 1 + BOX_MARGIN) * height / sh))
        left = max(0, math.floor((int(cols[0]) - BOX_MARGIN) * width / sw))
        right = min(width, math.ceil((int(cols[-1]) + 1 + BOX_MARGIN) * width / sw))
        # Bilinear coefficients at the box's pixels, as F.interpolate (align_corners=False)
        # would give them over the whole frame.
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5) * (2.0 / height) - 1.0
        xs = (torch.arange(left, right, dtype=torch.float32) + 0.5) * (2.0 / width) - 1.0
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        maps = torch.cat([coefficients.slope, coefficients.offset])[None]
        sampled = F.grid_sample(
            maps, grid.to(maps.device), mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        values = sampled[3:4].clone()
        for channel in range(3):
            guide = plate[channel : channel + 1, top:bottom, left:right].to(torch.float32)
            guide = torch.nan_to_num(guide, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
            values.addcmul_(sampled[channel : channel + 1], guide)
        return values, (top, bottom, left, right)
