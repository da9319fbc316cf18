"""Person matte (roto): SINet or ExtremeC3Net, refined to the full frame by a guided filter.

How a frame becomes a matte::

    plate (sRGB-encoded, any size) --clamp 0-1, shrink--> guide (about 2x the network size)
        --shrink--> network (short side ``network_size``) --> person probability, low-res
    probability --bilinear to the guide's size--> + hints (include / exclude)
        --guided filter solve (radius ``snap`` network pixels)--> coefficients
    coefficients . full-resolution plate --> soft matte with the plate's edges
        --threshold / softness--> --grow / choke--> [hints as painted] --> alpha

1. The networks were trained on 224x224 portraits (sRGB photographs, BGR order, normalised
   with the authors' mean and standard deviation). The frame is shrunk with its aspect ratio
   kept so that its short side is ``network_size`` (rounded to a multiple of 32).
2. A low-resolution matte upscaled bilinearly has edges several times ``frame / network``
   pixels wide (a network pixel is 10 pixels of a 4K frame, and the network's own edges span
   a few) and blind to the plate. A fast guided filter
   (:mod:`frameserve.networks.guided_filter`) instead fits, in windows about ``snap`` network
   pixels wide, a linear map from the plate's colours to the matte, and applies it to the
   full-resolution plate: edges move onto the plate's edges and are as sharp as they are (a
   few pixels at 4K).
3. ``threshold`` and ``softness`` turn the refined values into the final edge, ``grow`` moves
   it by whole pixels.

**Hints** (optional second input, two channels): channel 0 (red) is where the person *is*,
channel 1 (green) where it is *not*, 0-1 (soft edges allowed; include first, exclude wins
where both are painted). They are applied to the network's matte *before* the guided filter,
so the edges of a painted area snap to edges in the plate (``hints_mode`` "follow_plate"),
and with "as_painted" also to the final matte, so nothing outside an exclude shape survives.

**Colour**: the model works in sRGB-encoded values (``colourspace_in = "srgb"``). Values outside
0-1 (HDR highlights, negative lobes) and NaN are clamped to 0-1 for the network and the guide
only; the plate's RGB is returned untouched (the runner converts it back exactly) and the matte
rides in alpha, which colour conversion copies as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from frameserve.builtin_models.matting import clean_unit, resize, shrink
from frameserve.builtin_models.person_matte.edges import EDGE_KNOBS, grow_matte, shape_edge
from frameserve.errors import FrameError
from frameserve.networks.extremec3 import load_extremec3
from frameserve.networks.guided_filter import apply_guided_filter, solve_guided_filter
from frameserve.networks.sinet import SIZE_MULTIPLE, load_sinet
from frameserve.plugin.knobs import ChoiceKnob, FloatKnob, IntKnob, KnobValues
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, SpatialNeeds
from frameserve.weights import shipped_weights_path

__all__ = [
    "NETWORKS",
    "PersonMatte",
    "network_size",
    "normalise_for_network",
    "person_probability",
]

log = logging.getLogger(__name__)

#: Knob value -> shipped weights file (``portrait-matte`` family, MIT licence beside them).
NETWORKS = {"sinet": "SINet.pth", "extremec3net": "ExtremeC3.pth"}
#: The authors' per-channel mean and standard deviation of their training photographs, in BGR
#: order and 0-255 units.
BGR_MEAN = (107.304565, 115.69884, 132.35703)
BGR_STD = (63.97182, 65.1337, 68.29726)
#: The guided filter is solved at up to this many times the network's size.
SOLVE_SCALE = 2
#: The guided filter's regularisation (guide values 0-1): edges whose contrast is well below
#: sqrt(EDGE_EPS) are smoothed over instead of followed.
EDGE_EPS = 1e-4
#: The longest side the network sees is at most this many times its short side.
MAX_ASPECT = 4


class PersonMatte(Model):
    """Pulls a matte of the people in the frame; returns the plate with the matte in alpha.

    Output: RGBA, the plate's RGB untouched and the matte (1 = person) in alpha, ready for a
    Premult. Good at portraits and medium shots of one or a few people against a background
    that differs from them; weak on small full-body figures, people seen from far away and
    objects held close (a helmet in an arm is often counted as person).
    """

    id = "person_matte"
    weights = (
        WeightsLicence(
            name="SINet and ExtremeC3Net portrait segmentation",
            licence="MIT",
            source="github.com/clovaai/ext_portrait_segmentation (NAVER Corp.)",
            commercial=True,
        ),
    )
    label = "Person Matte"
    description = (
        "Roto of people: SINet or ExtremeC3Net (Park et al., NAVER, MIT) at low resolution, "
        "refined to the full frame by a guided filter so the edges follow the plate. Optional "
        "'hints' input: red = person, green = not person. Output: the plate with the matte in "
        "alpha."
    )
    inputs = (
        ImageSpec("image", channels=3),
        ImageSpec(
            "hints", channels=3, channel_names=("include", "exclude", "unused"), optional=True
        ),
    )
    outputs = (ImageSpec("image", channels=4),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"  # RGB goes back to the request's colourspace, alpha is copied
    spatial = SpatialNeeds(fully_convolutional=False)  # the network sees the whole frame
    knobs = (
        ChoiceKnob(
            "network",
            default="sinet",
            choices=tuple(NETWORKS),
            help=(
                "sinet (default): the better matte, and the faster network. extremec3net: the "
                "other published network, with fewer weights but about 4 times slower on a "
                "CPU; it takes more of the background near the person."
            ),
        ),
        IntKnob(
            "network_size",
            default=224,
            min=64,
            max=1024,
            help=(
                "The short side, in pixels, of the picture the network sees (rounded to a "
                "multiple of 32; it was trained at 224). Larger finds smaller figures and "
                "costs time."
            ),
        ),
        FloatKnob(
            "snap",
            default=3.0,
            min=0.0,
            max=8.0,
            help=(
                "How far, in network pixels, the edge may move to meet an edge in the plate "
                "(the guided filter's radius). 0 is a plain bilinear upscale of the network's "
                "matte (soft edges)."
            ),
        ),
        *EDGE_KNOBS,
        ChoiceKnob(
            "hints_mode",
            default="follow_plate",
            choices=("follow_plate", "as_painted"),
            help=(
                "follow_plate: hints steer the matte and their edges snap to the plate. "
                "as_painted: also forced exactly as painted on the final matte."
            ),
        ),
    )

    def setup(self, device: torch.device) -> None:
        loaders = {"sinet": load_sinet, "extremec3net": load_extremec3}
        self.networks = nn.ModuleDict(
            {
                name: loaders[name](shipped_weights_path("portrait-matte", filename), device)
                for name, filename in NETWORKS.items()
            }
        )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        """Return ``(4, H, W)``: the plate's RGB as it came and the matte (0-1) in alpha.

        ``frames["image"]`` is ``(3, H, W)`` sRGB-encoded (any values); ``frames["hints"]``,
        when sent, ``(2, H, W)`` include / exclude.
        """
        image = frames["image"]
        hints = _checked_hints(frames.get("hints"), image)
        height, width = int(image.shape[1]), int(image.shape[2])
        net_size = network_size(height, width, int(knobs["network_size"]))
        solve_size = _solve_size(height, width, net_size)
        guide = shrink(clean_unit(image), solve_size)
        probability = person_probability(
            self.networks[str(knobs["network"])], shrink(guide, net_size)
        )
        matte_small = resize(probability, solve_size)
        if hints is not None:
            matte_small = _apply_hints(matte_small, shrink(hints, solve_size))
        snap = float(knobs["snap"])
        radius = max(1, round(snap * solve_size[0] / net_size[0])) if snap > 0 else 0
        log.debug(
            "person_matte: %dx%d frame, network %dx%d, guided filter %dx%d radius %d",
            width,
            height,
            net_size[1],
            net_size[0],
            solve_size[1],
            solve_size[0],
            radius,
        )
        if radius:
            coefficients = solve_guided_filter(guide, matte_small, radius=radius, eps=EDGE_EPS)
            refined = apply_guided_filter(coefficients, image, clamp=(0.0, 1.0))
        else:
            refined = resize(matte_small, (height, width))
        matte = shape_edge(refined, float(knobs["threshold"]), float(knobs["softness"]))
        matte = grow_matte(matte, int(knobs["grow"]))
        if hints is not None and knobs["hints_mode"] == "as_painted":
            matte = _apply_hints(matte, hints)
        return torch.cat([image, matte.to(image.dtype)])


def network_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Return the ``(height, width)`` the network sees for a frame: aspect kept, short side
    ``short_side``, both multiples of 32, the long side at most ``MAX_ASPECT`` times the short.
    """
    scale = short_side / min(height, width)

    def rounded(length: float, limit: float) -> int:
        return max(SIZE_MULTIPLE, round(min(length, limit) / SIZE_MULTIPLE) * SIZE_MULTIPLE)

    limit = MAX_ASPECT * short_side
    return rounded(height * scale, limit), rounded(width * scale, limit)


