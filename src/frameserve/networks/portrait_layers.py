"""Small layers shared by the portrait segmentation networks (SINet, ExtremeC3Net).

Their attribute names (``conv``, ``bn``, ``act``) are the ones the published state dicts use
for these layers, so the weights load with ``strict=True``; do not rename them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BATCH_NORM_EPS",
    "ConvNormAct",
    "NormAct",
    "PlainConv",
    "Upsample",
    "upsample_bilinear",
]

#: The epsilon the authors trained most batch-norm layers with (PyTorch's default is 1e-5).
BATCH_NORM_EPS = 1e-3


class PlainConv(nn.Module):
    """A bias-free square convolution with "same" padding, stored under ``conv``."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels_in,
            channels_out,
            kernel,
            stride=stride,
            padding=(kernel - 1) // 2,
            groups=groups,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # type: ignore[no-any-return]


class NormAct(nn.Module):
    """Batch norm then a per-channel PReLU (``bn``, ``act``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BATCH_NORM_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))  # type: ignore[no-any-return]


class ConvNormAct(nn.Module):
    """A bias-free square convolution, batch norm and PReLU (``conv``, ``bn``, ``act``)."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels_in,
            channels_out,
            kernel,
            stride=stride,
            padding=(kernel - 1) // 2,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(channels_out, eps=BATCH_NORM_EPS)
        self.act = nn.PReLU(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # type: ignore[no-any-return]


def upsample_bilinear(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Bilinear upsampling by ``factor`` with aligned corners, as the networks were trained."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


class Upsample(nn.Module):
    """:func:`upsample_bilinear` as a module (it holds no weights), for ``nn.Sequential`` slots."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_bilinear(x, self.factor)
