"""A misbehaving test plug-in: predict raises, every time."""

from __future__ import annotations

from frameserve import ImageSpec, Model


class Raises(Model):
    """Raises ``RuntimeError`` instead of returning a frame."""

    id = "raises"
    cacheable = False  # every request must reach predict
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames, knobs):
        raise RuntimeError("this plug-in raises on purpose")
