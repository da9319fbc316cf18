"""The ``segment`` model's knobs, and the prompt and shot they describe."""

from __future__ import annotations

import math

from frameserve.builtin_models.person_matte.edges import EDGE_KNOBS
from frameserve.builtin_models.segment.prompts import Prompt, box_from_knobs, parse_points
from frameserve.errors import KnobError
from frameserve.networks.sam import MASK_CHOICES
from frameserve.plugin.knobs import ChoiceKnob, FloatKnob, IntKnob, KnobValues, StringKnob

__all__ = ["BOX_KNOBS", "KNOBS", "prompt_from_knobs", "shot_key"]

#: The box knobs, in Nuke's BBox order (left, bottom, right, top).
BOX_KNOBS = ("box_left", "box_bottom", "box_right", "box_top")
#: Nuke coordinates far outside any frame are refused (the knob is probably wrong).
COORDINATE_LIMIT = 1e6

_BOX_HELP = (
    "Box around the object, {side} edge, in Nuke pixel coordinates (origin bottom-left, y up). "
    "The box is off while its width or height is 0."
)

KNOBS = (
    StringKnob(
        "points",
        default="",
        help=(
            "Clicks in Nuke pixel coordinates (origin bottom-left, y up): 'x,y,+' on the "
            "object, 'x,y,-' on what is not, separated by spaces, e.g. '960,540,+ 200,80,-'."
        ),
    ),
    *(
        FloatKnob(
            name,
            default=0.0,
            min=-COORDINATE_LIMIT,
            max=COORDINATE_LIMIT,
            help=_BOX_HELP.format(side=name.removeprefix("box_")),
        )
        for name in BOX_KNOBS
    ),
    ChoiceKnob(
        "mask_choice",
        default="auto",
        choices=MASK_CHOICES,
        help=(
            "Which of Segment Anything's masks: auto (its own pick: for one click the "
            "candidate it trusts most, for several clicks its single answer), or whole / part "
            "/ sub-part: the largest, middle or smallest of its three candidates."
        ),
    ),
    *EDGE_KNOBS,
    ChoiceKnob(
        "output",
        default="plate_and_matte",
        choices=("plate_and_matte", "matte_only"),
        help="plate_and_matte: the plate with the matte in alpha. matte_only: black RGB, "
        "the matte in alpha.",
    ),
    IntKnob(
        "prompt_frame",
        default=-1,
        min=-1,
        help=(
            "-1: the prompts apply to every frame on its own (interactive roto). A frame "
            "number: the prompts were placed on that frame, and frameserve run carries the "
            "matte from it through the shot, each frame prompted from its neighbour's mask."
        ),
    ),
    IntKnob(
        "frame",
        default=0,
        help=(
            "This frame's number, for carrying a matte (prompt_frame). frameserve run sets it; "
            "in Nuke, give it the expression 'frame'."
        ),
    ),
)

#: Knobs that shape the final matte without changing SAM's mask; they do not define a shot.
_FINISHING = frozenset({"threshold", "softness", "grow", "output", "frame"})


def prompt_from_knobs(knobs: KnobValues, height: int) -> Prompt:
    """Return the clicks of ``points`` and the box knobs' box, in image pixels.

    Raises:
        KnobError: a click cannot be read or lies absurdly far outside the frame.
    """
    prompt = parse_points(str(knobs["points"]), height)
    values = prompt.points.reshape(-1)
    if values.size and not all(math.isfinite(v) and abs(v) < COORDINATE_LIMIT for v in values):
        raise KnobError(
            f"knob 'points': every coordinate must be a finite number of pixels below "
            f"{COORDINATE_LIMIT:g} in size"
        )
    left, bottom, right, top = (float(knobs[name]) for name in BOX_KNOBS)  # type: ignore[arg-type]
    box = box_from_knobs(left, bottom, right, top, height)
    return Prompt(prompt.points, prompt.labels, box)


def shot_key(knobs: KnobValues, prompt: Prompt, height: int, width: int) -> tuple[object, ...]:
    """Return what identifies one carried shot: the prompts, the choice and the frame size."""
    settings = tuple(sorted((k, str(v)) for k, v in knobs.items() if k not in _FINISHING))
    return (
        settings,
        prompt.points.tobytes(),
        prompt.labels.tobytes(),
        prompt.box,
        height,
        width,
    )
