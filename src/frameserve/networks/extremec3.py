"""ExtremeC3Net: a very light portrait segmentation network (Park et al., 2019).

Written from the paper and the layout of the published weights (clovaai/ext_portrait_segmentation,
MIT licence, Copyright NAVER Corp.); ``ExtremeC3.pth`` loads with ``strict=True``::

    net = load_extremec3(shipped_weights_path("portrait-matte", "ExtremeC3.pth"))
    logits = net(normalised)      # (N, 3, H, W) -> (N, 1, H, W); person where > 0

Input: ``(N, 3, H, W)`` float32, H and W multiples of :data:`SIZE_MULTIPLE`, channels in BGR
order, normalised as the authors trained it (see
:func:`frameserve.builtin_models.person_matte.model.normalise_for_network`). Output: one logit
per pixel at the input size.

Structure. A coarse encoder at 1/4 resolution built from *concentrated-comprehensive
convolution* modules: each reduces the channels with a 1x1 convolution and runs three
depthwise branches with growing dilation; a dilated branch first applies an asymmetric pair of
depthwise convolutions (k x 1 then 1 x k, k = 2 x dilation - 1) that fills the holes the
dilation leaves. Downsampled copies of the input are concatenated at 1/2 and 1/4. A small
full-detail branch at 1/2 resolution is added to the upsampled coarse features before the
classifier.

Attribute names. The module attributes must match the keys of the published state dict, so
some keep the authors' names: ``encoder.level1``, ``b1``/``b2``/``b3`` (batch norm + PReLU after
a concatenation), ``level2_0``/``level2``/``level3_0``/``level3``, ``c1``/``d1``/``d2``/``d3``
(reduce convolution and the three branches), ``upsample``, ``Fine`` and ``classifier``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.networks.portrait_layers import (
    BATCH_NORM_EPS,
    ConvNormAct,
    NormAct,
    PlainConv,
    Upsample,
)
from frameserve.networks.state_dicts import load_strict_file

__all__ = ["SIZE_MULTIPLE", "ExtremeC3Net", "load_extremec3"]

#: Input height and width must be multiples of this (two stride-2 steps; the network itself
#: takes multiples of 4, 32 keeps it interchangeable with SINet).
SIZE_MULTIPLE = 32

_STEM = 24  # channels after the first convolution
_LEVEL2 = 48
_LEVEL3 = 56
_DETAIL = 24
_LEVEL2_MODULES = 1  # p
_LEVEL3_MODULES = 5  # q


class DilatedBranch(nn.Module):
    """A depthwise 3x3 branch with dilation ``dilation``, then a pointwise convolution.

    With dilation above 1, an asymmetric depthwise pair (k x 1, BN, PReLU, 1 x k, BN with
    k = 2 x dilation - 1) runs first and smooths the features the dilated kernel samples.
    """

    def __init__(self, channels_in: int, channels_out: int, dilation: int) -> None:
        super().__init__()
        pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)
        dilated = nn.Conv2d(
            channels_in,
            channels_in,
            3,
            padding=dilation,
            dilation=dilation,
            groups=channels_in,
            bias=False,
        )
        if dilation == 1:
            self.conv = nn.Sequential(dilated, pointwise)
            return
        length = 2 * dilation - 1
        self.conv = nn.Sequential(
            nn.Conv2d(
                channels_in,
                channels_in,
                (length, 1),
                padding=(dilation - 1, 0),
                groups=channels_in,
                bias=False,
            ),
            nn.BatchNorm2d(channels_in),
            nn.PReLU(channels_in),
            nn.Conv2d(
                channels_in,
                channels_in,
                (1, length),
                padding=(0, dilation - 1),
                groups=channels_in,
                bias=False,
            ),
            nn.BatchNorm2d(channels_in),
            dilated,
            pointwise,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # type: ignore[no-any-return]


class ThreeBranchModule(nn.Module):
    """Reduce to a third of the channels, run three dilated branches, concatenate.

    ``stride`` 2 makes it a downsampling step (a 3x3 stride-2 reduction; BN and PReLU stored
    as ``bn`` and ``act``); otherwise the reduction is 1x1, the input is added when
    ``residual``, and BN + PReLU are stored together under ``bn``.
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        dilations: tuple[int, int, int],
        *,
        stride: int = 1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        third = channels_out // 3
        extra = channels_out - 3 * third
        self.stride = stride
        self.residual = residual
        self.c1 = PlainConv(channels_in, third, 3 if stride == 2 else 1, stride=stride)
        self.d1 = DilatedBranch(third, third + extra, dilations[0])
        self.d2 = DilatedBranch(third, third, dilations[1])
        self.d3 = DilatedBranch(third, third, dilations[2])
        self.bn: nn.Module
        if stride == 2:
            self.bn = nn.BatchNorm2d(channels_out, eps=BATCH_NORM_EPS)
            self.act = nn.PReLU(channels_out)
        else:
            self.bn = NormAct(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        combined = torch.cat([self.d1(reduced), self.d2(reduced), self.d3(reduced)], dim=1)
        if self.residual:
            combined = combined + x
        if self.stride == 2:
            return self.act(self.bn(combined))  # type: ignore[no-any-return]
        return self.bn(combined)  # type: ignore[no-any-return]


class ExtremeC3Encoder(nn.Module):
    """The coarse encoder: ``(N, 3, H, W)`` to ``(N, 112, H/4, W/4)`` features."""

    def __init__(self) -> None:
        super().__init__()
        self.level1 = ConvNormAct(3, _STEM, 3, stride=2)
        self.b1 = NormAct(_STEM + 3)
        self.level2_0 = ThreeBranchModule(_STEM + 3, _LEVEL2, (1, 2, 3), stride=2)
        self.level2 = nn.ModuleList(
            ThreeBranchModule(_LEVEL2, _LEVEL2, (1, 3, 4), residual=True)
            for _ in range(_LEVEL2_MODULES)
        )
        self.b2 = NormAct(2 * _LEVEL2 + 3)
        self.level3_0 = ThreeBranchModule(2 * _LEVEL2 + 3, _LEVEL3, (1, 3, 5))
        self.level3 = nn.ModuleList(
            ThreeBranchModule(_LEVEL3, _LEVEL3, (2, 4, 8), residual=True)
            for _ in range(_LEVEL3_MODULES)
        )
        self.b3 = NormAct(2 * _LEVEL3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = F.avg_pool2d(x, 2)
        quarter = F.avg_pool2d(half, 2)
        stem = self.b1(torch.cat([self.level1(x), half], dim=1))
        down2 = self.level2_0(stem)
        features2 = down2
        for module in self.level2:
            features2 = module(features2)
        merged2 = self.b2(torch.cat([features2, down2, quarter], dim=1))
        down3 = self.level3_0(merged2)
        features3 = down3
        for module in self.level3:
            features3 = module(features3)
        return self.b3(torch.cat([down3, features3], dim=1))  # type: ignore[no-any-return]


class ExtremeC3Net(nn.Module):
    """ExtremeC3Net with the published configuration (1 class, p=1, q=5): about 38k weights.

    ``forward`` maps ``(N, 3, H, W)`` normalised BGR (H, W multiples of 4) to ``(N, 1, H, W)``
    logits; the person is where the logit is above 0. It was trained with a hinge (Lovasz)
    loss, so the logits sit near -1 and +1 rather than spreading out like log-odds.
    """

    def __init__(self, classes: int = 1) -> None:
        super().__init__()
        self.encoder = ExtremeC3Encoder()
        self.upsample = nn.Sequential(
            nn.Conv2d(2 * _LEVEL3, _DETAIL, 1, bias=False),
            nn.BatchNorm2d(_DETAIL),
            Upsample(2),
        )
        self.Fine = nn.Sequential(
            PlainConv(3, _DETAIL, 3, stride=2),
            ThreeBranchModule(_DETAIL, _DETAIL, (2, 4, 8), residual=True),
        )
        self.classifier = nn.Sequential(
            NormAct(_DETAIL), Upsample(2), nn.Conv2d(_DETAIL, classes, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.upsample(self.encoder(x))  # 1/2
        return self.classifier(coarse + self.Fine(x))  # type: ignore[no-any-return]


def load_extremec3(path: Path, device: torch.device | str = "cpu") -> ExtremeC3Net:
    """Return an :class:`ExtremeC3Net` with the weights in ``path`` (loaded strictly), in eval mode.

    Raises:
        ModelSetupError: the file cannot be read or does not fit the network exactly.
    """
    return load_strict_file(ExtremeC3Net(), path, "ExtremeC3Net", device)
