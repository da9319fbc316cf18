"""A misbehaving test plug-in: predict returns an ``(H, W)`` tensor for a ``(C, H, W)`` output."""

from __future__ import annotations

from frameserve import ImageSpec, Model


class WrongShape(Model):
    """Returns the first channel alone, without its channel axis."""

    id = "wrong_shape"
    cacheable = False  # every request must reach predict
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames, knobs):
        return frames["image"][0]
