"""Upscaling by 2, 3 or 4 with VDSR: the model class the built-in ``upscale_x*`` models share.

How a frame is upscaled (``s`` is the scale)::

    RGB (sRGB-encoded) --bicubic x s--> RGB_up --BT.601 luma--> Y_up --held above black-->
        VDSR residual r (N, 1, sH, sW)  -->  RGB_up + detail * 255/219 * r

1. Every channel is upscaled with MATLAB's bicubic kernel (:func:`bicubic_upscale`), the one
   VDSR was trained with; chroma stays that way, as in the paper.
2. VDSR (:mod:`frameserve.networks.vdsr`) looks at the upscaled luma, the Y of ITU-R BT.601
   studio-swing YCbCr (MATLAB's ``rgb2ycbcr``: ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) /
   255``), and predicts the detail bicubic lost.
3. That detail is added to the luma, with Cb and Cr unchanged, and the result converted back to
   RGB. BT.601's inverse adds ``255/219`` times a change of Y to each of R, G and B alike, and
   every step but the network is linear, so this *is* ``RGB_up + 255/219 * r``: no round trip
   through YCbCr is computed, and nothing is lost for values a YCbCr round trip would mangle.

**HDR.** Scene-linear plates arrive sRGB-encoded but unclipped: highlights above 1, negative
values. VDSR has no biases and only ReLUs, so it is positively homogeneous: luma with twice the
contrast gets detail twice as strong, and a highlight at 4 is treated like the same picture at
1. So the luma it looks at is *not* clipped at white. Measured on photographs pushed two stops
(20-60% of the pixels above 1, downscaled like VDSR's training data), VDSR gains as much over
bicubic as on the originals (2.5-3 dB at x2), where clipping its luma at white kept only
0.2-0.6 dB of that, and was worse than plain bicubic at four stops.

The luma is held at black (16/255) from below: negative values are out-of-gamut colours or
filter lobes, not detail, and the network never saw any. It is held at :data:`LUMA_CEILING`
from above, so that float16 activations stay finite. NaN and infinities are read as black.
The detail is added to the *unclamped* bicubic result, so nothing is clipped; a flat region
keeps its level whatever it is (to 2e-5 of it, away from the frame's edges); a non-finite value
stays non-finite over the bicubic's 5 x 5 taps only.

**Tiles.** Everything is local: an output pixel depends on input pixels at most
:func:`input_reach` away (VDSR's 20-pixel receptive field at the output's scale, plus the
bicubic kernel's two pixels), so the engine tiles frames of any size
(:func:`vdsr_spatial_needs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from frameserve.networks.vdsr import RECEPTIVE_RADIUS, VDSR, load_vdsr
from frameserve.plugin.knobs import FloatKnob, KnobValues
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, SpatialNeeds
from frameserve.weights import shipped_weights_path

__all__ = [
    "LUMA_BLACK",
    "LUMA_CEILING",
    "LUMA_TO_RGB",
    "LUMA_WHITE",
    "SCALES",
    "VDSRUpscale",
    "bicubic_upscale",
    "bt601_luma",
    "input_reach",
    "vdsr_spatial_needs",
    "vdsr_upscale",
]

#: The scale factors VDSR was trained for.
SCALES = (2, 3, 4)
#: BT.601 studio-swing luma of black and of white (RGB 0 and 1), divided by 255.
LUMA_BLACK = 16.0 / 255.0
LUMA_WHITE = 235.0 / 255.0
#: The brightest luma VDSR is shown (sRGB-encoded 256 is scene-linear 5e5): its activations
#: reach about 70 times its input on photographs, which keeps them far inside float16's 65504.
LUMA_CEILING = 256.0
#: How much R, G and B each change per unit change of studio-swing luma at fixed Cb and Cr.
LUMA_TO_RGB = 255.0 / 219.0
#: BT.601 luma weights of R, G and B for values 0-1, scaled to studio swing (MATLAB rgb2ycbcr).
_LUMA_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
#: Input pixels the upscaled output takes, in tiles, at most (per side): about 1024 output
#: pixels, where VDSR holds 64 float32 channels (256 MiB per layer) at the output's size.
_MAX_OUTPUT_TILE = 1024
#: The shipped weights (MIT licence, in the same folder).
WEIGHTS = ("upscale", "vdsr.pth")


def bicubic_upscale(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Upscale ``image`` by a whole factor with MATLAB's bicubic kernel (Keys, a = -0.5).

    This is the interpolation VDSR was trained on (``imresize(..., 'bicubic')``). PyTorch's
    plain ``interpolate(mode="bicubic")`` uses a = -0.75, a sharper kernel the network was not
    trained for; its antialiased bicubic uses a = -0.5 (Pillow's and MATLAB's kernel), and
    when upscaling, antialiasing widens nothing, so that is what runs here (7 times faster on
    a CPU than the same filter written as convolutions). Output pixel ``scale * k + p`` lies at
    input position ``k + (p + 0.5) / scale - 0.5`` (pixel centres). At the frame's edges the
    taps that fall outside are left out and the others renormalised (MATLAB mirrors the edge
    instead; VDSR's PSNR is measured with the edges left out). Values are not clipped: the
    kernel's negative lobes overshoot at edges, as every bicubic does.

    Args:
        image: ``(N, C, H, W)`` floating-point frames, any values.
        scale: a whole factor, 1 or more.

    Returns:
        ``(N, C, H * scale, W * scale)``, the same dtype and device.

    Example::

        >>> bicubic_upscale(torch.ones(1, 3, 4, 5), 2).shape
        torch.Size([1, 3, 8, 10])
    """
    if image.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) frames, got shape {tuple(image.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a whole number of at least 1, got {scale!r}")
    if scale == 1:
        return image
    return F.interpolate(
        image, scale_factor=scale, mode="bicubic", align_corners=False, antialias=True
    )


def bt601_luma(rgb: torch.Tensor) -> torch.Tensor:
    """Return the BT.601 studio-swing luma of sRGB-encoded RGB, as VDSR was trained on.

    ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` (MATLAB's ``rgb2ycbcr`` for RGB in
    0-1, divided by 255): black is 16/255, white 235/255. Values outside 0-1 give luma outside
    that range; nothing is clipped.

    Args:
        rgb: ``(N, 3, H, W)`` floating-point frames.

    Returns:
        ``(N, 1, H, W)`` luma, the same dtype.
    """
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) RGB frames, got shape {tuple(rgb.shape)}")
    red, green, blue = rgb.unbind(1)
    luma = LUMA_BLACK + _LUMA_WEIGHTS[0] * red + _LUMA_WEIGHTS[1] * green
    return (luma + _LUMA_WEIGHTS[2] * blue)[:, None]


def vdsr_upscale(net: VDSR, rgb: torch.Tensor, scale: int, detail: float = 1.0) -> torch.Tensor:
    """Upscale sRGB-encoded RGB frames by ``scale``: bicubic, plus VDSR's detail on the luma.

    See the module docstring for the method and for what happens to values outside 0-1.

    Args:
        net: the VDSR network, on the frames' device (its dtype may be float16 under autocast).
        rgb: ``(N, 3, H, W)`` sRGB-encoded frames, any values (HDR and negatives survive).
        scale: 2, 3 or 4 (VDSR was trained for these; any whole factor runs).
        detail: how much of the predicted detail to add: 0 gives plain bicubic and skips the
            network, 1 the network's own answer, more exaggerates it.

    Returns:
        ``(N, 3, H * scale, W * scale)`` float32 frames, not clipped.
    """
    upscaled = bicubic_upscale(rgb.float(), scale)
    if detail == 0.0:
        return upscaled
    luma = bt601_luma(upscaled)
    luma = torch.nan_to_num(luma, nan=LUMA_BLACK, posinf=LUMA_BLACK, neginf=LUMA_BLACK)
    residual = net.residual(luma.clamp(LUMA_BLACK, LUMA_CEILING)).float()
    return upscaled + (detail * LUMA_TO_RGB) * residual


def input_reach(scale: int) -> int:
    """Return how far, in input pixels, an output pixel of an upscale by ``scale`` sees.

    VDSR sees :data:`~frameserve.networks.vdsr.RECEPTIVE_RADIUS` pixels of the upscaled image,
    ``ceil(20 / scale)`` input pixels, and the bicubic kernel two more.
    """
    return math.ceil(RECEPTIVE_RADIUS / scale) + 2


def vdsr_spatial_needs(scale: int) -> SpatialNeeds:
    """Return what an upscale by ``scale`` declares: tiled, ``input_reach`` of overlap.

    Tiles take about 1024 output pixels a side (``1024 // scale`` input pixels): VDSR holds
    64 float32 channels at the output's size, 256 MiB per layer for such a tile.
    """
    return SpatialNeeds(
        fully_convolutional=True,
        overlap=input_reach(scale),
        max_size=_MAX_OUTPUT_TILE // scale,
    )


class VDSRUpscale(Model):
    """Upscales the frame by ``output_scale`` with VDSR; subclasses set the scale and id.

    A subclass (one per scale, since a model's output size is declared)::

        class UpscaleX2(VDSRUpscale):
            id = "upscale_x2"
            label = "Upscale x2 (VDSR)"
            output_scale = 2
            spatial = vdsr_spatial_needs(2)
    """

    output_scale: ClassVar[int] = 2
    weights = (
        WeightsLicence(
            name="VDSR",
            licence="MIT",
            source="github.com/twtygqyy/pytorch-vdsr (model_epoch_50.pth)",
            commercial=True,
        ),
    )
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)
    colourspace_in = "srgb"
    colourspace_out = "srgb"
    half_precision = True
    knobs = (
        FloatKnob(
            "detail",
            default=1.0,
            min=0.0,
            max=2.0,
            help=(
                "How much of the detail VDSR restores is added to the bicubic upscale: 0 gives "
                "plain bicubic (fast), 1 the network's own answer, above 1 exaggerates it."
            ),
        ),
    )

    def setup(self, device: torch.device) -> None:
        net = load_vdsr(shipped_weights_path(*WEIGHTS), device)
        # Channels-last weights make every convolution run channels-last: 1.45x faster on a
        # CPU (measured: 17 instead of 25 s per output megapixel), and cuDNN's float16 path.
        for weight in net.parameters():
            weight.data = weight.data.contiguous(memory_format=torch.channels_last)
        self.net = net

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return self.predict_batch({"image": frames["image"][None]}, knobs)[0]

    def predict_batch(
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> Sequence[torch.Tensor]:
        detail = float(knobs["detail"])
        upscaled = vdsr_upscale(self.net, frames["image"], self.output_scale, detail)
        return list(upscaled.unbind(0))
