"""Difference: compares two plates (a two-input model)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from frameserve import BoolKnob, FloatKnob, ImageSpec, KnobValues, Model
from frameserve.errors import FrameError


class Difference(Model):
    """Returns (A - B) x gain, or its absolute value: where two plates differ, and by how much."""

    id = "difference"
    weights = ()  # no learned weights
    label = "Difference"
    inputs = (ImageSpec("a", channels=3), ImageSpec("b", channels=3))
    outputs = (ImageSpec("image", channels=3),)
    knobs = (
        BoolKnob("absolute", default=True, help="Return |A - B| instead of the signed A - B."),
        FloatKnob("gain", default=1.0, min=0.0, max=1000.0, help="Multiplies the difference."),
    )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        a, b = frames["a"], frames["b"]
        if a.shape != b.shape:
            raise FrameError(
                f"inputs 'a' and 'b' must have the same size: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        difference = (a - b) * float(knobs["gain"])
        return difference.abs() if knobs["absolute"] else difference
