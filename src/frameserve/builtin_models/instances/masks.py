"""The instances' masks combined into an ID matte and one matte, refined to the plate's edges.

Segment Anything predicts each mask on a 256 x 256 grid over the frame's longer side (SAM's
1024 square, 4 pixels per cell), so at 4K one cell is 15 pixels: the mask's own edge, its
logits upscaled bilinearly and put through a sigmoid, is smooth where the plate is detailed
and about 20 pixels wide (the astronaut at 2160 x 2160, 2% to 98%). The combined
matte is therefore refined like ``person_matte``'s: a fast guided filter
(:mod:`frameserve.networks.guided_filter`) fits, in windows ``snap`` cells wide, a linear map
from the plate's colours to the matte at a working resolution (longer side
:data:`SOLVE_SIDE`), and applies it to the full-resolution plate, so edges follow the plate;
``softness`` then sets the width of the transition. The ID matte is the instance with the
highest logit wherever the refined matte is above 0.5, so the two always agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from frameserve.networks.guided_filter import apply_guided_filter, solve_guided_filter

__all__ = ["MASK_GRID", "SOLVE_SIDE", "InstanceMasks", "shape_edge"]

#: Cells of Segment Anything's low-resolution masks along the frame's longer side.
MASK_GRID = 256
#: The guided filter is solved at this longer side (or the frame's, when smaller).
SOLVE_SIDE = 512
#: The guided filter's regularisation (guide values 0-1): edges whose contrast is well below
#: sqrt(EDGE_EPS) are smoothed over instead of followed.
EDGE_EPS = 1e-4


class InstanceMasks:
    """The instances' mask logits folded together, one instance at a time.

    Only two full-size planes are kept whatever the number of instances: the highest logit
    seen at each pixel and which instance gave it.

    Attributes:
        areas: pixels inside each instance's own mask (logit > 0; overlaps count for each).
        mask_scores: Segment Anything's predicted IoU of each mask.
    """

    def __init__(self, height: int, width: int, device: torch.device) -> None:
        self._best = torch.full((height, width), -torch.inf, device=device)
        self._owner = torch.zeros((height, width), dtype=torch.int32, device=device)
        self.areas: list[int] = []
        self.mask_scores: list[float] = []

    def add(self, logits: torch.Tensor, mask_score: float) -> None:
        """Fold in the next instance's ``(H, W)`` mask logits (> 0 inside)."""
        self.areas.append(int((logits > 0).sum()))
        self.mask_scores.append(mask_score)
        higher = logits > self._best
        self._best = torch.where(higher, logits, self._best)
        self._owner.masked_fill_(higher, len(self.areas))

    def finish(
        self, plate: torch.Tensor, *, snap: float, softness: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ID matte and the combined matte, float32 ``(H, W)`` each.

        Args:
            plate: float32 ``(3, H, W)`` sRGB values in 0-1, the guided filter's guide.
            snap: how far an edge may move to meet an edge in the plate, in mask cells
                (the guided filter's radius); 0 keeps Segment Anything's own edge.
            softness: width of the matte's transition in refined values around 0.5
                (:func:`shape_edge`); 0 is a hard edge.

        Returns:
            ``ids``: 0 where the matte is 0.5 or less, else the 1-based number of the instance
            with the highest logit there; ``matte``: 0-1.
        """
        soft = torch.sigmoid(self._best)  # 0 where no instance was added (-inf)
        if snap > 0 and self.areas:
            soft = _refine(soft, plate, snap)
        matte = shape_edge(soft, 0.5, softness)
        ids = torch.where(matte > 0.5, self._owner, 0).to(torch.float32)
        return ids, matte


def _refine(soft: torch.Tensor, plate: torch.Tensor, snap: float) -> torch.Tensor:
    """The ``(H, W)`` matte refined by the guided filter (see the module docstring)."""
    _, height, width = plate.shape
    scale = min(1.0, SOLVE_SIDE / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    radius = max(1, round(snap * max(size) / MASK_GRID))
    guide, source = plate, soft[None]
    if size != (height, width):
        guide = F.interpolate(plate[None], size=size, mode="bilinear", antialias=True)[0]
        source = F.interpolate(source[None], size=size, mode="bilinear", antialias=True)[0]
    coefficients = solve_guided_filter(guide, source, radius=radius, eps=EDGE_EPS)
    return apply_guided_filter(coefficients, plate, clamp=(0.0, 1.0))[0]


def shape_edge(values: torch.Tensor, threshold: float, softness: float) -> torch.Tensor:
    """Map soft matte values to a matte whose edge lies at ``threshold``.

    Values below ``threshold - softness / 2`` become 0, above ``threshold + softness / 2``
    become 1, with a smooth step between; ``softness`` 0 gives a hard edge. Returns float32
    in 0-1, the shape of ``values``.
    """
    if softness <= 0:
        return (values > threshold).to(torch.float32)
    ramp = ((values - threshold) / softness + 0.5).clamp_(0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)
