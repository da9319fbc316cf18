"""Retime: the frame at any time between two frames, by RIFE (Practical-RIFE v4.0, MIT).

How the frame at ``t`` is made (see :mod:`frameserve.networks.rife` for the network)::

    a, b (sRGB-encoded, any values) --roll highlights off into 0-1--> what the network sees
        --RIFE--> flows F_t0, F_t1 (pixels) and blend mask M, at full size
    frame = M * warp(a, F_t0) + (1 - M) * warp(b, F_t1)      on the plate's own values
            [+ the refinement U-Net's residual, with ``refine``]

**HDR.** The network was trained on sRGB-encoded 0-1 frames. It *finds the motion* on a
version of the plates folded into 0-1: values up to 0.8 kept, a smooth shoulder above
(:func:`~frameserve.networks.optical_flow.display_range`), so texture in highlights above 1
stays visible to it. The *pixels* of the result are then the plates' own values moved by that
flow and blended by that mask: RIFE's blend is linear in the images, so highlights above 1 and
negative values are carried through the warp exactly, never clipped. (Equivalently: the
network's 0-1 answer plus the part of each plate outside 0-1, warped with the same flow and
mask.) NaN become 0 and infinities ±65504 (the largest half float) before the warp, so one bad
pixel cannot spread NaN through its bilinear neighbours. With ``refine`` the U-Net's
residual (a correction in ``[-1, 1]``) is added unclamped; the authors clamp the sum to 0-1,
frameserve does not.

**Ends.** ``t = 0`` returns ``a`` and ``t = 1`` returns ``b`` exactly (the network itself comes
back only approximately there, within about 0.01 on average).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from frameserve import (
    BoolKnob,
    ChoiceKnob,
    FloatKnob,
    ImageSpec,
    KnobValues,
    Model,
)
from frameserve.errors import FrameError
from frameserve.networks.optical_flow import display_range
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

__all__ = ["Retime", "carried_values", "same_size"]

#: Infinities in a plate become this (float16's largest value) before warping.
LARGEST = 65504.0


def same_size(frames: Mapping[str, torch.Tensor], model_id: str) -> tuple[int, int]:
    """The ``(height, width)`` two ``(C, H, W)`` inputs share.

    Raises:
        FrameError: they differ (naming each input and its size).
    """
    sizes = {name: (int(f.shape[-2]), int(f.shape[-1])) for name, f in frames.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name!r} {w}x{h}" for name, (h, w) in sizes.items())
        raise FrameError(f"model {model_id!r} needs its frames at one size; got {listed}")
    return next(iter(sizes.values()))


def carried_values(image: torch.Tensor) -> torch.Tensor:
    """``image`` with NaN as 0 and infinities as ±:data:`LARGEST`; every other value kept."""
    return torch.nan_to_num(image, nan=0.0, posinf=LARGEST, neginf=-LARGEST)


class Retime(Model):
    """Makes the frame at time ``t`` between frames ``a`` (t=0) and ``b`` (t=1), by RIFE.

    For slow motion, speed ramps and replacing a dropped or doubled frame. Inputs ``a`` and
    ``b`` are two frames of one shot (usually neighbours); the output is the in-between frame,
    HDR values carried through (see the module docstring).
    """

    id = "retime"
    label = "Retime (RIFE)"
    description = (
        "The frame at time t between frames a (t=0) and b (t=1), by RIFE (Practical-RIFE v4.0, "
        "Huang et al., MIT): learned flows both ways and a blend mask. For slow motion, speed "
        "ramps and dropped frames; HDR values carried through, never clipped."
    )
    inputs = (ImageSpec("a", channels=3), ImageSpec("b", channels=3))
    outputs = (ImageSpec("image", channels=3),)
    colourspace_in = "srgb"  # the network was trained on sRGB-encoded frames
    colourspace_out = "srgb"
    weights = (RIFE_LICENCE,)
    knobs = (
        FloatKnob(
            "t",
            default=0.5,
            min=0.0,
            max=1.0,
            help="Time of the frame to make: 0 is a, 1 is b, 0.5 half way. 0 and 1 return the "
            "input exactly.",
        ),
        ChoiceKnob(
            "scale",
            default="auto",
            choices=tuple(SCALES),
            help="Fraction of the frame size the motion is found at. auto: 1 up to 2K, 0.5 up "
            "to 4K (the authors' advice for 4K), 0.25 above. 2: finer motion on small frames "
            "(4 times the time); lower: faster, better at very large motion, less fine detail.",
        ),
        BoolKnob(
            "ensemble",
            default=False,
            help="Also estimate with a and b swapped and average (the authors' option): a "
            "little steadier, twice the time.",
        ),
        BoolKnob(
            "refine",
            default=False,
            help="Add the refinement U-Net's correction (the authors' fastmode off): a small "
            "gain on detail at occlusions, about 1.7 times the time.",
        ),
    )

    net: IFNet

    def setup(self, device: torch.device) -> None:
        self.net = load_rife(shipped_weights_path(*RIFE_WEIGHTS), device)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        height, width = same_size({"a": frames["a"], "b": frames["b"]}, self.id)
        a, b = frames["a"], frames["b"]
        t = float(knobs["t"])
        if t <= 0.0:
            return a.clone()
        if t >= 1.0:
            return b.clone()
        both = torch.stack((a, b)).float()
        seen, carried = display_range(both), carried_values(both)
        with torch.inference_mode():
            result = interpolate(
                self.net,
                seen[:1],
                seen[1:],
                seen.new_full((1, 1, 1, 1), t),
                scale=choose_scale(str(knobs["scale"]), height, width),
                ensemble=bool(knobs["ensemble"]),
                refine=bool(knobs["refine"]),
                carry=(carried[:1], carried[1:]),
            )
        assert result.frame is not None
        return result.frame[0].to(a.dtype)
