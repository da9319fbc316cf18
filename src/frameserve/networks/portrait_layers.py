"""Small layers shared by the portrait segmentation networks (SINet, ExtremeC3Net).

Their attribute names (``conv``, ``bn``, ``act``) are the ones the published state dicts use
for these layers, so the weights load with ``strict=True``; do not rename them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.errors import ModelSetupError

__all__ = [
    "BATCH_NORM_EPS",
    "ConvNormAct",
    "NormAct",
    "PlainConv",
    "Upsample",
    "load_strict",
    "upsample_bilinear",
]

NetworkT = TypeVar("NetworkT", bound=nn.Module)

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


def load_strict(
    net: NetworkT, path: Path, what: str, device: torch.device | str = "cpu"
) -> NetworkT:
    """Load the state dict in ``path`` into ``net`` with ``strict=True``; return it in eval mode.

    Args:
        net: the freshly built network.
        path: a plain state dict saved with ``torch.save`` (read with ``weights_only=True``).
        what: the network's name, for error messages ("SINet").
        device: where the network is moved.

    Raises:
        ModelSetupError: the file cannot be read, or its tensors are not exactly the network's
            (names missing or unexpected, or a shape that differs).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelSetupError(f"cannot read {what} weights {str(path)!r}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelSetupError(
            f"{what} weights {str(path)!r} hold a {type(state).__name__}; expected a state dict"
        )
    # Files saved by old PyTorch versions lack some batch norms' ``num_batches_tracked``
    # counters, which strict loading accepts (they are not used in eval mode).
    expected = {key for key in net.state_dict() if not key.endswith(".num_batches_tracked")}
    given = {key for key in state if not str(key).endswith(".num_batches_tracked")}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ModelSetupError(
            f"{what} weights {str(path)!r} do not fit the network: missing "
            f"{missing[:5] or 'none'}, unexpected {unexpected[:5] or 'none'}"
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a tensor of the wrong shape
        reason = " ".join(str(exc).split())
        raise ModelSetupError(
            f"{what} weights {str(path)!r} do not fit the network: {reason}"
        ) from exc
    return net.to(device).eval().requires_grad_(False)
