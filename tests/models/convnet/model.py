"""A test model: a small fully convolutional network that runs batches in one call.

Three 3x3 convolutions (receptive field radius 3) with fixed, seeded weights; frames must be
multiples of 4 and at most 256 pixels wide and high, so the engine pads and tiles for it. It
records the shapes it was called with, for the tests to check.
"""

from __future__ import annotations

import threading

import torch

from frameserve import FloatKnob, ImageSpec, Model, SpatialNeeds

#: Pixels each output pixel sees in each direction: one per 3x3 convolution.
RADIUS = 3


def conv_net(seed: int = 0, width: int = 8) -> torch.nn.Sequential:
    """Return the network: 3 -> width -> width -> 3 channels, 3x3 kernels, ReLU between."""
    generator = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(width, width, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(width, 3, 3, padding=1),
    )
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator) - 0.5)
    return net.eval()


class ConvNet(Model):
    """Adds ``gain`` times a small fixed conv net's response to the image."""

    id = "convnet"
    label = "ConvNet (test)"
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)
    knobs = (FloatKnob("gain", default=1.0, min=0.0, max=4.0),)
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=4, overlap=RADIUS, max_size=256)
    max_batch_size = 4
    batch_window_ms = 20.0

    def setup(self, device: torch.device) -> None:
        self.net = conv_net().to(device)
        self.calls: list[tuple[int, ...]] = []  # shapes seen, for tests
        self._calls_lock = threading.Lock()

    def _record(self, shape: torch.Size) -> None:
        height, width = shape[-2:]
        needs = self.spatial
        limit = needs.max_size or max(height, width)
        assert height <= limit and width <= limit, shape
        assert height % needs.size_multiple == 0 and width % needs.size_multiple == 0, shape
        with self._calls_lock:
            self.calls.append(tuple(shape))

    def predict(self, frames, knobs):
        image = frames["image"]
        self._record(image.shape)
        return image + float(knobs["gain"]) * self.net(image[None])[0]

    def predict_batch(self, frames, knobs):
        images = frames["image"]
        self._record(images.shape)
        return images + float(knobs["gain"]) * self.net(images)
