"""Carrying a Segment Anything matte through a shot: each frame prompted from the last one's mask.

``frameserve run segment --knob prompt_frame=1001 ...`` runs the frames one at a time, outward
from the prompt frame (see :mod:`frameserve.shots.run`), and tells the model each frame's
number (its ``frame`` knob). On the prompt frame the artist's clicks, box and strokes prompt
SAM; on every other frame the mask of the frame next to it (one closer to the prompt frame)
does, as SAM was trained to be prompted when it refines a mask:

1. That mask is moved to this frame when the motion is large: dense optical flow (DIS,
   :mod:`frameserve.networks.flow_dis`) from the neighbour to this frame at
   :data:`WORK_SIZE`, and, when the mask's median motion exceeds :data:`MOTION_PIXELS`, its
   pixels splatted along it (and SAM's low-resolution logits shifted by the median motion).
2. Three prompts are decoded (a few milliseconds each): the moved mask's box (padded by
   :data:`BOX_PAD` of its size) with one include click at its deepest point and its
   low-resolution logits as SAM's ``mask_input`` (moved the same way); the box and click
   alone; the box and click with exclude clicks just outside the moved mask. The mask that
   agrees best (IoU) with the moved mask is kept: the flow says where the object went, SAM
   says where its edges are now.

:class:`ShotMemory` holds, per shot (the prompts and frame size that define it), the prompt
frame's mask and those of the last :data:`FRAMES_KEPT` frames, for at most :data:`SHOTS_KEPT`
shots; older ones are dropped (each entry is about 1.3 MB).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from frameserve.builtin_models.segment.prompts import Prompt
from frameserve.networks.flow_dis import QUALITY, dis_flow
from frameserve.networks.optical_flow import backward_warp
from frameserve.networks.sam import LOW_RES, SamEmbedding

__all__ = [
    "BOX_PAD",
    "FRAMES_KEPT",
    "MOTION_PIXELS",
    "SHOTS_KEPT",
    "WORK_SIZE",
    "Carried",
    "ShotMemory",
    "agreement",
    "carried_prompts",
    "grey_for_flow",
]

#: Longest side, in pixels, of the greys and masks kept for carrying.
WORK_SIZE = 512
#: The previous mask is warped along the optical flow when its median motion is above this
#: many :data:`WORK_SIZE` pixels.
MOTION_PIXELS = 0.5
#: The carried box is padded by this fraction of its width and height on each side.
BOX_PAD = 0.05
#: Exclude clicks sit this fraction of the mask's size outside it.
RING_GAP = 0.08
#: Frames kept per shot besides the prompt frame.
FRAMES_KEPT = 3
#: Shots kept.
SHOTS_KEPT = 4


@dataclass(frozen=True)
class Carried:
    """One frame's mask as kept for the next frame.

    Attributes:
        low_res: ``(256, 256)`` SAM low-resolution logits.
        matte: ``(h, w)`` float32 0-1 at the work size (the decoder's mask, before refinement).
        grey: ``(h, w)`` uint8 grey of the frame at the work size, for optical flow.
    """

    low_res: np.ndarray
    matte: np.ndarray
    grey: np.ndarray


class ShotMemory:
    """The carried masks of a few shots, by shot key and frame number; safe across threads."""

    def __init__(self) -> None:
        """Start empty."""
        self._shots: OrderedDict[Hashable, OrderedDict[int, Carried]] = OrderedDict()
        self._pinned: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def get(self, shot: Hashable, frame: int) -> Carried | None:
        """Return the mask kept for ``frame`` of ``shot``, or None."""
        with self._lock:
            frames = self._shots.get(shot)
            return None if frames is None else frames.get(frame)

    def put(self, shot: Hashable, frame: int, carried: Carried, *, prompt_frame: bool) -> None:
        """Keep ``frame``'s mask; the prompt frame's stays while its shot is kept."""
        with self._lock:
            frames = self._shots.setdefault(shot, OrderedDict())
            self._shots.move_to_end(shot)
            frames[frame] = carried
            frames.move_to_end(frame)
            if prompt_frame:
                self._pinned[shot] = frame
            pinned = self._pinned.get(shot)
            while len(frames) > FRAMES_KEPT + (1 if pinned in frames else 0):
                oldest = next(f for f in frames if f != pinned)
                del frames[oldest]
            while len(self._shots) > SHOTS_KEPT:
                dropped, _ = self._shots.popitem(last=False)
                self._pinned.pop(dropped, None)


def work_size(height: int, width: int) -> tuple[int, int]:
    """Return the ``(h, w)`` of the kept greys and masks for a frame."""
    scale = min(1.0, WORK_SIZE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def grey_for_flow(image: torch.Tensor) -> np.ndarray:
    """Return the uint8 grey (Rec. 709 luma of sRGB values, clipped 0-1) at the work size."""
    size = work_size(int(image.shape[1]), int(image.shape[2]))
    rgb = torch.nan_to_num(image.detach().float().cpu(), nan=0.0).clamp(0.0, 1.0)
    small = F.interpolate(rgb[None], size=size, mode="bilinear", antialias=True)[0]
    luma = 0.2126 * small[0] + 0.7152 * small[1] + 0.0722 * small[2]
    return np.ascontiguousarray((luma * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy())


def carried_prompts(
    previous: Carried, grey: np.ndarray, embedding: SamEmbedding
) -> tuple[list[tuple[Prompt, np.ndarray | None]], np.ndarray] | None:
    """Return candidate prompts for this frame from the neighbour's mask, and that mask moved.

    ``grey`` is this frame's :func:`grey_for_flow`. The candidates (a prompt and an optional
    ``mask_input`` each) are: box, deepest click and the moved low-resolution mask; box and
    click alone; box, click and exclude clicks just outside the moved mask. The caller decodes
    each and keeps the mask that agrees best with the moved mask (returned ``(h, w)`` 0-1 at
    the work size). None when the neighbour's mask is empty (the object has left the frame).
    """
    matte = torch.from_numpy(previous.matte)
    low_res = torch.from_numpy(previous.low_res)
    if previous.grey.shape == grey.shape and bool((matte > 0.5).any()):
        flow = dis_flow(previous.grey, grey, QUALITY["fast"])  # previous frame -> this one
        moving = flow[:, matte > 0.5]
        shift = moving.median(dim=1).values
        if float(moving.norm(dim=0).median()) > MOTION_PIXELS:
            matte = _splat(matte, flow)
            low_res = _shift_low_res(low_res, shift, grey.shape, embedding)
    inside = (matte > 0.5).numpy().astype(np.uint8)
    if not inside.any():
        return None
    h, w = inside.shape
    to_image = np.array([embedding.width / w, embedding.height / h], np.float32)
    ys, xs = np.nonzero(inside)
    x0, x1 = float(xs.min()), float(xs.max() + 1)
    y0, y1 = float(ys.min()), float(ys.max() + 1)
    pad_x, pad_y = BOX_PAD * (x1 - x0), BOX_PAD * (y1 - y0)
    box = (
        max(0.0, x0 - pad_x) * float(to_image[0]),
        max(0.0, y0 - pad_y) * float(to_image[1]),
        min(float(w), x1 + pad_x) * float(to_image[0]),
        min(float(h), y1 + pad_y) * float(to_image[1]),
    )
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    click = (np.array([[x, y]], np.float32) + 0.5) * to_image
    include = Prompt(click, np.ones(1, np.int64), box)
    mask_input = np.ascontiguousarray(low_res.numpy(), dtype=np.float32)
    candidates: list[tuple[Prompt, np.ndarray | None]] = [(include, mask_input), (include, None)]
    outside = _ring_points(inside, max(x1 - x0, y1 - y0))
    if len(outside):
        ring = Prompt((outside + 0.5) * to_image, np.zeros(len(outside), np.int64), None)
        candidates.append((include.merged(ring), None))
    return candidates, np.ascontiguousarray(matte.numpy())


def agreement(matte: np.ndarray, moved: np.ndarray) -> float:
    """IoU of two ``(h, w)`` 0-1 masks at the work size (thresholded at 0.5)."""
    a, b = matte > 0.5, moved > 0.5
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def _ring_points(inside: np.ndarray, size: float) -> np.ndarray:
    """Up to four points just outside a mask: the extremes of a ring around it."""
    gap = max(2, round(RING_GAP * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))
    near = cv2.dilate(inside, kernel)
    far = cv2.dilate(near, kernel)
    ys, xs = np.nonzero((far > 0) & (near == 0))
    if not len(xs):
        return np.zeros((0, 2), np.float32)
    picks = {int(np.argmin(xs)), int(np.argmax(xs)), int(np.argmin(ys)), int(np.argmax(ys))}
    return np.array([[xs[i], ys[i]] for i in sorted(picks)], np.float32)


def _splat(matte: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Move a mask's pixels along the forward flow (previous frame -> this one).

    Forward splatting, not backward warping: background that the object uncovers has no
    match in the previous frame, and a backward warp would drag the mask over it.
    """
    ys, xs = torch.nonzero(matte > 0.5, as_tuple=True)
    h, w = matte.shape
    tx = (xs + flow[0, ys, xs]).round().long()
    ty = (ys + flow[1, ys, xs]).round().long()
    keep = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    moved = np.zeros((h, w), np.uint8)
    moved[ty[keep].numpy(), tx[keep].numpy()] = 1
    kernel = np.ones((3, 3), np.uint8)  # close the pinholes a stretching motion leaves
    closed = cv2.morphologyEx(moved, cv2.MORPH_CLOSE, kernel)
    return torch.from_numpy(closed.astype(np.float32))


def _shift_low_res(
    low_res: torch.Tensor, shift: torch.Tensor, work: tuple[int, ...], embedding: SamEmbedding
) -> torch.Tensor:
    """Shift SAM's ``(256, 256)`` logits by the mask's median motion (work-size pixels)."""
    rh, rw = embedding.resized_size
    lh, lw = max(1, round(rh * LOW_RES / 1024)), max(1, round(rw * LOW_RES / 1024))
    dx = float(shift[0]) * lw / work[1]
    dy = float(shift[1]) * lh / work[0]
    flow = torch.tensor([-dx, -dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, lh, lw)
    out = low_res.clone()
    region = low_res[:lh, :lw][None, None].contiguous()
    out[:lh, :lw] = backward_warp(region, flow.contiguous())[0, 0]
    return out
