"""A compact restoration U-Net (deblur, denoise), and the highlight-safe way to run it.

:class:`RestorationUNet` maps an ``(N, C, H, W)`` float32 image to a restored image of the same
shape. It is a residual encoder-decoder in the spirit of the lighter modern restoration
networks (the U-Nets of DRUNet and NAFNet, without their cost):

1. a 2x2 **pixel unshuffle** folds each 2x2 block of pixels into channels (``C`` -> ``4 C`` at
   half resolution), so every convolution runs on a quarter of the pixels and no detail is
   lost;
2. a 3x3 convolution, then ``levels`` resolutions (each half the previous, channels doubling
   from ``width``); each level holds ``blocks`` residual blocks (3x3 conv, LeakyReLU, 3x3 conv,
   plus the block's input); a 2x2 stride-2 convolution goes down, a 2x2 stride-2 transposed
   convolution comes back up and the encoder's features are *added* (cheaper than a concat);
3. a 3x3 convolution back to ``4 C`` channels, a **pixel shuffle** to full resolution, and the
   input is added: the network learns the correction, and starts as the identity (its last
   layer is zero at initialisation).

A network may also be told something about the frame: ``condition`` more input channels after
the image's (the ``deblur`` network gets the blur's path this way,
:func:`frameserve.networks.motion_blur.path_code`), which go in with the image and are not part
of the output.

**Weights.** :func:`load_restoration_unet` reads a weights file, builds the network its keys
and shapes describe (:meth:`RestorationUNet.for_state_dict`) and loads it through the strict
loader (:mod:`frameserve.networks.state_dicts`); float16 weights load as float32.

Heights and widths must be multiples of :attr:`RestorationUNet.multiple`
(``2 * 2 ** (levels - 1)``); the frameserve engine pads frames. Every convolution of a level
costs the same per full-resolution pixel (a quarter of the pixels per level down, four times
the weights); :func:`flops_per_pixel` measures them.

**Highlights.** Networks learn from photographs, whose values lie in 0-1. Scene-linear plates
converted to sRGB carry highlights above 1 (and sometimes negative values).
:func:`restore_in_range` runs the network on the part of the frame inside ``[low, high]`` and
adds what lay outside back unchanged, so highlights pass through exactly instead of being
mangled by a network that never saw them (NaN and infinite values pass through too)::

    net = RestorationUNet(3, width=24, levels=3, blocks=1)
    restored = restore_in_range(net, frames)        # (N, 3, H, W), any values

Every module is scriptable with :func:`torch.jit.script`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.errors import ModelSetupError
from frameserve.networks.state_dicts import load_strict, read_state_dict

__all__ = ["RestorationUNet", "flops_per_pixel", "load_restoration_unet", "restore_in_range"]

logger = logging.getLogger(__name__)

_SLOPE = 0.1
_DOWN = re.compile(r"downs\.\d+\.weight\Z")
_MIDDLE_BLOCK = re.compile(r"middle\.\d+\.first\.weight\Z")


class _ResBlock(nn.Module):
    """``x + conv(act(conv(x)))`` with 3x3 convolutions of ``channels`` channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.second = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.second(self.act(self.first(x)))
        return x + y


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(_ResBlock(channels) for _ in range(blocks)))


