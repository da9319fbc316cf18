"""A test model that computes for a while (real CPU work), to test concurrency."""

from __future__ import annotations

import time

import torch

from frameserve import FloatKnob, ImageSpec, Model


class Slow(Model):
    """Returns its input after about ``seconds`` of matrix multiplications."""

    id = "slow"
    cacheable = False  # every request must really compute (concurrency tests)
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)
    knobs = (FloatKnob("seconds", default=1.0, min=0.0, max=30.0),)

    def predict(self, frames, knobs):
        end = time.monotonic() + float(knobs["seconds"])
        work = torch.rand(256, 256)
        while time.monotonic() < end:
            work = torch.tanh(work @ work)
        return frames["image"] + 0.0 * work.sum()
