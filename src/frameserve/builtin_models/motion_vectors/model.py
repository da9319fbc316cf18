"""Motion vectors from optical flow (OpenCV DIS): no downloaded weights, any frame size."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from frameserve import ChoiceKnob, FloatKnob, ImageSpec, KnobValues, Model
from frameserve.networks.flow_dis import QUALITY, dis_flow, flow_greys
from frameserve.networks.optical_flow import (
    MOTION_CHANNELS,
    check_same_size,
    motion_layer,
    smooth_flow,
)

#: Which flows each choice of the ``vectors`` knob computes.
WANTED = {"both": ("forward", "backward"), "forward": ("forward",), "backward": ("backward",)}


class MotionVectors(Model):
    """Forward and backward motion vectors for Nuke's motion layer, by optical flow (DIS).

    The inputs are this frame and its neighbours (``image@-1``, ``image@+1``; ``frameserve
    run`` reads them from the sequence). ``forward`` is where each pixel of this frame goes in
    the next frame, ``backward`` where it came from in the previous one, in pixels, ``u``
    positive to the right and ``v`` positive up (Nuke's convention). A neighbour identical to
    this frame (the ends of a shot, where ``frameserve run`` repeats the frame) gives vectors
    of exactly 0.
    """

    id = "motion_vectors"
    weights = ()  # DIS optical flow (OpenCV): no learned weights
    label = "Motion Vectors"
    description = (
        "Forward and backward motion vectors (Nuke's motion layer: forward.u/v, backward.u/v, "
        "pixels, v up) between this frame and its neighbours, by dense optical flow (OpenCV "
        "DIS with variational refinement). Needs no weights; any frame size, HDR plates too."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("motion", channels=4, channel_names=MOTION_CHANNELS),)
    temporal_window = (1, 1)
    colourspace_in = "srgb"  # flow is found on display-like values
    colourspace_out = "data"  # vectors are pixels: never colour-converted
    knobs = (
        ChoiceKnob(
            "quality",
            default="medium",
            choices=tuple(QUALITY),
            help="fast: works at most 1024 pixels wide; medium: at most 2048 (full HD at full "
            "resolution); high: full resolution, denser patches, more refinement (slowest).",
        ),
        ChoiceKnob(
            "vectors",
            default="both",
            choices=tuple(WANTED),
            help="Which vectors to compute; the others are left at 0 (half the time).",
        ),
        FloatKnob(
            "smoothing",
            default=0.0,
            min=0.0,
            max=50.0,
            help="Blur the vectors (standard deviation in pixels): smoother vectors for "
            "VectorBlur and retimes, softer motion edges.",
        ),
    )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        height, width = check_same_size(frames, model_id=self.id)
        image = frames["image"]
        neighbours = {"forward": frames["image@+1"], "backward": frames["image@-1"]}
        settings = QUALITY[str(knobs["quality"])]
        # One grey mapping for all three frames, whichever vectors are wanted.
        this_grey, next_grey, previous_grey = flow_greys(
            [image, neighbours["forward"], neighbours["backward"]]
        )
        greys = {"forward": next_grey, "backward": previous_grey}
        flows = {name: torch.zeros(2, height, width) for name in neighbours}
        for name in WANTED[str(knobs["vectors"])]:
            if not torch.equal(neighbours[name], image):
                flows[name] = dis_flow(this_grey, greys[name], settings)
        vectors = motion_layer(flows["forward"], flows["backward"])
        vectors = smooth_flow(vectors[None], float(knobs["smoothing"]))[0]
        return vectors.to(image.device)
