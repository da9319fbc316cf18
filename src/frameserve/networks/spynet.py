"""SPyNet: optical flow by a spatial pyramid of small convolutional networks, in plain PyTorch.

Ranjan and Black, "Optical Flow Estimation using a Spatial Pyramid Network", CVPR 2017. The
two frames are turned into image pyramids (2x2 average pooling, up to 6 levels, halving while
either side is above 32 pixels). From the coarsest level to the finest, the flow so far is
upsampled (x2 in size and in value), the second frame is warped by it
(:func:`~frameserve.networks.optical_flow.backward_warp`), and the level's network predicts
the correction from ``[first (3), warped second (3), upsampled flow (2)]``::

    level network (one per pyramid level, 6 in all; all convolutions 7x7, padding 3):
        conv 8->32, ReLU, conv 32->64, ReLU, conv 64->32, ReLU, conv 32->16, ReLU, conv 16->2

There is no correlation layer. The pyramid's coarsest level always uses level network 0, the
next one 1, and so on (as in the published PyTorch port), so small frames use only the first
networks. Frames go in at a size that is a multiple of 32 (:func:`estimate_flow` resizes and
rescales the flow back).

**Weights.** The authors' weights are free for non-commercial and scientific research only,
so frameserve does not ship them. The PyTorch conversion published with
``sniklaus/pytorch-spynet`` (``network-sintel-final.pytorch``, also ``-sintel-clean``,
``-chairs-final``, ``-chairs-clean``, ``-kitti-final``) is a plain state dict of 60 tensors;
:func:`load_spynet` maps its keys to this module's:

=============================================  ============================  ================
published key (``L`` = 0..5, ``K`` = 0,2,4,6,8)  key here                     shape (weight)
=============================================  ============================  ================
``moduleBasic.L.moduleBasic.K.weight``         ``levels.L.K.weight``          K=0: 32x8x7x7,
                                                                              2: 64x32x7x7,
                                                                              4: 32x64x7x7,
                                                                              6: 16x32x7x7,
                                                                              8: 2x16x7x7
``moduleBasic.L.moduleBasic.K.bias``           ``levels.L.K.bias``            32, 64, 32, 16, 2
=============================================  ============================  ================

Keys spelt ``netBasic.L.netBasic.K.*`` (the port's newer attribute names, for a state dict
saved from its current code) map the same way. ``K`` counts the layers of a level including
its ReLUs, so only even indices hold weights.

**Preprocessing** (the published networks' training convention): RGB, sRGB-encoded, values
0-1, each channel normalised with the ImageNet mean ``(0.485, 0.456, 0.406)`` and standard
deviation ``(0.229, 0.224, 0.225)``. The flow comes out in pixels, ``dx`` then ``dy`` (y down),
from the first frame to the second: ``first(p) ≈ second(p + flow(p))``. The warp here moves
pixels by exactly the flow; the port's warp moves them by ``W / (W - 1)`` times it (3 % at the
32-pixel coarsest level, 0.1 % at 1024 pixels), a difference well inside the networks'
accuracy.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.errors import ModelSetupError
from frameserve.networks.optical_flow import backward_warp
from frameserve.networks.state_dicts import load_strict, read_state_dict

__all__ = [
    "LEVELS",
    "SIZE_MULTIPLE",
    "SPyNet",
    "estimate_flow",
    "load_spynet",
    "published_key_map",
]

#: Pyramid levels, each with its own small network.
LEVELS = 6
#: Channels through one level's network: in, hidden..., out.
LEVEL_CHANNELS = (8, 32, 64, 32, 16, 2)
#: Side of every convolution kernel.
KERNEL_SIZE = 7
#: The pyramid stops halving once both sides are at most this many pixels.
COARSEST_SIDE = 32
#: Frames go into the network at multiples of this size (2**5 for five halvings).
SIZE_MULTIPLE = 32
#: ImageNet normalisation of the published weights' inputs (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PUBLISHED_KEY = re.compile(
    r"(?:module|net)Basic\.(\d+)\.(?:module|net)Basic\.(\d+)\.(weight|bias)"
)


def _level_network() -> nn.Sequential:
    """One pyramid level's network: four 7x7 convolutions with ReLUs, then one to 2 channels."""
    layers: list[nn.Module] = []
    pairs = list(itertools.pairwise(LEVEL_CHANNELS))
    for index, (inputs, outputs) in enumerate(pairs):
        layers.append(nn.Conv2d(inputs, outputs, KERNEL_SIZE, padding=KERNEL_SIZE // 2))
        if index < len(pairs) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SPyNet(nn.Module):
    """The SPyNet flow network (6 pyramid levels), taking frames at multiples of 32 pixels.

    Example::

        >>> net = SPyNet()
        >>> first, second = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)  # sRGB, 0-1
        >>> net(first, second).shape
        torch.Size([1, 2, 64, 96])
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.levels = nn.ModuleList(_level_network() for _ in range(LEVELS))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Return the flow from ``first`` to ``second``.

        Args:
            first: ``(N, 3, H, W)`` RGB, sRGB-encoded, values 0-1; ``H`` and ``W`` multiples
                of :data:`SIZE_MULTIPLE`.
            second: the same shape.

        Returns:
            ``(N, 2, H, W)`` flow in pixels: ``dx`` (right), ``dy`` (down).
        """
        if first.shape != second.shape or first.dim() != 4 or first.shape[1] != 3:
            raise ValueError(
                f"SPyNet takes two (N, 3, H, W) frames of one shape, got {tuple(first.shape)} "
                f"and {tuple(second.shape)}"
            )
        height, width = first.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(
                f"SPyNet takes frames whose sides are multiples of {SIZE_MULTIPLE}, got "
                f"{width}x{height} (estimate_flow resizes)"
            )
        firsts = [(first - self.mean) / self.std]
        seconds = [(second - self.mean) / self.std]
        for _ in range(LEVELS - 1):
            if max(firsts[0].shape[-2:]) <= COARSEST_SIDE:
                break
            firsts.insert(0, F.avg_pool2d(firsts[0], kernel_size=2, stride=2))
            seconds.insert(0, F.avg_pool2d(seconds[0], kernel_size=2, stride=2))
        coarsest = firsts[0]
        flow = coarsest.new_zeros(coarsest.shape[0], 2, *coarsest.shape[-2:])
        for network, one, two in zip(self.levels, firsts, seconds, strict=False):
            flow = _upsample_flow(flow, one.shape[-2], one.shape[-1])
            correction = network(torch.cat((one, backward_warp(two, flow), flow), dim=1))
            flow = flow + correction
        return flow


def _upsample_flow(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a flow to ``height x width`` (bilinear), scaling its values with the size."""
    old_height, old_width = flow.shape[-2:]
    if (old_height, old_width) == (height, width):
        return flow
    resized = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=True)
    scale = torch.tensor(
        [width / old_width, height / old_height], dtype=flow.dtype, device=flow.device
    )
    return resized * scale.view(1, 2, 1, 1)


def estimate_flow(
    net: SPyNet, first: torch.Tensor, second: torch.Tensor, *, scale: float = 1.0
) -> torch.Tensor:
    """Return the flow from ``first`` to ``second`` at their own size, for any frame size.

    The frames are resized (bilinear) to ``scale`` times their size, rounded up to multiples
    of 32, run through ``net``, and the flow is resized back with its values rescaled.

    Args:
        net: the network.
        first: ``(N, 3, H, W)`` RGB, sRGB-encoded, values 0-1, any ``H`` and ``W``.
        second: the same shape.
        scale: how big the network sees the frames (0.5: half size, faster, smoother).

    Returns:
        ``(N, 2, H, W)`` flow in pixels of the input frames: ``dx`` (right), ``dy`` (down).
    """
    height, width = first.shape[-2:]
    work_height = max(1, math.ceil(height * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    work_width = max(1, math.ceil(width * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    if (work_height, work_width) != (height, width):
        size = (work_height, work_width)
        first = F.interpolate(first, size=size, mode="bilinear", align_corners=False)
        second = F.interpolate(second, size=size, mode="bilinear", align_corners=False)
    flow: torch.Tensor = net(first, second)
    if (work_height, work_width) == (height, width):
        return flow
    resized = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
    factors = torch.tensor(
        [width / work_width, height / work_height], dtype=flow.dtype, device=flow.device
    )
    return resized * factors.view(1, 2, 1, 1)


def published_key_map(keys: list[str]) -> dict[str, str]:
    """Return ``{published key: key of SPyNet}`` for the keys of a published state dict.

    Raises:
        ModelSetupError: a key that is not one of SPyNet's (named in the message).
    """
    mapping = {}
    for key in keys:
        match = _PUBLISHED_KEY.fullmatch(key)
        if match is None:
            raise ModelSetupError(
                f"SPyNet weights hold the key {key!r}, which is not SPyNet's: expected "
                "moduleBasic.L.moduleBasic.K.weight/bias (L = 0..5, K = 0, 2, 4, 6, 8), the "
                "keys of sniklaus/pytorch-spynet's network-*.pytorch files"
            )
        level, layer, kind = match.groups()
        mapping[key] = f"levels.{level}.{layer}.{kind}"
    return mapping


def load_spynet(path: Path, device: torch.device | str = "cpu") -> SPyNet:
    """Return a :class:`SPyNet` holding the published weights in ``path``, in eval mode.

    Args:
        path: a state dict file with the published key names (see the module docstring).
        device: where the network goes.

    Raises:
        ModelSetupError: the file cannot be read, or its tensors are not exactly SPyNet's.
    """
    state = read_state_dict(path, "SPyNet")
    mapping = published_key_map(list(state))
    renamed = {mapping[key]: value for key, value in state.items()}
    return load_strict(SPyNet(), renamed, path, "SPyNet", device)