class RestorationUNet(nn.Module):
    """A residual U-Net on pixel-unshuffled frames; see the module docstring.

    Args:
        channels: channels of the frames in and out (3 for RGB).
        width: channels of the first level (after the unshuffle); they double per level.
        levels: resolutions (the first at half the frame's), at least 1.
        blocks: residual blocks per level and direction (the deepest level has ``blocks``).
        condition: extra input channels after the image's (0: none).

    Input is ``(N, channels + condition, H, W)``, output ``(N, channels, H, W)``, float, ``H``
    and ``W`` multiples of :attr:`multiple`; values are not clipped (see
    :func:`restore_in_range` for highlights).
    """

    def __init__(
        self,
        channels: int = 3,
        *,
        width: int = 24,
        levels: int = 3,
        blocks: int = 1,
        condition: int = 0,
    ):
        super().__init__()
        if channels < 1 or width < 1 or levels < 1 or blocks < 1 or condition < 0:
            raise ValueError(
                f"channels, width, levels and blocks must be at least 1 and condition at least "
                f"0, got {channels}, {width}, {levels}, {blocks} and {condition}"
            )
        folded = channels * 4
        widths = [width * 2**level for level in range(levels)]
        self.channels = channels
        self.condition = condition
        self.multiple = 2 * 2 ** (levels - 1)
        self.head = nn.Conv2d((channels + condition) * 4, widths[0], 3, padding=1)
        self.encoders = nn.ModuleList([_stage(widths[i], blocks) for i in range(levels - 1)])
        self.downs = nn.ModuleList(
            [nn.Conv2d(widths[i], widths[i + 1], 2, stride=2) for i in range(levels - 1)]
        )
        self.middle = _stage(widths[-1], blocks)
        self.ups = nn.ModuleList(
            [
                nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                for i in reversed(range(levels - 1))
            ]
        )
        self.decoders = nn.ModuleList(
            [_stage(widths[i], blocks) for i in reversed(range(levels - 1))]
        )
        self.tail = nn.Conv2d(widths[0], folded, 3, padding=1)
        self.act = nn.LeakyReLU(_SLOPE)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, a=_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.modules():  # residual branches start small: a deep stack stays tame
            if isinstance(block, _ResBlock):
                block.second.weight.data.mul_(0.1)
        nn.init.zeros_(self.tail.weight)  # the identity at first
        if self.tail.bias is not None:
            nn.init.zeros_(self.tail.bias)

    @classmethod
    def for_state_dict(cls, state: Mapping[str, torch.Tensor]) -> RestorationUNet:
        """Return a new network of the layout ``state``'s keys and shapes describe.

        Its weights are fresh: load ``state`` with
        :func:`~frameserve.networks.state_dicts.load_strict` (:func:`load_restoration_unet`
        does both).

        Raises:
            ValueError: ``state`` is not the state dict of a :class:`RestorationUNet`.
        """
        head, tail = state.get("head.weight"), state.get("tail.weight")
        if (
            not isinstance(head, torch.Tensor)
            or not isinstance(tail, torch.Tensor)
            or head.ndim != 4
            or tail.ndim != 4
            or head.shape[1] % 4
            or tail.shape[0] % 4
            or head.shape[1] < tail.shape[0]
        ):
            raise ValueError(
                "not RestorationUNet weights: no 4-D 'head.weight' and 'tail.weight' of 4 x C "
                "channels"
            )
        channels = int(tail.shape[0]) // 4
        condition = int(head.shape[1]) // 4 - channels
        levels = 1 + sum(1 for key in state if _DOWN.match(key))
        blocks = sum(1 for key in state if _MIDDLE_BLOCK.match(key))
        return cls(
            channels,
            width=int(head.shape[0]),
            levels=levels,
            blocks=max(blocks, 1),
            condition=condition,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the restored ``(N, C, H, W)`` frames from ``(N, C + condition, H, W)`` inputs
        (``H``, ``W`` multiples of ``multiple``)."""
        y = self.act(self.head(F.pixel_unshuffle(x, 2)))
        skips: list[torch.Tensor] = []
        for encoder, down in zip(self.encoders, self.downs):  # noqa: B905 (TorchScript)
            y = encoder(y)
            skips.append(y)
            y = self.act(down(y))
        y = self.middle(y)
        for up, decoder in zip(self.ups, self.decoders):  # noqa: B905 (TorchScript)
            y = decoder(self.act(up(y)) + skips.pop())
        image = x[:, : self.channels] if self.condition else x
        return image + F.pixel_shuffle(self.tail(y), 2)


def load_restoration_unet(
    path: Path, what: str, device: torch.device | str = "cpu"
) -> RestorationUNet:
    """Return the :class:`RestorationUNet` whose weights ``path`` holds, loaded strictly.

    The network is on ``device``, in eval mode; ``what`` names it in messages ("deblur").

    Raises:
        ModelSetupError: the file cannot be read, does not hold a RestorationUNet's weights,
            or its tensors do not fit the layout their keys describe.
    """
    state = read_state_dict(path, what)
    try:
        network = RestorationUNet.for_state_dict(state)
    except ValueError as exc:
        raise ModelSetupError(f"{what} weights {str(path)!r}: {exc}") from None
    return load_strict(network, state, path, what, device)


def flops_per_pixel(network: nn.Module, channels: int = 3, size: int = 64) -> float:
    """Return the floating-point operations (2 per multiply-add) of the convolutions of one
    forward pass, per input pixel, measured on a ``size`` x ``size`` probe frame."""
    total = 0.0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            total += 2.0 * inputs[0].numel() * module.weight[0].numel()
        elif isinstance(module, nn.Conv2d):
            total += 2.0 * output.numel() * module.weight[0].numel()

    hooks = [
        module.register_forward_hook(count)
        for module in network.modules()
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d)
    ]
    try:
        with torch.inference_mode():
            network(torch.zeros(1, channels, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return total / (size * size)


def restore_in_range(
    network: Callable[[torch.Tensor], torch.Tensor],
    frames: torch.Tensor,
    *,
    strength: float = 1.0,
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """Run ``network`` on ``frames`` clamped to ``[low, high]``; add back what lay outside.

    Args:
        network: maps ``(N, C, H, W)`` to the same shape (a module, or a function that adds
            what the module needs, such as condition channels).
        frames: ``(N, C, H, W)`` float values, any range (sRGB-encoded highlights above 1);
            NaN and infinite values are allowed.
        strength: how much of the network's correction to apply (0: none, 1: all).

    Returns:
        ``frames + strength * (network(clamp(frames)) - clamp(frames))``: inside the range,
        the network's answer; above ``high`` or below ``low``, the excess passes unchanged.
        NaN and infinite values come back as they were (the network sees ``low`` there, so
        they do not spread to their neighbours).
    """
    finite = torch.isfinite(frames)
    inside = torch.where(finite, frames.clamp(low, high), torch.full_like(frames, low))
    correction = network(inside) - inside
    if strength != 1.0:
        correction = correction * strength
    return torch.where(finite, frames + correction, frames)
