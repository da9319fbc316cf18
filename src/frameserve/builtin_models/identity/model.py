"""Identity: returns its input unchanged (for testing pipelines and measuring overhead)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from frameserve import ImageSpec, KnobValues, Model


class Identity(Model):
    """Returns the frame it is given, bit for bit (NaN and Inf included)."""

    id = "identity"
    weights = ()  # no learned weights
    label = "Identity"
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return frames["image"]
