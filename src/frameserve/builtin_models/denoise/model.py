"""Denoising: frameserve's own network (``denoise``) and the authors' DnCNN (``denoise-dncnn``).

``denoise`` runs a compact restoration U-Net
(:class:`~frameserve.networks.restoration.RestorationUNet`) that frameserve trained itself, on
scikit-image's sample photos with synthetic noise (``scripts/train_denoise.py``; weights in
``frameserve/weights/denoise/``, Apache-2.0). It is blind: it finds the noise level itself,
for Gaussian grain up to about 50/255 on sRGB values and for sensor-like noise that is
strongest in the shadows.

``denoise-dncnn`` runs DnCNN (Zhang et al. 2017) with the authors' published weights, which
frameserve does not ship: download ``dncnn_color_blind.pth`` (or a grey model such as
``dncnn_25.pth``, applied to R, G and B in turn) from github.com/cszn/KAIR (MIT licence) and
set ``FRAMESERVE_DNCNN_WEIGHTS`` to its path. It is 20 convolutions at full resolution: about
40 times the work of ``denoise`` (fine on a GPU; 20 s per 1080p frame on a 2-core CPU).

Both work on sRGB-encoded values (``colourspace_in`` / ``colourspace_out``), where they were
trained: the engine converts scene-linear plates there and back. Values outside 0-1 (sRGB
highlights above 1, negative values) and NaN/Inf pass through untouched
(:func:`~frameserve.networks.restoration.restore_in_range`). ``strength`` blends between the
plate (0) and the denoised frame (1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from frameserve import FloatKnob, ImageSpec, KnobValues, Model, SpatialNeeds, WeightsLicence
from frameserve.errors import ModelSetupError
from frameserve.networks.dncnn import load_dncnn
from frameserve.networks.restoration import load_restoration_unet, restore_in_range
from frameserve.weights import shipped_weights_path, user_weights_path

#: The environment variable naming the authors' DnCNN weights file.
DNCNN_WEIGHTS_ENV = "FRAMESERVE_DNCNN_WEIGHTS"

STRENGTH = FloatKnob(
    "strength",
    default=1.0,
    min=0.0,
    max=1.0,
    help="How much of the correction to apply: 0 returns the plate, 1 the restored frame.",
)


class Denoise(Model):
    """Removes grain and sensor noise (frameserve's network; see the module docstring)."""

    id = "denoise"
    weights = (
        WeightsLicence(
            name="frameserve denoise U-Net",
            licence="Apache-2.0",
            source="trained by frameserve (scripts/train_denoise.py) on scikit-image sample photos",
            commercial=True,
        ),
    )
    label = "Denoise"
    description = (
        "Removes grain and sensor noise with a compact U-Net frameserve trained on "
        "scikit-image sample photos (blind: Gaussian noise up to 50/255 on sRGB values, and "
        "shot-plus-read sensor noise). Works on sRGB values; values outside 0-1 pass through."
    )
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 3),)
    knobs = (STRENGTH,)
    colourspace_in = "srgb"
    colourspace_out = "srgb"
    # every output pixel depends on input pixels at most 48 away (3 levels below a 2x unshuffle)
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=8, overlap=48, max_size=1536)
    max_batch_size = 4

    def setup(self, device: torch.device) -> None:
        path = shipped_weights_path("denoise", "denoise.pth")
        network = load_restoration_unet(path, "denoise", device)
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
        strength = float(knobs["strength"])
        return list(restore_in_range(self.network, frames["image"], strength=strength))


class DenoiseDnCNN(Model):
    """Removes Gaussian noise with the authors' DnCNN weights (see the module docstring)."""

    id = "denoise-dncnn"
    weights = (
        WeightsLicence(
            name="DnCNN (your file)",
            licence="whatever the file's own licence says",
            source=f"a file the TD names in ${DNCNN_WEIGHTS_ENV}",
            commercial=False,
            note="the authors' published DnCNN weights are for non-commercial use only; "
            "frameserve cannot tell what a TD's file allows, so it is not cleared",
        ),
    )
    label = "Denoise (DnCNN, your weights)"
    description = (
        "DnCNN (Zhang et al. 2017) with the authors' published weights, which frameserve does "
        f"not ship: set {DNCNN_WEIGHTS_ENV} to dncnn_color_blind.pth (or a grey model such as "
        "dncnn_25.pth) from github.com/cszn/KAIR. Works on sRGB values; values outside 0-1 "
        "pass through. Slow on a CPU."
    )
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 3),)
    knobs = (STRENGTH,)
    colourspace_in = "srgb"
    colourspace_out = "srgb"
    # 20 3x3 convolutions: an output pixel sees exactly 20 pixels each way
    spatial = SpatialNeeds(fully_convolutional=True, size_multiple=1, overlap=20, max_size=1024)
    max_batch_size = 4

    def setup(self, device: torch.device) -> None:
        path = user_weights_path(
            DNCNN_WEIGHTS_ENV, "the authors' DnCNN weights (KAIR's dncnn_color_blind.pth)"
        )
        network = load_dncnn(path, "DnCNN", device)
        if network.channels not in (1, 3):
            raise ModelSetupError(
                f"{DNCNN_WEIGHTS_ENV} names {path}: a DnCNN for {network.channels} channels; "
                "this model takes 1 (grey, applied to R, G and B) or 3 (RGB)"
            )
        if len(network.model) // 2 + 1 > type(self).spatial.overlap:
            raise ModelSetupError(
                f"{DNCNN_WEIGHTS_ENV} names {path}: a DnCNN of {len(network.model) // 2 + 1} "
                f"layers; this model takes at most {type(self).spatial.overlap}"
            )
        self.network = network

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return self.predict_batch({"image": frames["image"][None]}, knobs)[0]

    def predict_batch(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> Sequence[torch.Tensor]:
        strength = float(knobs["strength"])
        return list(restore_in_range(self.network, frames["image"], strength=strength))
