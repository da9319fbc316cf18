"""Reading weight files and loading them into our networks with ``strict=True``.

Every built-in network with weights (published ones and those frameserve trained: SINet,
ExtremeC3Net, BlazeFace, VDSR, SPyNet, the restoration U-Net of ``deblur`` and ``denoise``,
DnCNN) reads its file with :func:`read_state_dict` and loads it with :func:`load_strict`, so
a wrong file fails the same way for each: a :class:`~frameserve.errors.ModelSetupError` naming
the network, the file and what does not fit (missing or unexpected tensor names, or a shape
that differs)::

    net = load_strict(VDSR(), read_state_dict(path, "VDSR"), path, "VDSR", device)

A network whose layout is read from its weights (the restoration U-Net, DnCNN) is built empty
from the state dict's keys and shapes first, then loaded here like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from frameserve.errors import ModelSetupError

__all__ = ["load_strict", "load_strict_file", "read_state_dict"]

NetworkT = TypeVar("NetworkT", bound=nn.Module)

#: Batch-norm step counters: files saved by old PyTorch versions lack some, and strict loading
#: accepts that (they are not used in eval mode), so they are left out of the comparison.
_COUNTER_SUFFIX = ".num_batches_tracked"


def read_state_dict(
    path: Path, what: str, *, unwrap: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Return the state dict saved in ``path`` (read with ``weights_only=True``, on the CPU).

    Args:
        path: the weights file.
        what: the network's name, for error messages ("SINet").
        unwrap: keys under which a file may nest the state dict, tried in order (a training
            checkpoint's ``"state_dict"``, BasicSR's ``"params"``).

    Raises:
        ModelSetupError: the file cannot be read, or holds something other than a mapping of
            names to tensors.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for damaged or foreign files
        raise ModelSetupError(f"cannot read {what} weights {str(path)!r}: {exc}") from exc
    for key in unwrap:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise ModelSetupError(
            f"{what} weights {str(path)!r} hold a {type(state).__name__}; expected a state dict "
            "(a mapping of tensor names to tensors)"
        )
    return dict(state)


def load_strict(
    net: NetworkT,
    state: Mapping[str, torch.Tensor],
    path: Path,
    what: str,
    device: torch.device | str = "cpu",
) -> NetworkT:
    """Load ``state`` into ``net`` with ``strict=True``; return it on ``device``, in eval mode.

    Args:
        net: the freshly built network.
        state: its weights, by the network's own tensor names.
        path: the file they came from, for error messages.
        what: the network's name, for error messages ("SINet").
        device: where the network is moved.

    Raises:
        ModelSetupError: names missing or unexpected, or a tensor of another shape.
    """
    expected = {key for key in net.state_dict() if not key.endswith(_COUNTER_SUFFIX)}
    given = {key for key in state if not key.endswith(_COUNTER_SUFFIX)}
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


def load_strict_file(
    net: NetworkT, path: Path, what: str, device: torch.device | str = "cpu"
) -> NetworkT:
    """:func:`read_state_dict` then :func:`load_strict`: the usual way to load shipped weights."""
    return load_strict(net, read_state_dict(path, what), path, what, device)
