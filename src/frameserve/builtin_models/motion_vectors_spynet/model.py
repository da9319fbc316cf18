"""Motion vectors from the SPyNet optical-flow network, with weights the TD downloads.

The published SPyNet weights are for non-commercial and scientific research only, so
frameserve does not ship them: download ``network-sintel-final.pytorch`` (the PyTorch
conversion in ``sniklaus/pytorch-spynet``) and set ``FRAMESERVE_SPYNET_WEIGHTS`` to its path.
The model is listed without them; using it without them fails with a message saying so. Key
mapping and preprocessing: :mod:`frameserve.networks.spynet`; conventions:
``docs/models/motion-vectors.md``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from frameserve import ChoiceKnob, FloatKnob, ImageSpec, KnobValues, Model, WeightsLicence
from frameserve.networks.optical_flow import (
    MOTION_CHANNELS,
    check_same_size,
    display_range,
    motion_layer,
    smooth_flow,
)
from frameserve.networks.spynet import SPyNet, estimate_flow, load_spynet
from frameserve.weights import user_weights_path

#: The environment variable naming the weights file.
WEIGHTS_VARIABLE = "FRAMESERVE_SPYNET_WEIGHTS"
#: The weights file expected there, in words.
WEIGHTS_WHAT = (
    "the SPyNet weights network-sintel-final.pytorch (from github.com/sniklaus/pytorch-spynet; "
    "free for non-commercial and research use only)"
)
#: How big the network sees the frames, by the ``resolution`` knob.
RESOLUTION = {"full": 1.0, "half": 0.5, "quarter": 0.25}
#: Which flows each choice of the ``vectors`` knob computes.
WANTED = {"both": ("forward", "backward"), "forward": ("forward",), "backward": ("backward",)}


class SPyNetMotionVectors(Model):
    """Forward and backward motion vectors for Nuke's motion layer, by the SPyNet network.

    Same inputs, outputs and conventions as ``motion_vectors``: this frame and its neighbours
    in; ``forward.u/v, backward.u/v`` out, in pixels, ``v`` positive up; a neighbour identical to
    this frame gives vectors of exactly 0.
    """

    id = "motion_vectors_spynet"
    weights = (
        WeightsLicence(
            name="SPyNet (your file)",
            licence="whatever the file's own licence says",
            source=f"a file the TD names in ${WEIGHTS_VARIABLE}",
            commercial=False,
            note="the published SPyNet weights are for non-commercial use only; frameserve "
            "cannot tell what a TD's file allows, so it is not cleared for commercial use",
        ),
    )
    label = "Motion Vectors (SPyNet)"
    description = (
        "Forward and backward motion vectors (Nuke's motion layer: forward.u/v, backward.u/v, "
        "pixels, v up) by the SPyNet optical-flow network (Ranjan and Black, CVPR 2017). "
        f"Needs the authors' weights: set {WEIGHTS_VARIABLE} to network-sintel-final.pytorch."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("motion", channels=4, channel_names=MOTION_CHANNELS),)
    temporal_window = (1, 1)
    colourspace_in = "srgb"  # trained on sRGB-encoded frames
    colourspace_out = "data"  # vectors are pixels: never colour-converted
    knobs = (
        ChoiceKnob(
            "resolution",
            default="full",
            choices=tuple(RESOLUTION),
            help="How big the network sees the frames: half or quarter for 4K plates or very "
            "large motion (faster, smoother, less detail).",
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

    net: SPyNet

    def setup(self, device: torch.device) -> None:
        self.net = load_spynet(user_weights_path(WEIGHTS_VARIABLE, WEIGHTS_WHAT), device)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        height, width = check_same_size(frames, model_id=self.id)
        image = frames["image"]
        neighbours = {"forward": frames["image@+1"], "backward": frames["image@-1"]}
        names = [
            name
            for name in WANTED[str(knobs["vectors"])]
            if not torch.equal(neighbours[name], image)
        ]
        flows = {name: image.new_zeros(2, height, width) for name in neighbours}
        if names:  # every pair in one batch
            firsts = display_range(image).expand(len(names), -1, -1, -1)
            seconds = display_range(torch.stack([neighbours[name] for name in names]))
            scale = RESOLUTION[str(knobs["resolution"])]
            estimated = estimate_flow(self.net, firsts, seconds, scale=scale)
            flows.update(zip(names, estimated, strict=True))
        vectors = motion_layer(flows["forward"], flows["backward"])
        return smooth_flow(vectors[None], float(knobs["smoothing"]))[0]
