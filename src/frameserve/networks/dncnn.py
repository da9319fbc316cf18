"""DnCNN (Zhang et al. 2017), laid out so the authors' published PyTorch weights load as they are.

DnCNN is a plain stack of ``depth`` 3x3 convolutions at full resolution, ``width`` channels
wide, ReLU between them; it predicts the noise and subtracts it from its input::

    noise = model(x)            # conv, ReLU, (conv, ReLU) x (depth - 2), conv
    return x - noise

Values are sRGB-encoded in 0-1 (the authors divide 8-bit images by 255), ``(N, C, H, W)``
float32 in and out, any height and width.

**The authors' weights** (KAIR, ``github.com/cszn/KAIR``, MIT licence; files ``dncnn_15.pth``,
``dncnn_25.pth``, ``dncnn_50.pth``, ``dncnn_gray_blind.pth``, ``dncnn3.pth`` for one channel,
``dncnn_color_blind.pth`` for RGB) are state dicts of a ``torch.nn.Sequential`` called
``model`` whose batch normalisation was merged into the convolutions: keys
``model.0.weight`` ``(64, C, 3, 3)``, ``model.0.bias`` ``(64,)``, then ``model.2``,
``model.4``... (odd indices are the ReLUs, which hold no weights) up to
``model.{2 * (depth - 1)}.weight`` ``(C, 64, 3, 3)``; depth 17 for the fixed-level models, 20
for the blind ones. :func:`load_dncnn` reads the file (also when it nests the state dict
under ``"state_dict"`` or ``"params"``), builds the network of the channels, depth and width
its keys describe (:func:`dncnn_for_state_dict`) and loads the weights through the strict
loader (:mod:`frameserve.networks.state_dicts`). A one-channel (grey)
network denoises an RGB frame channel by channel (:meth:`DnCNN.forward` folds the channels
into the batch).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from frameserve.errors import ModelSetupError
from frameserve.networks.state_dicts import load_strict, read_state_dict

__all__ = ["DnCNN", "dncnn_for_state_dict", "load_dncnn"]

#: Keys under which training checkpoints (and BasicSR) nest a state dict.
_WRAPPERS = ("state_dict", "params")

logger = logging.getLogger(__name__)

_KEY = re.compile(r"model\.(\d+)\.(weight|bias)\Z")


class DnCNN(nn.Module):
    """Residual denoiser: ``x - model(x)``; see the module docstring.

    Args:
        channels: channels the convolutions take (1: grey, applied to each channel of a
            frame in turn; 3: RGB).
        depth: convolutions in all (at least 2).
        width: channels of the hidden convolutions.

    ``forward`` takes ``(N, C, H, W)`` with ``C`` equal to ``channels``, or any ``C`` when
    ``channels`` is 1.
    """

    def __init__(self, channels: int = 3, *, depth: int = 20, width: int = 64) -> None:
        super().__init__()
        if channels < 1 or depth < 2 or width < 1:
            raise ValueError(
                f"DnCNN needs channels >= 1, depth >= 2 and width >= 1; got {channels}, "
                f"{depth}, {width}"
            )
        self.channels = channels
        self.multiple = 1
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.model = nn.Sequential(*layers)
        for module in self.model:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        last = self.model[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)  # no noise predicted at first: the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the denoised ``(N, C, H, W)`` frames."""
        if self.channels == 1 and x.shape[1] != 1:
            count, channels, height, width = x.shape
            flat = x.reshape(count * channels, 1, height, width)
            grey: torch.Tensor = self.model(flat)
            return (flat - grey).reshape(count, channels, height, width)
        noise: torch.Tensor = self.model(x)
        return x - noise


def dncnn_for_state_dict(state: Mapping[str, torch.Tensor]) -> DnCNN:
    """Return a new :class:`DnCNN` of the layout ``state``'s keys describe (the authors').

    Its weights are fresh: load ``state`` with
    :func:`~frameserve.networks.state_dicts.load_strict` (:func:`load_dncnn` does both).

    Raises:
        ValueError: the keys or shapes are not a DnCNN's without batch normalisation (the
            message says what was found).
    """
    indices: dict[int, dict[str, torch.Tensor]] = {}
    strange = []
    for key, value in state.items():
        match = _KEY.match(key)
        if match is None or not isinstance(value, torch.Tensor):
            strange.append(key)
            continue
        indices.setdefault(int(match[1]), {})[match[2]] = value
    if strange:
        hint = (
            " (batch normalisation layers: use the authors' weights with it merged, the 'R' models)"
            if any("running_mean" in key for key in strange)
            else ""
        )
        raise ValueError(
            f"not DnCNN weights: unexpected keys {', '.join(strange[:4])}"
            f"{'...' if len(strange) > 4 else ''}{hint}; expected model.0.weight, model.0.bias, "
            "model.2.weight..."
        )
    convs = sorted(indices)
    if not convs or convs != list(range(0, 2 * len(convs), 2)):
        raise ValueError(
            f"not DnCNN weights: convolution indices {convs[:6]}... are not 0, 2, 4, ..."
        )
    first, last = indices[convs[0]].get("weight"), indices[convs[-1]].get("weight")
    if first is None or last is None or first.ndim != 4 or last.ndim != 4:
        raise ValueError("not DnCNN weights: the first and last layers need 4-D conv weights")
    width, channels = int(first.shape[0]), int(first.shape[1])
    return DnCNN(channels, depth=len(convs), width=width)


def load_dncnn(path: Path, what: str, device: torch.device | str = "cpu") -> DnCNN:
    """Return the :class:`DnCNN` whose weights ``path`` holds, loaded strictly.

    The network is on ``device``, in eval mode; ``what`` names it in messages.

    Raises:
        ModelSetupError: the file cannot be read, does not hold DnCNN weights (the message
            says what was found), or its tensors do not fit the layout their keys describe.
    """
    state = read_state_dict(path, what, unwrap=_WRAPPERS)
    try:
        network = dncnn_for_state_dict(state)
    except ValueError as exc:
        raise ModelSetupError(f"{what} weights {str(path)!r}: {exc}") from None
    return load_strict(network, state, path, what, device)
