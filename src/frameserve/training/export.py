"""Exporting a trained network to TorchScript, for use outside frameserve.

::

    export_torchscript("jobs/degrain", "degrain.pt")
    module = torch.jit.load("degrain.pt")
    out = module(frames)                     # (N, C, H, W) float32, any H and W

An exported image network takes frames of any size: it pads them at the bottom and right to
its size multiple (mirroring the edge, as the frameserve engine does; repeating it for frames
too small to mirror) and crops the output back. Label networks return ``(N, classes)`` scores,
number networks ``(N, 1)`` values. The checkpoint's metadata (:class:`TrainedMetadata`) travels
inside the file as ``frameserve.json`` (``torch.jit.load(path, _extra_files=...)``).

PyTorch 2.13 marks TorchScript deprecated (in favour of ``torch.export``) but still writes and
loads it, as Nuke's tools expect; the export silences that one warning while it scripts.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.training.checkpoints import write_atomically
from frameserve.training.inference import load_trained

__all__ = ["METADATA_FILE", "export_torchscript"]

logger = logging.getLogger(__name__)

#: The name of the metadata entry inside an exported file.
METADATA_FILE = "frameserve.json"

_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


class _PaddedNetwork(nn.Module):
    """Pads frames to the network's size multiple, runs it, crops the output back."""

    def __init__(self, network: nn.Module, multiple: int) -> None:
        super().__init__()
        self.network = network
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        extra_rows = (self.multiple - height % self.multiple) % self.multiple
        extra_cols = (self.multiple - width % self.multiple) % self.multiple
        if extra_rows > 0 or extra_cols > 0:
            if extra_rows < height and extra_cols < width:
                x = F.pad(x, [0, extra_cols, 0, extra_rows], mode="reflect")
            else:
                x = F.pad(x, [0, extra_cols, 0, extra_rows], mode="replicate")
        y: torch.Tensor = self.network(x)
        return y[:, :, :height, :width]


def export_torchscript(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Write the network of ``checkpoint`` (a file, or a job folder: its newest) as a
    scripted TorchScript module to ``path``, atomically; return ``path``.

    Raises:
        ConfigError: no checkpoint there, or a file that is not one.
    """
    network, metadata = load_trained(checkpoint)
    module: nn.Module = network
    if metadata.kind == "image":
        module = _PaddedNetwork(network, metadata.size_multiple)
    extra = {METADATA_FILE: json.dumps(metadata.to_dict(), sort_keys=True)}
    target = Path(path)
    with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export
        warnings.filterwarnings("ignore", _DEPRECATED, DeprecationWarning)
        scripted = torch.jit.script(module.eval())
        write_atomically(
            target, lambda stream: torch.jit.save(scripted, stream, _extra_files=extra)
        )
    logger.info("exported %s (step %d) to %s", metadata.name, metadata.step, target)
    return target
