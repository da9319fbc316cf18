"""Benchmark models: a realistic small fully convolutional network, and blur in float16.

``conv32`` is 7 convolutions of 3x3 (3 -> 32 -> ... -> 32 -> 3 channels, ReLU between; a
residual added to the image): receptive field radius 7, declared with an overlap of 8. Its
weights are seeded, not trained: speed and memory do not depend on them.
"""

from __future__ import annotations

import itertools

import torch

from frameserve import ImageSpec, Model, SpatialNeeds
from frameserve.builtin_models.blur.model import GaussianBlur

LAYERS = 7
CHANNELS = 32
OVERLAP = 8


def conv32_net() -> torch.nn.Sequential:
    """Return the network, seeded (the global random state is left as it was)."""
    widths = [3] + [CHANNELS] * (LAYERS - 1) + [3]
    layers: list[torch.nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for index, (inner, outer) in enumerate(itertools.pairwise(widths)):
            layers.append(torch.nn.Conv2d(inner, outer, 3, padding=1))
            if index < LAYERS - 1:
                layers.append(torch.nn.ReLU(inplace=True))
    return torch.nn.Sequential(*layers).eval()


class Conv32(Model):
    """7 conv layers of 32 channels, untiled unless memory runs out."""

    id = "conv32"
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 3),)
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=8, overlap=OVERLAP)
    half_precision = True
    max_batch_size = 4

    def setup(self, device: torch.device) -> None:
        self.net = conv32_net().to(device)

    def predict(self, frames, knobs):
        image = frames["image"]
        return image + self.net(image[None])[0]

    def predict_batch(self, frames, knobs):
        images = frames["image"]
        return images + self.net(images)


class Conv32Tiled(Conv32):
    """The same network, in tiles of at most 1024 pixels."""

    id = "conv32_tiled"
    spatial = SpatialNeeds(
        fully_convolutional=True, size_multiple=8, overlap=OVERLAP, max_size=1024
    )


class BlurHalf(GaussianBlur):
    """The built-in blur, declared safe in float16."""

    id = "blur_half"
    half_precision = True
