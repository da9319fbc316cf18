"""Random augmentation of training crops: flips, 90° rotations and a global gain.

The same transform is applied to the input and its target, so the pair stays consistent:

- **flips** (horizontal, vertical) and **rotations** (0, 90, 180, 270°) move pixels only; they
  are right for every effect that has no direction (grades, blurs, grain, sharpening) and wrong
  for effects that do (a motion blur along x, a light wrap from the left): turn them off there.
- **colour jitter** multiplies input and target by one random gain between 0.8 and 1.25
  (log-uniform, the same for every channel). That keeps the pair consistent only for effects
  that commute with exposure, ``f(g * x) = g * f(x)`` (linear filters such as blurs and
  sharpening, defocus, denoising of additive grain whose strength scales with the plate), not
  for grades with an offset, a gamma or a clip. It is off by default.

Random numbers come from a :class:`numpy.random.Generator` the caller owns, drawn in a fixed
order, so a seeded generator gives the same crops every run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["GAIN_RANGE", "Augmentation", "Transform"]

logger = logging.getLogger(__name__)

#: The smallest and largest colour-jitter gain.
GAIN_RANGE = (0.8, 1.25)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Transform:
    """One drawn transform: quarter turns, flips and a gain."""

    quarter_turns: int = 0
    flip_horizontal: bool = False
    flip_vertical: bool = False
    gain: float = 1.0

    def apply(self, array: FloatArray) -> FloatArray:
        """Return ``array`` (``(C, H, W)`` or ``(N, C, H, W)``) transformed, as a new array."""
        result = array
        if self.quarter_turns:
            result = np.rot90(result, self.quarter_turns, axes=(-2, -1))
        if self.flip_horizontal:
            result = result[..., ::-1]
        if self.flip_vertical:
            result = result[..., ::-1, :]
        if self.gain != 1.0:
            return np.multiply(result, np.float32(self.gain), dtype=np.float32)
        return np.ascontiguousarray(result)


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """Which augmentations are on; :meth:`draw` picks one random transform."""

    flips: bool = True
    rotations: bool = True
    colour_jitter: bool = False

    def draw(self, rng: np.random.Generator) -> Transform:
        """Return a random transform drawn from ``rng`` (nothing is drawn for what is off)."""
        turns = int(rng.integers(4)) if self.rotations else 0
        flip_h = flip_v = False
        if self.flips:
            flip_h, flip_v = (bool(b) for b in rng.integers(2, size=2))
        gain = 1.0
        if self.colour_jitter:
            low, high = GAIN_RANGE
            gain = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return Transform(turns, flip_h, flip_v, gain)
