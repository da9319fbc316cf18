"""VDSR: very deep super-resolution of a bicubically upscaled luma image, in plain PyTorch.

Kim, Lee and Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional Networks",
CVPR 2016. Twenty 3x3 convolutions, 64 channels wide, no biases, a ReLU after each but the
last; the network predicts the detail that bicubic upscaling lost (a *residual*) and adds it to
its input::

    luma (N, 1, H, W) --conv 1->64, ReLU--> 18 x (conv 64->64, ReLU) --conv 64->1--> + luma

The network does not change the size: it takes a luma image *already* upscaled to the target
size (bicubic, see :mod:`frameserve.builtin_models.upscaling`), in which each output pixel sees the
input pixels up to :data:`RECEPTIVE_RADIUS` pixels away (20 layers x 1 pixel). One set of weights
serves scale factors 2, 3 and 4 (it was trained on all three at once).

The layer names match the weights published with the MIT-licensed ``twtygqyy/pytorch-vdsr``
(``input.weight``, ``residual_layer.{0..17}.conv.weight``, ``output.weight``; 20 tensors,
664,704 parameters), shipped in ``frameserve/weights/upscale/``; :func:`load_vdsr` loads them
strictly.

Training convention (what the inputs must look like): luma is the Y of ITU-R BT.601
"studio-swing" YCbCr as MATLAB's ``rgb2ycbcr`` computes it from sRGB-encoded photographs,
divided by 255, so values lie in ``[16/255, 235/255]``; the bicubic kernel is MATLAB's
``imresize`` one (Keys, a = -0.5).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from frameserve.networks.state_dicts import load_strict_file

__all__ = ["PARAMETER_COUNT", "RECEPTIVE_RADIUS", "VDSR", "load_vdsr"]

#: How many 3x3 convolutions VDSR stacks.
DEPTH = 20
#: Channels of every hidden layer.
WIDTH = 64
#: How far, in pixels of the (upscaled) image, an output pixel sees: one pixel per layer.
RECEPTIVE_RADIUS = DEPTH
#: Parameters of the published network (no biases): 64*9 + 18*64*64*9 + 64*9.
PARAMETER_COUNT = 664_704


class _ConvReLU(nn.Module):
    """One hidden layer: a 64 -> 64 3x3 convolution (no bias), then a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(WIDTH, WIDTH, kernel_size=3, padding=1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.conv(features))


class VDSR(nn.Module):
    """The VDSR network: restores detail to a bicubically upscaled luma image.

    Example::

        >>> net = VDSR()
        >>> luma = torch.rand(1, 1, 32, 48)        # bicubically upscaled Y, values 0-1
        >>> net(luma).shape
        torch.Size([1, 1, 32, 48])
    """

    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Conv2d(1, WIDTH, kernel_size=3, padding=1, bias=False)
        self.residual_layer = nn.Sequential(*(_ConvReLU() for _ in range(DEPTH - 2)))
        self.output = nn.Conv2d(WIDTH, 1, kernel_size=3, padding=1, bias=False)

    def residual(self, luma: torch.Tensor) -> torch.Tensor:
        """Return the detail VDSR adds to ``luma``.

        Args:
            luma: ``(N, 1, H, W)`` floating-point luma, bicubically upscaled, values in about
                ``[16/255, 235/255]`` (see the module docstring).

        Returns:
            ``(N, 1, H, W)``, the same dtype: small values of either sign, largest at edges.
        """
        if luma.dim() != 4 or luma.shape[1] != 1:
            raise ValueError(f"VDSR takes (N, 1, H, W) luma, got shape {tuple(luma.shape)}")
        features = torch.relu_(self.input(luma))
        return self.output(self.residual_layer(features))  # type: ignore[no-any-return]

    def forward(self, luma: torch.Tensor) -> torch.Tensor:
        """Return ``luma`` (``(N, 1, H, W)``, upscaled) with the lost detail restored."""
        return luma + self.residual(luma)


def load_vdsr(path: Path, device: torch.device | str = "cpu") -> VDSR:
    """Return a :class:`VDSR` holding the weights in ``path`` (a plain state dict), in eval mode.

    Raises:
        ModelSetupError: the file cannot be read, or its tensors are not exactly VDSR's.
    """
    return load_strict_file(VDSR(), path, "VDSR", device)
