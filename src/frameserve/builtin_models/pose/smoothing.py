"""Smoothing landmarks over a shot: a One-Euro filter over each person's recent frames.

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cut-off
rises with speed: still joints lose their jitter, fast ones keep up. For a sample ``x`` at a
time step ``dt`` (frames)::

    dx       = low-pass((x - previous) / dt, cut-off d_cutoff)
    cut-off  = min_cutoff + beta * |dx|
    filtered = low-pass(x, cut-off),   low-pass(v, c): alpha = 1 / (1 + 1 / (2 pi c dt))

Coordinates are divided by the person's size (the diagonal of the landmark box) before
filtering, so the same settings suit a close-up and a wide shot (MediaPipe does the same).

:class:`PoseHistory` keeps each recent frame's raw landmarks by frame number (a model serves
frames in any order, two at once with ``frameserve run --jobs 2``) and smooths a frame from the
frames before it that it holds: people are followed backwards by their hip centre, and the
filter runs forward over the person's track. A frame arriving before its predecessor is done is
smoothed from the frames that are; gaps count as longer time steps.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import replace

import torch

from frameserve.networks.blazepose import PoseLandmarks

__all__ = ["HISTORY_FRAMES", "PoseHistory", "one_euro", "smoothing_cutoffs"]

#: Frames before the current one the filter looks at (its memory is a few frames long).
HISTORY_FRAMES = 30
#: Shots (history keys) remembered at once.
HISTORY_SHOTS = 8
#: How fast the cut-off rises with speed, per body size per frame.
BETA = 4.0
#: Cut-off of the speed estimate, cycles per frame.
D_CUTOFF = 0.05
#: A person in an earlier frame is the same person when their hip centres are closer than
#: this fraction of the body size.
SAME_PERSON_DISTANCE = 0.5


def smoothing_cutoffs(strength: float) -> float:
    """The filter's minimum cut-off (cycles per frame) for a ``smoothing`` knob value 0-1.

    0.5 gives 0.04 (at 24 fps, 1 Hz: jitter gone, motion kept); 1 gives 0.005 (heavy);
    small values approach 0.33 (barely any smoothing).
    """
    return float(0.33 * (0.005 / 0.33) ** strength)


def _alpha(cutoff: float, dt: float) -> float:
    return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))


def one_euro(
    samples: Sequence[tuple[int, torch.Tensor]], min_cutoff: float, beta: float = BETA
) -> torch.Tensor:
    """Run the One-Euro filter over ``(frame, values)`` samples in frame order; return the last.

    ``values`` are tensors of one shape (filtered element by element), in units where speed
    is compared with ``beta`` (here: body sizes).
    """
    (previous_frame, filtered), *rest = samples
    speed = torch.zeros_like(filtered)
    for frame, values in rest:
        dt = float(max(frame - previous_frame, 1))
        raw_speed = (values - filtered) / dt
        speed = speed + _alpha(D_CUTOFF, dt) * (raw_speed - speed)
        cutoff = min_cutoff + beta * speed.abs()
        alpha = 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))
        filtered = filtered + alpha * (values - filtered)
        previous_frame = frame
    return filtered


def _size(points: torch.Tensor) -> float:
    """A person's size: the diagonal of the box around the 33 body landmarks."""
    body = points[:33, :2]
    extent = body.max(dim=0).values - body.min(dim=0).values
    return max(float(extent.norm()), 1.0)


def _hip(points: torch.Tensor) -> torch.Tensor:
    """The hip centre (auxiliary landmark 33)."""
    return points[33, :2]


class PoseHistory:
    """Recent frames' raw landmarks by shot and frame number, and smoothing from them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shots: OrderedDict[Hashable, dict[int, list[torch.Tensor]]] = OrderedDict()

    def smooth(
        self, shot: Hashable, frame: int, people: list[PoseLandmarks], strength: float
    ) -> list[PoseLandmarks]:
        """Remember ``people`` as frame ``frame`` of ``shot``; return them smoothed.

        Only the 33 body landmarks' x and y change; visibility, scores and the matte stay.
        """
        with self._lock:
            frames = self._shots.setdefault(shot, {})
            self._shots.move_to_end(shot)
            while len(self._shots) > HISTORY_SHOTS:
                self._shots.popitem(last=False)
            frames[frame] = [person.points for person in people]  # not the mattes
            for old in [f for f in frames if abs(f - frame) > 2 * HISTORY_FRAMES]:
                del frames[old]
            earlier = sorted(
                (f for f in frames if frame - HISTORY_FRAMES <= f < frame), reverse=True
            )
            history = [(f, frames[f]) for f in earlier]
        min_cutoff = smoothing_cutoffs(strength)
        return [self._smooth_person(person, frame, history, min_cutoff) for person in people]

    @staticmethod
    def _smooth_person(
        person: PoseLandmarks,
        frame: int,
        history: list[tuple[int, list[torch.Tensor]]],
        min_cutoff: float,
    ) -> PoseLandmarks:
        size = _size(person.points)
        track: list[tuple[int, torch.Tensor]] = []
        hip = _hip(person.points)
        for earlier, candidates in history:  # newest first
            best = min(candidates, key=lambda c: float((_hip(c) - hip).norm()), default=None)
            if best is None or float((_hip(best) - hip).norm()) > SAME_PERSON_DISTANCE * size:
                continue
            track.append((earlier, best))
            hip = _hip(best)
        if not track:
            return person
        samples = [(earlier, p[:33, :2] / size) for earlier, p in reversed(track)]
        samples.append((frame, person.points[:33, :2] / size))
        smoothed = one_euro(samples, min_cutoff) * size
        points = person.points.clone()
        points[:33, :2] = smoothed
        return replace(person, points=points)
