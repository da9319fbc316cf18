"""Upscale detail: VDSR's restored detail on a plate already enlarged in Nuke (see upscaling.py)."""

from __future__ import annotations

from frameserve.builtin_models.upscaling import VDSRUpscale, vdsr_spatial_needs


class UpscaleDetail(VDSRUpscale):
    """Adds the detail VDSR restores to a plate that was already enlarged, keeping its size.

    The MLClient node needs its output in its input's format, so the ``upscale_x*`` models
    cannot answer it. In Nuke, enlarge the plate first (a Reformat with the ``cubic`` filter,
    or any Keys bicubic with a = -0.5, which is what VDSR was trained after), then run this
    model: the network restores the luma detail the enlargement lost. Same network, colour and
    HDR handling as ``upscale_x2``; works at any enlargement, best at 2 to 4 times.
    """

    id = "upscale_detail"
    label = "Upscale Detail (VDSR)"
    output_scale = 1
    spatial = vdsr_spatial_needs(1)
