"""Gaussian blur in PyTorch, with a button that reports the brightest pixel."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from frameserve import (
    ButtonKnob,
    ChoiceKnob,
    FloatKnob,
    ImageSpec,
    KnobValues,
    Model,
    Prediction,
    ResultObject,
    python_script,
)

#: Rec. 709 luminance weights, used to find the brightest pixel of an RGB frame.
REC709_LUMA = (0.2126, 0.7152, 0.0722)


class GaussianBlur(Model):
    """Blurs the frame with a Gaussian of standard deviation ``size`` pixels."""

    id = "blur"
    label = "Gaussian Blur"
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)
    knobs = (
        FloatKnob("size", default=5.0, min=0.0, max=100.0, help="Standard deviation in pixels."),
        ChoiceKnob(
            "edges",
            default="extend",
            choices=("extend", "mirror", "black"),
            help="What lies beyond the frame: the edge pixels, a mirror image, or black.",
        ),
        ButtonKnob("brightest", help="Show where the brightest pixel of the result is."),
    )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        blurred = gaussian_blur(frames["image"], float(knobs["size"]), str(knobs["edges"]))
        objects = [brightest_pixel_report(blurred)] if knobs["brightest"] else []
        return Prediction(frames={"image": blurred}, objects=objects)


def gaussian_kernel(sigma: float, *, device: torch.device) -> torch.Tensor:
    """Return a normalised 1-D Gaussian of standard deviation ``sigma`` (radius 3 sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _edge_indices(length: int, radius: int, edges: str, device: torch.device) -> torch.Tensor:
    """Indices that extend ``range(length)`` by ``radius`` on each side (any radius)."""
    index = torch.arange(-radius, length + radius, device=device)
    if edges == "mirror" and length > 1:
        period = 2 * (length - 1)
        index = index.remainder(period)
        return torch.where(index >= length, period - index, index)
    return index.clamp(0, length - 1)


def gaussian_blur(image: torch.Tensor, sigma: float, edges: str = "extend") -> torch.Tensor:
    """Blur a ``(C, H, W)`` float image with a separable Gaussian of ``sigma`` pixels.

    ``edges`` is ``"extend"`` (repeat the edge pixels), ``"mirror"`` or ``"black"``.
    A ``sigma`` of 0 returns the image unchanged.
    """
    if sigma <= 0:
        return image
    channels, height, width = image.shape
    kernel = gaussian_kernel(sigma, device=image.device).to(image.dtype)
    radius = (kernel.numel() - 1) // 2
    batch = image[None]
    if edges == "black":
        batch = F.pad(batch, (radius, radius, radius, radius))
    else:
        batch = batch.index_select(3, _edge_indices(width, radius, edges, image.device))
        batch = batch.index_select(2, _edge_indices(height, radius, edges, image.device))
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    batch = F.conv2d(batch, horizontal, groups=channels)
    batch = F.conv2d(batch, vertical, groups=channels)
    return batch[0]


def brightest_pixel_report(image: torch.Tensor) -> ResultObject:
    """Return a ``PythonScript`` object that shows the brightest pixel in a Nuke message.

    Positions are in Nuke's convention: x from the left, y from the bottom.
    """
    channels, height, width = image.shape
    if channels >= 3:
        weights = torch.tensor(REC709_LUMA, dtype=image.dtype, device=image.device)
        luma = torch.einsum("chw,c->hw", image[:3], weights)
    else:
        luma = image[0]
    luma = torch.nan_to_num(luma, nan=-math.inf)
    flat = int(torch.argmax(luma).item())
    row, x = divmod(flat, width)
    y = height - 1 - row
    values = ", ".join(f"{float(v):.6g}" for v in image[:, row, x])
    text = f"Brightest pixel: x={x}, y={y}, value ({values})"
    return python_script(f"nuke.message({text!r})")
