"""Motion deblurring: a compact U-Net frameserve trained itself, told the blur's path by knobs.

The seed project's deblur model was SRN-DeblurNet (Tao et al. 2018), a blind scale-recurrent
network whose official weights are TensorFlow checkpoints: they cannot load here, and the
network (three scales of a large encoder-decoder with a ConvLSTM) is far too heavy to train on
a CPU. ``deblur`` uses a lighter modern design,
:class:`~frameserve.networks.restoration.RestorationUNet`: a residual U-Net on
pixel-unshuffled frames whose four resolutions (down to 1/16) reach well past a 16-pixel blur.

It is **not blind**: the artist tells it the blur's path with ``length``, ``angle`` and
``curve`` (match the streak of a point of light, or the smear of a sharp edge), and the network
gets that path as five constant channels beside the image
(:func:`~frameserve.networks.motion_blur.path_code`). Blind versions of the same network did
not learn to deblur within the time a CPU allows (about +0.9 dB after 6,000 steps, against
+3.9 dB for this one; ``docs/models/restoration.md``). frameserve trained it on scikit-image's
sample photos with synthetic motion blur (``scripts/train_deblur.py``; weights in
``frameserve/weights/deblur/``, Apache-2.0): straight and curved paths of 2 to 16 pixels,
blurred in linear light, the same over the frame (camera shake).

It works on sRGB-encoded values (``colourspace_in`` / ``colourspace_out``), where it was
trained: the engine converts scene-linear plates there and back. Values outside 0-1 (sRGB
highlights above 1, negative values) and NaN/Inf pass through untouched, so blurred
highlights stay as they were (:func:`~frameserve.networks.restoration.restore_in_range`).
A ``length`` below half a pixel returns the plate unchanged; ``strength`` blends between the
plate (0) and the deblurred frame (1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from frameserve import FloatKnob, ImageSpec, KnobValues, Model, SpatialNeeds, WeightsLicence
from frameserve.errors import ModelSetupError
from frameserve.networks.motion_blur import PATH_CODE_CHANNELS, path_code
from frameserve.networks.restoration import load_restoration_unet, restore_in_range
from frameserve.weights import shipped_weights_path

#: The longest path the network learnt, in pixels.
MAX_LENGTH = 16.0


def path_from_knobs(length: float, angle: float, curve: float) -> tuple[float, float, float]:
    """Return ``(length, angle, turn)`` in the network's image coordinates (y down, radians)
    for knob values given as the artist sees the frame (y up, degrees counter-clockwise)."""
    return length, -math.radians(angle), -math.radians(curve)


class Deblur(Model):
    """Removes the motion blur of a path the artist describes (see the module docstring)."""

    id = "deblur"
    weights = (
        WeightsLicence(
            name="frameserve deblur U-Net",
            licence="Apache-2.0",
            source="trained by frameserve (scripts/train_deblur.py) on scikit-image sample photos",
            commercial=True,
        ),
    )
    label = "Deblur"
    description = (
        "Removes motion blur (camera shake) along a path you describe: its length (up to 16 "
        "pixels), its direction and how much it curves. A compact U-Net frameserve trained on "
        "scikit-image sample photos. Works on sRGB values; values outside 0-1 pass through."
    )
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 3),)
    knobs = (
        FloatKnob(
            "length",
            default=0.0,
            min=0.0,
            max=MAX_LENGTH,
            help="Length of the blur's path in pixels (0: off). Match the streak of a small "
            "light or the smear of a sharp edge.",
        ),
        FloatKnob(
            "angle",
            default=0.0,
            min=-180.0,
            max=180.0,
            help="Direction of the path at its middle, in degrees counter-clockwise from the "
            "x axis as seen on screen (a straight blur is the same at angle + 180).",
        ),
        FloatKnob(
            "curve",
            default=0.0,
            min=-120.0,
            max=120.0,
            help="How far the path turns along its length, in degrees (positive: "
            "counter-clockwise). 0 is a straight line.",
        ),
        FloatKnob(
            "strength",
            default=1.0,
            min=0.0,
            max=1.0,
            help="How much of the correction to apply: 0 returns the plate, 1 the deblurred frame.",
        ),
    )
    colourspace_in = "srgb"
    colourspace_out = "srgb"
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=16, overlap=64, max_size=1536)
    max_batch_size = 4

    def setup(self, device: torch.device) -> None:
        path = shipped_weights_path("deblur", "deblur.pth")
        network = load_restoration_unet(path, "deblur", device)
        if network.condition != PATH_CODE_CHANNELS or network.channels != 3:
            raise ModelSetupError(f"{path} holds a network that is not told a blur's path")
        if type(self).spatial.size_multiple % network.multiple:
            raise ModelSetupError(
                f"{path} holds a network that needs multiples of {network.multiple}"
            )
        self.network = network

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return self.predict_batch({"image": frames["image"][None]}, knobs)[0]

    def predict_batch(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> Sequence[torch.Tensor]:
        image = frames["image"]
        length, angle, turn = path_from_knobs(
            float(knobs["length"]), float(knobs["angle"]), float(knobs["curve"])
        )
        if length < 0.5:
            return list(image)
        code = path_code(length, angle, turn).to(image)[None, :, None, None]

        def told(inside: torch.Tensor) -> torch.Tensor:
            maps = code.expand(inside.shape[0], -1, *inside.shape[-2:])
            restored: torch.Tensor = self.network(torch.cat([inside, maps], dim=1))
            return restored

        strength = float(knobs["strength"])
        return list(restore_in_range(told, image, strength=strength))
