"""Motion vectors from RIFE's learned flow (Practical-RIFE v4.0, MIT weights shipped).

The same inputs, output and conventions as ``motion_vectors`` (Nuke's motion layer:
``forward.u/v, backward.u/v``, pixels, ``v`` positive up; a neighbour identical to this frame
gives vectors of exactly 0), with flow from the RIFE interpolation network instead of DIS. RIFE
finds flows from the in-between frame at ``t = 0.5`` to both neighbours; :func:`flow_between`
turns them into the flow from this frame to the neighbour on this frame's pixels. Both pairs
(this -> next, this -> previous) run as one batch. The frames are folded into 0-1 for the
network as for the other motion-vector models
(:func:`~frameserve.networks.optical_flow.display_range`), so HDR plates work.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from frameserve import BoolKnob, ChoiceKnob, FloatKnob, ImageSpec, KnobValues, Model
from frameserve.networks.optical_flow import (
    MOTION_CHANNELS,
    backward_warp,
    check_same_size,
    display_range,
    motion_layer,
    smooth_flow,
)
from frameserve.networks.rife import (
    RIFE_LICENCE,
    RIFE_WEIGHTS,
    SCALES,
    IFNet,
    choose_scale,
    interpolate,
    load_rife,
)
from frameserve.weights import shipped_weights_path

__all__ = ["LearnedMotionVectors", "flow_between"]

#: Which flows each choice of the ``vectors`` knob computes.
WANTED = {"both": ("forward", "backward"), "forward": ("forward",), "backward": ("backward",)}


def flow_between(flow: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """The flow from ``I0`` to ``I1`` on ``I0``'s pixels, from the flows at ``t = 0.5``.

    At ``t = 0`` the network puts all the weight on ``I0`` and its flow to ``I1`` is not
    trained to be right, so the motion between the frames is read half way instead: the point
    seen at ``q`` at ``t = 0.5`` moves by ``D(q) = F_t1(q) - F_t0(q)`` from ``I0`` to ``I1``
    and sits at ``p = q + F_t0(q)`` in ``I0``. For every pixel ``p`` of ``I0``, ``q`` is found
    by the fixed-point iteration ``q = p - F_t0(q)`` (from ``q = p + D(p) / 2``) and
    ``D(q)`` returned.

    Args:
        flow: ``(N, 4, H, W)`` :attr:`frameserve.networks.rife.RifeResult.flow` of a run at
            ``t = 0.5``.
        iterations: fixed-point steps (on the known-warp test the mean error changes by under
            0.0001 pixel from 3 steps to 6).

    Returns:
        ``(N, 2, H, W)`` pixels, ``dx, dy`` (y down): ``I0(p) ≈ I1(p + flow(p))``.
    """
    to0, to1 = flow[:, :2], flow[:, 2:4]
    travel = to1 - to0
    offset = travel / 2  # q - p
    for _ in range(iterations):
        offset = -backward_warp(to0, offset)
    return backward_warp(travel, offset)


class LearnedMotionVectors(Model):
    """Forward and backward motion vectors for Nuke's motion layer, by RIFE's learned flow.

    Inputs: this frame and its neighbours (``image@-1``, ``image@+1``); output: ``forward.u/v``
    (where each pixel goes in the next frame) and ``backward.u/v`` (where it came from), in
    pixels, ``u`` right, ``v`` up.
    """

    id = "motion_vectors_learned"
    label = "Motion Vectors (RIFE)"
    description = (
        "Forward and backward motion vectors (Nuke's motion layer: forward.u/v, backward.u/v, "
        "pixels, v up) from the RIFE frame-interpolation network's learned flow (Practical-RIFE "
        "v4.0, MIT: weights shipped, commercial use allowed)."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("motion", channels=4, channel_names=MOTION_CHANNELS),)
    temporal_window = (1, 1)
    colourspace_in = "srgb"  # trained on sRGB-encoded frames
    colourspace_out = "data"  # vectors are pixels: never colour-converted
    weights = (RIFE_LICENCE,)
    knobs = (
        ChoiceKnob(
            "scale",
            default="auto",
            choices=tuple(SCALES),
            help="Fraction of the frame size the flow is found at. auto: 1 up to 2K, 0.5 up to "
            "4K, 0.25 above. 2 gives finer vectors on small frames (4 times the time); lower "
            "is faster and reaches larger motion.",
        ),
        ChoiceKnob(
            "vectors",
            default="both",
            choices=tuple(WANTED),
            help="Which vectors to compute; the others are left at 0 (half the time).",
        ),
        BoolKnob(
            "ensemble",
            default=False,
            help="Also estimate with the frames swapped and average (twice the time).",
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

    net: IFNet

    def setup(self, device: torch.device) -> None:
        self.net = load_rife(shipped_weights_path(*RIFE_WEIGHTS), device)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        height, width = check_same_size(frames, model_id=self.id)
        image = frames["image"]
        neighbours = {"forward": frames["image@+1"], "backward": frames["image@-1"]}
        names = [
            name
            for name in WANTED[str(knobs["vectors"])]
            if not torch.equal(neighbours[name], image)
        ]
        flows = {
            name: image.new_zeros(2, height, width, dtype=torch.float32) for name in neighbours
        }
        if names:  # every pair in one batch
            firsts = display_range(image.float()).expand(len(names), -1, -1, -1)
            seconds = display_range(torch.stack([neighbours[name].float() for name in names]))
            with torch.inference_mode():
                result = interpolate(
                    self.net,
                    firsts,
                    seconds,
                    firsts.new_full((len(names), 1, 1, 1), 0.5),
                    scale=choose_scale(str(knobs["scale"]), height, width),
                    ensemble=bool(knobs["ensemble"]),
                    make_frame=False,
                )
                estimated = flow_between(result.flow)
            flows.update(zip(names, estimated, strict=True))
        vectors = motion_layer(flows["forward"], flows["backward"])
        return smooth_flow(vectors[None], float(knobs["smoothing"]))[0]
