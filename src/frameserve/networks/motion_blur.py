"""Motion paths: blur kernels, and the numbers the deblur network is told about a path.

A camera that moves while the shutter is open smears each point of light along a path. A path
here is ``length`` pixels long, heads in direction ``angle`` at its middle and turns steadily
by ``turn`` radians in all (0: a straight line). :func:`motion_kernel` draws it into a
normalised kernel centred on the path's centre of mass, so blurring does not shift the image;
:func:`blur` applies kernels in linear light, where light adds up along the path.

The ``deblur`` network is not blind: it is told the path, as five numbers per pixel
(:func:`path_code`, constant over the frame) beside the blurred RGB. The code is the same for
a path and the same path walked backwards (``angle + pi``, ``-turn``), which blurs alike:

- ``length / 16 * cos(2 angle)``, ``length / 16 * sin(2 angle)``: the direction, as a line;
- ``length / 16``;
- ``turn / 2 * cos(angle)``, ``turn / 2 * sin(angle)``: which way it bends.

Angles are in image coordinates: x to the right, y **down** (rows from the top), radians from
x towards y. Frames are float32 ``(N, C, H, W)`` sRGB values in 0-1.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

__all__ = [
    "PATH_CODE_CHANNELS",
    "blur",
    "linear_to_srgb",
    "motion_kernel",
    "path_code",
    "srgb_to_linear",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

#: Channels of :func:`path_code`.
PATH_CODE_CHANNELS = 5
_LENGTH_SCALE = 16.0


def srgb_to_linear(values: torch.Tensor) -> torch.Tensor:
    """Decode sRGB-encoded values to linear light (IEC 61966-2-1), clamped to 0-1 first."""
    values = values.clamp(0.0, 1.0)
    return torch.where(
        values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055).clamp_min(0.0) ** 2.4
    )


def linear_to_srgb(values: torch.Tensor) -> torch.Tensor:
    """Encode linear values with the sRGB curve (IEC 61966-2-1), clamped to 0-1 first."""
    values = values.clamp(0.0, 1.0)
    return torch.where(
        values <= 0.0031308, values * 12.92, 1.055 * values.clamp_min(1e-12) ** (1 / 2.4) - 0.055
    )


def motion_kernel(
    length: float,
    *,
    angle: float,
    turn: float = 0.0,
    speed_warp: float = 1.0,
    size: int | None = None,
) -> FloatArray:
    """Return a normalised ``(size, size)`` kernel of a motion path ``length`` pixels long.

    Args:
        length: the path's length in pixels (0: a single pixel, no blur).
        angle: the direction it heads in at its middle, radians (image coordinates, y down).
        turn: how far it turns, steadily, over its length, radians (0: a straight line).
        speed_warp: bends the speed along it (1: even; otherwise slower at one end, so that
            end weighs more).
        size: the kernel's side, odd; by default the smallest that holds the path.

    Raises:
        ValueError: ``size`` is even or too small for the path.
    """
    samples = max(8, math.ceil(length * 8))
    t = (np.arange(samples, dtype=np.float64) + 0.5) / samples
    arc = length * t**speed_warp  # position along the path at even time steps
    heading = angle + turn * (arc / max(length, 1e-9) - 0.5)
    step = np.diff(arc, prepend=0.0)
    x = np.cumsum(step * np.cos(heading)) - 0.5 * step * np.cos(heading)  # segment midpoints
    y = np.cumsum(step * np.sin(heading)) - 0.5 * step * np.sin(heading)
    x -= x.mean()
    y -= y.mean()
    reach = math.ceil(max(np.abs(x).max(), np.abs(y).max())) + 1
    if size is None:
        size = 2 * reach + 1
    elif size < 2 * reach + 1 or size % 2 == 0:
        raise ValueError(f"a kernel of {size} pixels cannot hold a path reaching {reach}")
    centre = size // 2
    kernel = np.zeros((size, size), np.float64)
    left, top = np.floor(x), np.floor(y)
    fx, fy = x - left, y - top
    cols, rows = left.astype(int) + centre, top.astype(int) + centre
    np.add.at(kernel, (rows, cols), (1 - fx) * (1 - fy))
    np.add.at(kernel, (rows, cols + 1), fx * (1 - fy))
    np.add.at(kernel, (rows + 1, cols), (1 - fx) * fy)
    np.add.at(kernel, (rows + 1, cols + 1), fx * fy)
    normalised: FloatArray = (kernel / kernel.sum()).astype(np.float32)
    return normalised


def blur(frames: torch.Tensor, kernels: torch.Tensor, *, linear: bool = True) -> torch.Tensor:
    """Blur each frame of ``(N, C, H, W)`` sRGB frames with its own ``(N, K, K)`` kernel.

    With ``linear`` the frames are decoded to linear light first and encoded again after.
    Returns ``(N, C, H - K + 1, W - K + 1)``: only pixels whose whole neighbourhood was there.
    """
    count, channels, height, width = frames.shape
    size = kernels.shape[-1]
    values = srgb_to_linear(frames) if linear else frames
    weight = kernels.to(values).flip(-1, -2)  # a convolution, not a correlation
    weight = weight[:, None].repeat_interleave(channels, dim=0)
    blurred = F.conv2d(
        values.reshape(1, count * channels, height, width), weight, groups=count * channels
    )
    blurred = blurred.reshape(count, channels, height - size + 1, width - size + 1)
    return linear_to_srgb(blurred) if linear else blurred


def path_code(length: float, angle: float, turn: float) -> torch.Tensor:
    """Return the five numbers that tell the deblur network a path (see the module
    docstring), as a float32 tensor of shape ``(5,)``."""
    scaled = length / _LENGTH_SCALE
    return torch.tensor(
        [
            scaled * math.cos(2 * angle),
            scaled * math.sin(2 * angle),
            scaled,
            turn / 2 * math.cos(angle),
            turn / 2 * math.sin(angle),
        ],
        dtype=torch.float32,
    )
