"""A misbehaving test plug-in: predict returns a frame of NaN.

frameserve passes NaN through untouched (frames are never clipped or cleaned), so its clients
get NaN back: the plug-in's mistake is visible, not hidden.
"""

from __future__ import annotations

import torch

from frameserve import ImageSpec, Model


class Nan(Model):
    """Returns NaN in every channel of every pixel."""

    id = "nan"
    cacheable = False  # every request must reach predict
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames, knobs):
        return torch.full_like(frames["image"], float("nan"))
