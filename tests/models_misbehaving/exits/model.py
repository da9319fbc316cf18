"""A misbehaving test plug-in: predict calls ``sys.exit(3)``."""

from __future__ import annotations

import sys

from frameserve import ImageSpec, Model


class Exits(Model):
    """Ends its process (or, run in the server's process, its thread) with exit status 3."""

    id = "exits"
    cacheable = False  # every request must reach predict
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames, knobs):
        sys.exit(3)
