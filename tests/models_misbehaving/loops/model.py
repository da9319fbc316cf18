"""A misbehaving test plug-in: predict never returns (a busy loop), so only a timeout ends it.

It declares a short ``timeout_s``, so the tests do not wait long for the server to kill it.
"""

from __future__ import annotations

from frameserve import ImageSpec, Model


class Loops(Model):
    """Loops forever in ``predict``."""

    id = "loops"
    timeout_s = 2.0
    cacheable = False  # every request must reach predict
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames, knobs):
        while True:
            pass
