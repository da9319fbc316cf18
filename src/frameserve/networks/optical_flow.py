"""Optical-flow conventions shared by the flow estimators and the motion-vector models.

A **flow** here is a float32 tensor ``(2, H, W)`` (or ``(N, 2, H, W)``) of displacements in
pixels, in image coordinates: channel 0 is ``dx`` (positive to the right), channel 1 is ``dy``
(positive *down*, top row first). The flow from frame A to frame B says where each pixel of A
went in B: ``A(p) ≈ B(p + flow(p))``, so :func:`backward_warp` of B by the flow rebuilds A.

**Nuke's motion vectors** differ in one sign: ``u`` is positive to the right, ``v`` positive
*up* (Nuke's y axis points up), so ``u = dx`` and ``v = -dy``. :func:`motion_layer` builds the
four channels of Nuke's ``motion`` layer (``forward.u``, ``forward.v``, ``backward.u``,
``backward.v``) from a forward flow (this frame to the next) and a backward flow (this frame to
the previous).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from frameserve.errors import FrameError

__all__ = [
    "MOTION_CHANNELS",
    "backward_warp",
    "check_same_size",
    "display_range",
    "motion_layer",
    "smooth_flow",
]

#: Channel names of Nuke's motion layer, in the order :func:`motion_layer` stacks them.
MOTION_CHANNELS = ("forward.u", "forward.v", "backward.u", "backward.v")

#: Where :func:`display_range` starts rolling highlights off (below it, values are kept).
SHOULDER_START = 0.8


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at ``p + flow(p)`` for every pixel ``p`` (bilinear; edges extended).

    Args:
        image: ``(N, C, H, W)`` floating-point frames, any values.
        flow: ``(N, 2, H, W)`` displacements in pixels, ``dx`` then ``dy`` (y down), the same
            dtype and device as ``image``.

    Returns:
        ``(N, C, H, W)``: the warped frames. Where ``image`` is frame B and ``flow`` the flow
        from frame A to B, the result approximates frame A.
    """
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"backward_warp takes (N, C, H, W) frames and an (N, 2, H, W) flow, got "
            f"{tuple(image.shape)} and {tuple(flow.shape)}"
        )
    if image.shape[0] != flow.shape[0] or image.shape[2:] != flow.shape[2:]:
        raise ValueError(
            f"backward_warp: frames {tuple(image.shape)} and flow {tuple(flow.shape)} differ in "
            "count or size"
        )
    _, _, height, width = image.shape
    ys = torch.arange(height, dtype=flow.dtype, device=flow.device).view(1, -1, 1)
    xs = torch.arange(width, dtype=flow.dtype, device=flow.device).view(1, 1, -1)
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    grid_x = (xs + flow[:, 0]) * (2.0 / max(width - 1, 1)) - 1.0
    grid_y = (ys + flow[:, 1]) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack((grid_x, grid_y), dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def motion_layer(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Return Nuke's motion layer ``(4, H, W)`` from two image-convention flows.

    Args:
        forward: ``(2, H, W)`` flow from this frame to the next (``dx``, ``dy`` down), pixels.
        backward: ``(2, H, W)`` flow from this frame to the previous one.

    Returns:
        float32 ``(4, H, W)``: ``forward.u, forward.v, backward.u, backward.v`` in pixels,
        ``u`` positive to the right, ``v`` positive up.
    """
    sign = torch.tensor([1.0, -1.0], dtype=torch.float32, device=forward.device).view(2, 1, 1)
    return torch.cat((forward.float() * sign, backward.float() * sign), dim=0)


def check_same_size(frames: Mapping[str, torch.Tensor], *, model_id: str) -> tuple[int, int]:
    """Return the ``(height, width)`` that every ``(C, H, W)`` frame shares.

    Raises:
        FrameError: two frames differ in size (naming each input and its size).
    """
    sizes = {name: (int(frame.shape[-2]), int(frame.shape[-1])) for name, frame in frames.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name!r} {w}x{h}" for name, (h, w) in sizes.items())
        raise FrameError(
            f"model {model_id!r} needs this frame and its neighbours at one size to find the "
            f"motion between them; got {listed}"
        )
    return next(iter(sizes.values()))


def display_range(image: torch.Tensor) -> torch.Tensor:
    """Return display-referred values folded into ``[0, 1]`` without clipping highlight detail.

    Values up to :data:`SHOULDER_START` are kept; above it a smooth shoulder (``tanh``) folds
    everything up to infinity into ``[SHOULDER_START, 1)``, so texture in highlights above 1
    (HDR plates in sRGB encoding) stays visible to a matcher. Negative values and NaN become 0.

    Args:
        image: floating-point tensor of any shape, sRGB-encoded (or other display) values.

    Returns:
        A tensor of the same shape and dtype with values in ``[0, 1]``.
    """
    knee = SHOULDER_START
    values = torch.nan_to_num(image, nan=0.0, posinf=1.0e6, neginf=0.0).clamp(min=0.0)
    rolled = knee + (1.0 - knee) * torch.tanh((values - knee) / (1.0 - knee))
    return torch.where(values > knee, rolled, values)


def smooth_flow(flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a flow with a separable Gaussian of ``sigma`` pixels (edges extended).

    Args:
        flow: ``(N, 2, H, W)`` floating-point flow (any channel count works).
        sigma: standard deviation in pixels; 0 or less returns ``flow`` unchanged.

    Returns:
        The blurred flow, same shape, dtype and device.
    """
    if sigma <= 0:
        return flow
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=flow.dtype, device=flow.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = flow.shape[1]
    padded = F.pad(flow, (radius, radius, 0, 0), mode="replicate")
    flow = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    padded = F.pad(flow, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
