"""Cut-out matte: U²-Netp finds the frame's main subject, a guided filter carries it to 4K.

How a frame becomes a matte::

    plate (sRGB-encoded, any size) --clamp 0-1, shrink--> guide (short side about 640)
        --shrink to 320 x 320 (aspect not kept, as trained)--> U²-Netp --> saliency, 0-1
    saliency --bilinear to the guide's size--> guided filter solve (radius ``snap`` network
        pixels) --> coefficients . full-resolution plate --> soft matte with the plate's edges
        --threshold / softness--> --grow / choke--> alpha

1. U²-Netp (Qin et al. 2020, Apache-2.0) is a salient-object network: it mattes whatever
   stands out as the subject of the picture (a product, an animal, a person, a cup), not one
   class. It was trained on 320 x 320 squares made by stretching each photograph (its aspect
   ratio is not kept), so the frame is shrunk the same way, whatever its size: a 4K frame costs
   the network what a 320-pixel one does.
2. The network's map is used as it comes (a sigmoid, 0-1). rembg stretches each map to its own
   minimum and maximum; that is not done here: in a shot, the stretch would change from frame
   to frame (flicker), and a frame without a clear subject would get a full-strength matte.
3. A map upscaled from 320 pixels has edges 12 pixels wide per network pixel at 4K; a fast
   guided filter (:mod:`frameserve.networks.guided_filter`) fits, in windows ``snap`` network
   pixels wide, a linear map from the plate's colours to the matte and applies it to the
   full-resolution plate, so the edges follow the plate's edges (as ``person_matte`` does).
4. ``threshold`` and ``softness`` place and shape the edge, ``grow`` moves it by whole pixels
   (:mod:`frameserve.builtin_models.person_matte.edges`).

**Where it runs**: on a CPU, onnxruntime runs the shipped ONNX file (about twice as fast as the
same network in PyTorch here); on a GPU, the network rebuilt in PyTorch
(:mod:`frameserve.networks.u2net`, the same weights) runs on the device.

**Colour**: the network and the guide see sRGB-encoded values (``colourspace_in = "srgb"``),
clamped to 0-1 (HDR highlights, negative values and NaN are clamped for them only); the plate's
RGB is returned untouched (or black, ``output`` "matte_only") and the matte rides in alpha,
which colour conversion copies as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from frameserve.builtin_models.matting import clean_unit, resize, shrink
from frameserve.builtin_models.person_matte.edges import EDGE_KNOBS, grow_matte, shape_edge
from frameserve.networks.guided_filter import apply_guided_filter, solve_guided_filter
from frameserve.networks.u2net import (
    INPUT_SIZE,
    OnnxU2NetP,
    load_u2netp,
    normalise_for_u2net,
)
from frameserve.plugin.knobs import ChoiceKnob, FloatKnob, KnobValues
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, SpatialNeeds
from frameserve.weights import shipped_weights_path

__all__ = ["OUTPUTS", "Cutout", "saliency", "solve_size"]

log = logging.getLogger(__name__)

#: The guided filter is solved at up to this many times the network's size (short side).
SOLVE_SCALE = 2
#: The guided filter's regularisation (guide values 0-1): edges whose contrast is well below
#: sqrt(EDGE_EPS) are smoothed over instead of followed.
EDGE_EPS = 1e-4
#: ``output`` knob values: the plate with the matte in alpha, or black RGB and the matte.
OUTPUTS = ("plate_and_matte", "matte_only")

Network = Callable[[torch.Tensor], torch.Tensor]


class Cutout(Model):
    """Mattes the main subject of the frame; returns the plate with the matte in alpha.

    Output: RGBA, the plate's RGB untouched (or black) and the matte (1 = subject) in alpha,
    ready for a Premult. Good at one clear subject (a product shot, an animal, a person, an
    object on a table); a busy frame with no single subject gives a partial, uncertain matte.
    """

    id = "cutout"
    label = "Cut-out Matte"
    description = (
        "Salient-object matte (background removal): U²-Netp (Qin et al., Apache-2.0) finds the "
        "frame's main subject at 320x320; a guided filter refines the matte to the full frame "
        "so its edges follow the plate. Output: the plate with the matte in alpha."
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=4),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"  # RGB goes back to the request's colourspace, alpha is copied
    spatial = SpatialNeeds(fully_convolutional=False)  # the network sees the whole frame
    weights = (
        WeightsLicence(
            name="U²-Netp (salient object detection)",
            licence="Apache-2.0",
            source="github.com/xuebinqin/U-2-Net (u2netp.onnx, the ONNX export rembg uses)",
            commercial=True,
            note="Qin et al., Pattern Recognition 2020; LICENSE and NOTICE in weights/cutout/",
        ),
    )
    knobs = (
        FloatKnob(
            "snap",
            default=3.0,
            min=0.0,
            max=8.0,
            help=(
                "How far, in network pixels (1/320 of the frame), the edge may move to meet an "
                "edge in the plate (the guided filter's radius). 0 is a plain bilinear upscale "
                "of the network's matte (soft edges)."
            ),
        ),
        *EDGE_KNOBS,
        ChoiceKnob(
            "output",
            default="plate_and_matte",
            choices=OUTPUTS,
            help="plate_and_matte: the plate with the matte in alpha. matte_only: black RGB, "
            "the matte in alpha.",
        ),
    )

    def setup(self, device: torch.device) -> None:
        path = shipped_weights_path("cutout", "u2netp.onnx")
        self.network: Network = (
            OnnxU2NetP(path) if device.type == "cpu" else load_u2netp(path, device)
        )

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        """Return ``(4, H, W)``: the plate's RGB as it came (or black) and the matte in alpha.

        ``frames["image"]`` is ``(3, H, W)`` sRGB-encoded (any values).
        """
        image = frames["image"]
        height, width = int(image.shape[1]), int(image.shape[2])
        solve = solve_size(height, width)
        guide = shrink(clean_unit(image), solve)
        matte_small = resize(saliency(self.network, guide), solve)
        snap = float(knobs["snap"])
        radius = max(1, round(snap * min(solve) / INPUT_SIZE)) if snap > 0 else 0
        log.debug(
            "cutout: %dx%d frame, guided filter %dx%d radius %d",
            width,
            height,
            solve[1],
            solve[0],
            radius,
        )
        if radius:
            coefficients = solve_guided_filter(guide, matte_small, radius=radius, eps=EDGE_EPS)
            refined = apply_guided_filter(coefficients, image, clamp=(0.0, 1.0))
        else:
            refined = resize(matte_small, (height, width))
        matte = shape_edge(refined, float(knobs["threshold"]), float(knobs["softness"]))
        matte = grow_matte(matte, int(knobs["grow"])).to(image.dtype)
        rgb = image if knobs["output"] == "plate_and_matte" else torch.zeros_like(image)
        return torch.cat([rgb, matte])


def saliency(network: Network, rgb: torch.Tensor) -> torch.Tensor:
    """Run U²-Netp on ``(3, h, w)`` sRGB values in 0-1; return its ``(1, 320, 320)`` map, 0-1.

    The image is stretched to 320 x 320 (area filter when shrinking), as the network was
    trained; stretch the map back to the image's aspect to use it.
    """
    square = shrink(rgb, (INPUT_SIZE, INPUT_SIZE))
    return network(normalise_for_u2net(square[None]))[0].clamp(0.0, 1.0)


def solve_size(height: int, width: int) -> tuple[int, int]:
    """The guided filter's solve size: the frame's, or its aspect with a short side of
    ``SOLVE_SCALE`` x 320 pixels when the frame is larger.
    """
    scale = min(1.0, SOLVE_SCALE * INPUT_SIZE / min(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
