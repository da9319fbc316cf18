"""Frame helpers the matte models share (``person_matte``, ``cutout``): clean and resize.

Each works on one ``(C, H, W)`` float tensor and returns it unchanged when nothing is to do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clean_unit", "resize", "shrink"]


def clean_unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN as 0 and every value clamped to 0-1 (a copy)."""
    return torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def shrink(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(C, H, W)`` to ``size`` bilinearly, antialiased (area-like) where it shrinks."""
    if tuple(x.shape[1:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=True)[0]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(C, H, W)`` to ``size`` bilinearly (for smooth, low-resolution mattes)."""
    if tuple(x.shape[1:]) == size:
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
