"""Upscale x3: bicubic upscaling with the detail VDSR restores to the luma (see upscaling.py)."""

from __future__ import annotations

from frameserve.builtin_models.upscaling import VDSRUpscale, vdsr_spatial_needs


class UpscaleX3(VDSRUpscale):
    """Upscales the frame 3 times (width and height) with VDSR (Kim et al., CVPR 2016).

    Bicubic upscaling, then a 20-layer network restores the detail it lost, on the luma;
    chroma stays bicubic. Works in sRGB-encoded values; nothing is clipped, highlights above 1
    get their detail too, negative values are kept. Trained on photographs downscaled with
    MATLAB's bicubic: it restores real edges and textures, and sharpens noise and film grain
    too (turn ``detail`` down for those). Minutes per HD frame on a CPU: a GPU model.
    """

    id = "upscale_x3"
    label = "Upscale x3 (VDSR)"
    output_scale = 3
    spatial = vdsr_spatial_needs(3)