def normalise_for_network(rgb: torch.Tensor) -> torch.Tensor:
    """Return sRGB-encoded ``(N, 3, h, w)`` values in 0-1 as the networks were trained on.

    The authors' pipeline: BGR order, 0-255, minus their mean, divided by their standard
    deviation, then divided by 255 (so the values are small: about -0.007 to 0.009).
    """
    mean = torch.tensor(BGR_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(BGR_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb.flip(1) * 255.0 - mean) / (std * 255.0)


def person_probability(net: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """Run a portrait network on ``(3, h, w)`` sRGB values in 0-1; return ``(1, h, w)`` in 0-1.

    SINet gives two-class logits (person = softmax channel 1). ExtremeC3Net was trained with a
    hinge (Lovasz) loss, so its single logit sits near -1 (background) or +1 (person): it is
    mapped linearly, ``(logit + 1) / 2`` clamped to 0-1, which keeps its decision at 0.5.
    """
    logits: torch.Tensor = net(normalise_for_network(rgb[None]))[0]
    if logits.shape[0] == 2:
        return torch.softmax(logits, dim=0)[1:]
    return ((logits + 1.0) * 0.5).clamp(0.0, 1.0)


def _checked_hints(hints: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor | None:
    """The hints clamped to 0-1 (NaN as 0), after checking they match the image's size."""
    if hints is None:
        return None
    if hints.shape[1:] != image.shape[1:]:
        raise FrameError(
            f"input 'hints' of model 'person_matte' is {hints.shape[2]}x{hints.shape[1]}; it "
            f"must be the size of 'image', {image.shape[2]}x{image.shape[1]}"
        )
    return clean_unit(hints)


def _apply_hints(matte: torch.Tensor, hints: torch.Tensor) -> torch.Tensor:
    """Force the matte up to the include channel, then down by the exclude channel."""
    return torch.maximum(matte, hints[0:1]) * (1.0 - hints[1:2])


def _solve_size(height: int, width: int, net_size: tuple[int, int]) -> tuple[int, int]:
    """The guided filter's solve size: the frame's, or ``SOLVE_SCALE`` x the network's."""
    scale = min(1.0, SOLVE_SCALE * min(net_size) / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
