"""Gaussian blur (OpenCV for frames on the CPU, PyTorch on a GPU), with a brightest-pixel button.

``size`` is the Gaussian's standard deviation in pixels; the kernel reaches ``ceil(3 * size)``
pixels each side (at least 1) and is normalised to sum to 1, so a flat frame stays flat.

Two implementations give the same result (within float32 rounding: 3e-6 on values up to 4):

- **OpenCV** (``cv2.GaussianBlur``, separable, vectorised and threaded) for frames on the CPU.
  Each channel of the ``(C, H, W)`` frame is a contiguous plane, so OpenCV reads it and writes
  the result into the output tensor in place: no transposes, no copies besides the result.
  At 1080p it takes 0.8-1.4 times as long as ``cv2.GaussianBlur`` on an interleaved
  ``(H, W, 3)`` frame, usually about as long (``benchmarks/blur.py``); the PyTorch path on a
  CPU takes 5-50 times as long.
- **PyTorch** (two 1-D depthwise convolutions) for frames on a GPU, so they never leave it.

Edges: ``extend`` repeats the edge pixels (Nuke's Blur; OpenCV's ``BORDER_REPLICATE``),
``mirror`` reflects the frame about its edge pixels without repeating them (``dcb|abcd|cba``,
OpenCV's ``BORDER_REFLECT_101``), ``black`` treats everything outside as 0 (the edges darken).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np
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
from frameserve.errors import FrameError, KnobError

__all__ = [
    "BACKENDS",
    "EDGES",
    "GaussianBlur",
    "brightest_pixel_report",
    "gaussian_blur",
    "gaussian_kernel",
    "kernel_radius",
]

#: Rec. 709 luminance weights, used to find the brightest pixel of an RGB frame.
REC709_LUMA = (0.2126, 0.7152, 0.0722)
#: Edge handling (knob value) -> OpenCV border mode; the PyTorch path builds the same borders.
_OPENCV_BORDERS = {
    "extend": cv2.BORDER_REPLICATE,
    "mirror": cv2.BORDER_REFLECT_101,
    "black": cv2.BORDER_CONSTANT,
}
EDGES = tuple(_OPENCV_BORDERS)
#: ``auto`` picks OpenCV for CPU tensors and PyTorch for any other device.
BACKENDS = ("auto", "opencv", "torch")
#: Element types OpenCV filters as they are; other CPU frames are filtered in float32.
_OPENCV_DTYPES = (torch.float32, torch.float64)


class GaussianBlur(Model):
    """Blurs the frame with a Gaussian of standard deviation ``size`` pixels."""

    id = "blur"
    label = "Gaussian Blur"
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)
    weights = ()  # no learned weights
    knobs = (
        FloatKnob("size", default=5.0, min=0.0, max=100.0, help="Standard deviation in pixels."),
        ChoiceKnob(
            "edges",
            default="extend",
            choices=EDGES,
            help="What lies beyond the frame: the edge pixels, a mirror image, or black.",
        ),
        ButtonKnob("brightest", help="Show where the brightest pixel of the result is."),
    )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        blurred = gaussian_blur(frames["image"], float(knobs["size"]), str(knobs["edges"]))
        objects = [brightest_pixel_report(blurred)] if knobs["brightest"] else []
        return Prediction(frames={"image": blurred}, objects=objects)


def kernel_radius(sigma: float) -> int:
    """Return how far the kernel reaches each side of its centre: ``ceil(3 sigma)``, at least 1."""
    return max(1, math.ceil(3.0 * sigma))


def gaussian_kernel(sigma: float, *, device: torch.device) -> torch.Tensor:
    """Return a normalised 1-D float32 Gaussian of standard deviation ``sigma`` (``sigma`` > 0).

    It has ``2 * kernel_radius(sigma) + 1`` taps.
    """
    radius = kernel_radius(sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(torch.float32)


def gaussian_blur(
    image: torch.Tensor, sigma: float, edges: str = "extend", *, backend: str = "auto"
) -> torch.Tensor:
    """Blur a ``(C, H, W)`` float image with a separable Gaussian of ``sigma`` pixels.

    Args:
        image: ``(C, H, W)``, any number of channels, any float dtype, any device; values are
            not clipped (scene-linear values above 1 blur as they are).
        sigma: the standard deviation in pixels; 0 (or less) returns ``image`` itself.
        edges: ``"extend"`` (repeat the edge pixels), ``"mirror"`` or ``"black"``.
        backend: ``"auto"`` (OpenCV for CPU tensors, PyTorch otherwise), or ``"opencv"`` /
            ``"torch"`` to force one (``"opencv"`` needs a CPU tensor).

    Returns:
        A new ``(C, H, W)`` tensor of ``image``'s dtype and device.

    Raises:
        KnobError: ``edges`` or ``backend`` is not one of the allowed values.
        FrameError: ``image`` is not ``(C, H, W)``, or OpenCV was asked to blur a tensor that
            is not on the CPU.

    Example::

        >>> frame = torch.zeros(3, 9, 9)
        >>> frame[:, 4, 4] = 1.0  # a kernel of radius 3 around it stays inside the frame
        >>> round(float(gaussian_blur(frame, 1.0).sum()), 4)
        3.0
    """
    if edges not in EDGES:
        raise KnobError(f"edges {edges!r} is not one of {', '.join(EDGES)}")
    if backend not in BACKENDS:
        raise KnobError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if image.dim() != 3:
        raise FrameError(f"gaussian_blur takes a (C, H, W) image, got shape {tuple(image.shape)}")
    if sigma <= 0:
        return image
    if backend == "auto":
        backend = "opencv" if image.device.type == "cpu" else "torch"
    if backend == "opencv":
        return _blur_opencv(image, sigma, edges)
    return _blur_torch(image, sigma, edges)


def _blur_opencv(image: torch.Tensor, sigma: float, edges: str) -> torch.Tensor:
    """``cv2.GaussianBlur`` on each channel plane of a CPU ``(C, H, W)`` tensor."""
    if image.device.type != "cpu":
        raise FrameError(f"the OpenCV blur takes CPU tensors; this one is on {image.device}")
    dtype = image.dtype if image.dtype in _OPENCV_DTYPES else torch.float32
    source = image.detach().to(dtype).contiguous().numpy()
    result = torch.empty(image.shape, dtype=dtype)
    target = result.numpy()
    size = 2 * kernel_radius(sigma) + 1
    border = _OPENCV_BORDERS[edges]
    for channel in range(source.shape[0]):
        # ``dst`` is the channel's contiguous plane of ``result``: OpenCV writes in place.
        plane = target[channel]
        written = cv2.GaussianBlur(
            source[channel], (size, size), sigma, dst=plane, borderType=border
        )
        if not np.may_share_memory(written, plane):  # an OpenCV that ignored ``dst``
            plane[...] = written
    return result.to(image.dtype)


def _edge_indices(length: int, radius: int, edges: str, device: torch.device) -> torch.Tensor:
    """Indices that extend ``range(length)`` by ``radius`` on each side (any radius)."""
    index = torch.arange(-radius, length + radius, device=device)
    if edges == "mirror" and length > 1:
        period = 2 * (length - 1)
        index = index.remainder(period)
        return torch.where(index >= length, period - index, index)
    return index.clamp(0, length - 1)


def _blur_torch(image: torch.Tensor, sigma: float, edges: str) -> torch.Tensor:
    """Two 1-D depthwise convolutions on ``image``'s device (the GPU path)."""
    channels, height, width = image.shape
    compute = image.dtype if image.dtype != torch.float16 or image.is_cuda else torch.float32
    kernel = gaussian_kernel(sigma, device=image.device).to(compute)
    radius = (kernel.numel() - 1) // 2
    batch = image.detach().to(compute)[None]
    if edges == "black":
        batch = F.pad(batch, (radius, radius, radius, radius))
    else:
        batch = batch.index_select(3, _edge_indices(width, radius, edges, image.device))
        batch = batch.index_select(2, _edge_indices(height, radius, edges, image.device))
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    batch = F.conv2d(batch, horizontal, groups=channels)
    batch = F.conv2d(batch, vertical, groups=channels)
    return batch[0].to(image.dtype)


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
