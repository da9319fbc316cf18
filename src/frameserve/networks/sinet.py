"""SINet: an extremely light portrait segmentation network (Park et al., WACV 2020).

Written from the paper and the layout of the published weights (clovaai/ext_portrait_segmentation,
MIT licence, Copyright NAVER Corp.); ``SINet.pth`` loads with ``strict=True``::

    net = load_sinet(shipped_weights_path("portrait-matte", "SINet.pth"))
    logits = net(normalised)      # (N, 3, H, W) -> (N, 2, H, W); person = softmax channel 1

Input: ``(N, 3, H, W)`` float32, H and W multiples of :data:`SIZE_MULTIPLE`, channels in BGR
order, normalised as the authors trained it (see
:func:`frameserve.builtin_models.person_matte.model.normalise_for_network`). Output: two-class
logits at the input size (background, person).

Structure. An encoder at 1/8 resolution built from *split-shuffle modules*: each reduces the
channels with a two-group 1x1 convolution, shuffles the groups, and sends the halves through
two depthwise branches with different kernels, some of which first average-pool the features
(1/2 or 1/4) and upsample after, which widens the receptive field for free. Downsampling
steps are depthwise-separable convolutions with a squeeze-style channel gate. The decoder
upsamples the coarse logits to 1/4 and adds detail features from the 1/4-resolution stage
where the coarse prediction is least confident ("information blocking"), then upsamples to
full size.

Attribute names. The module attributes must match the keys of the published state dict, so
some keep the authors' names: ``encoder.level1`` ... ``level3``, ``BR2``/``BR3`` (batch norm +
PReLU after a concatenation), ``level2_0``/``level3_0`` (downsampling steps), ``c1``/``d1``/``d2``
(reduce convolution and branches), ``act_conv1x1``, ``bn_2``/``bn_3``, ``level2_C`` and
``classifier``. Everything else is named here.
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
    upsample_bilinear,
)
from frameserve.networks.state_dicts import load_strict_file

__all__ = ["SIZE_MULTIPLE", "SINet", "load_sinet"]

#: Input height and width must be multiples of this: three stride-2 steps, then branches that
#: pool the 1/8-resolution features by up to 4.
SIZE_MULTIPLE = 32

# (kernel, pool) of the two branches of each split-shuffle module: two modules at 1/4
# resolution, then eight at 1/8 (the published configuration, p=2, q=8).
_LEVEL2_BRANCHES = (((3, 1), (5, 1)), ((3, 1), (3, 1)))
_LEVEL3_BRANCHES = (
    ((3, 1), (5, 1)),
    ((3, 1), (3, 1)),
    ((5, 1), (3, 2)),
    ((5, 2), (3, 4)),
    ((3, 1), (3, 1)),
    ((5, 1), (5, 1)),
    ((3, 2), (3, 4)),
    ((3, 1), (5, 2)),
)
_STEM = 12  # channels after the first convolution
_LEVEL2_IN = 16
_LEVEL2 = 48
_LEVEL3 = 96


class ChannelGate(nn.Module):
    """Scale each channel by a learned function of all the channels' spatial means.

    ``dense`` holds Linear/PReLU pairs (one pair, or a bottleneck of two). There is no sigmoid:
    the gate is what the PReLU gives, as trained.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        if reduction == 1:
            self.dense = nn.Sequential(nn.Linear(channels, channels), nn.PReLU(channels))
        else:
            hidden = channels // reduction
            self.dense = nn.Sequential(
                nn.Linear(channels, hidden),
                nn.PReLU(hidden),
                nn.Linear(hidden, channels),
                nn.PReLU(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights: torch.Tensor = self.dense(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class GatedSeparableDown(nn.Module):
    """Halve the resolution: depthwise 3x3 (stride 2), channel gate, pointwise, BN, PReLU."""

    def __init__(self, channels_in: int, channels_out: int, reduction: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels_in, channels_in, 3, 2, 1, groups=channels_in, bias=False),
            ChannelGate(channels_in, reduction),
            nn.Conv2d(channels_in, channels_out, 1, bias=False),
        )
        self.bn = nn.BatchNorm2d(channels_out, eps=BATCH_NORM_EPS)
        self.act = nn.PReLU(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # type: ignore[no-any-return]


class PooledBranch(nn.Module):
    """One branch of a split-shuffle module: [pool] depthwise kxk, BN, PReLU, 1x1, [upsample], BN.

    ``pool`` > 1 average-pools the features by that factor first and upsamples the result
    back (bilinear, aligned corners), so the branch sees ``pool`` times further.
    """

    def __init__(self, channels_in: int, channels_out: int, kernel: int, pool: int) -> None:
        super().__init__()
        self.pool = pool
        self.conv = nn.Sequential(
            nn.Conv2d(
                channels_in,
                channels_in,
                kernel,
                padding=(kernel - 1) // 2,
                groups=channels_in,
                bias=False,
            ),
            nn.BatchNorm2d(channels_in, eps=BATCH_NORM_EPS),
        )
        self.act_conv1x1 = nn.Sequential(
            nn.PReLU(channels_in), nn.Conv2d(channels_in, channels_out, 1, bias=False)
        )
        self.bn = nn.BatchNorm2d(channels_out, eps=BATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        x = self.act_conv1x1(self.conv(x))
        if self.pool > 1:
            x = upsample_bilinear(x, self.pool)
        return self.bn(x)  # type: ignore[no-any-return]


class SplitShuffleModule(nn.Module):
    """Reduce (two-group 1x1), shuffle, two pooled branches, concatenate, [add input], BN+PReLU."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        branches: tuple[tuple[int, int], tuple[int, int]],
        *,
        residual: bool,
    ) -> None:
        super().__init__()
        half = channels_out // 2
        extra = channels_out - 2 * half
        self.residual = residual
        self.c1 = PlainConv(channels_in, half, 1, groups=2)
        (kernel1, pool1), (kernel2, pool2) = branches
        self.d1 = PooledBranch(half, half + extra, kernel1, pool1)
        self.d2 = PooledBranch(half, half, kernel2, pool2)
        self.BR = NormAct(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = _shuffle_two_groups(self.c1(x))
        combined = torch.cat([self.d1(reduced), self.d2(reduced)], dim=1)
        if self.residual:
            combined = combined + x
        return self.BR(combined)  # type: ignore[no-any-return]


def _shuffle_two_groups(x: torch.Tensor) -> torch.Tensor:
    """Interleave the two channel groups: (a0, a1, ..., b0, b1, ...) -> (a0, b0, a1, b1, ...)."""
    batch, channels, height, width = x.shape
    return x.reshape(batch, 2, channels // 2, height, width).transpose(1, 2).reshape(x.shape)


class SINetEncoder(nn.Module):
    """The encoder: features at 1/4 and 1/8 resolution and coarse logits at 1/8."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.level1 = ConvNormAct(3, _STEM, 3, stride=2)
        self.level2_0 = GatedSeparableDown(_STEM, _LEVEL2_IN, reduction=1)
        self.level2 = nn.ModuleList(
            SplitShuffleModule(_LEVEL2_IN if i == 0 else _LEVEL2, _LEVEL2, branches, residual=i > 0)
            for i, branches in enumerate(_LEVEL2_BRANCHES)
        )
        self.BR2 = NormAct(_LEVEL2_IN + _LEVEL2)
        self.level3_0 = GatedSeparableDown(_LEVEL2_IN + _LEVEL2, _LEVEL2, reduction=2)
        self.level3 = nn.ModuleList(
            SplitShuffleModule(_LEVEL2 if i == 0 else _LEVEL3, _LEVEL3, branches, residual=i > 0)
            for i, branches in enumerate(_LEVEL3_BRANCHES)
        )
        self.BR3 = NormAct(_LEVEL2 + _LEVEL3)
        self.classifier = PlainConv(_LEVEL2 + _LEVEL3, classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the 1/4-resolution features ``(N, 48, H/4, W/4)`` and 1/8 logits."""
        down2 = self.level2_0(self.level1(x))
        features2 = down2
        for module in self.level2:
            features2 = module(features2)
        down3 = self.level3_0(self.BR2(torch.cat([down2, features2], dim=1)))
        features3 = down3
        for module in self.level3:
            features3 = module(features3)
        coarse = self.classifier(self.BR3(torch.cat([down3, features3], dim=1)))
        return features2, coarse


class SINet(nn.Module):
    """SINet with the published configuration (2 classes, p=2, q=8, chnn=1): about 87k weights.

    ``forward`` maps ``(N, 3, H, W)`` normalised BGR (H, W multiples of 32) to ``(N, 2, H, W)``
    logits; the person probability is ``softmax(logits, dim=1)[:, 1]``.
    """

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.encoder = SINetEncoder(classes)
        self.bn_3 = nn.BatchNorm2d(classes, eps=BATCH_NORM_EPS)
        self.level2_C = ConvNormAct(_LEVEL2, classes, 1)
        self.bn_2 = nn.BatchNorm2d(classes, eps=BATCH_NORM_EPS)
        self.classifier = nn.Sequential(
            Upsample(2), nn.Conv2d(classes, classes, 3, padding=1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features2, coarse = self.encoder(x)
        coarse = self.bn_3(upsample_bilinear(coarse))  # 1/4
        confidence = torch.softmax(coarse, dim=1).amax(dim=1, keepdim=True)
        detail = self.level2_C(features2)  # where the coarse answer is unsure, add detail
        fused = self.bn_2(upsample_bilinear(detail * (1.0 - confidence) + coarse))  # 1/2
        return self.classifier(fused)  # type: ignore[no-any-return]


def load_sinet(path: Path, device: torch.device | str = "cpu") -> SINet:
    """Return a :class:`SINet` holding the weights in ``path`` (loaded strictly), in eval mode.

    Raises:
        ModelSetupError: the file cannot be read or does not fit the network exactly.
    """
    return load_strict_file(SINet(), path, "SINet", device)
