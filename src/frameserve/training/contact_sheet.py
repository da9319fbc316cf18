"""Contact sheets: a PNG with one row per sample, input | prediction | target.

A sheet is a preview for people, not data: each panel shows its first three channels (one
channel as grey, two as red and green), scene-linear frames are encoded with the sRGB curve so
they look right in an image viewer, and values are clipped to 0-1 for the 8-bit PNG (on
purpose, here only). Panels are separated by a grey gap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from frameserve.media.imageio import write_image
from frameserve.plugin.model import SCENE_LINEAR

__all__ = ["contact_sheet", "write_contact_sheet"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

_GAP = 4
_GAP_VALUE = 0.5
_LINEAR_NAMES = frozenset({SCENE_LINEAR, "linear", "lin_rec709", "acescg", "aces2065-1"})


def contact_sheet(
    rows: Sequence[tuple[FloatArray, FloatArray, FloatArray]], *, colourspace: str = SCENE_LINEAR
) -> FloatArray:
    """Return a ``(3, H, W)`` float32 sheet, values 0-1, of ``(input, prediction, target)`` rows.

    Each item of a row is a ``(C, h, w)`` array; every row must have the same ``h`` and ``w``.
    """
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    panels = [[_display(panel, colourspace) for panel in row] for row in rows]
    height, width = panels[0][0].shape[1:]
    columns = len(panels[0])
    sheet = np.full(
        (3, len(panels) * (height + _GAP) + _GAP, columns * (width + _GAP) + _GAP),
        _GAP_VALUE,
        np.float32,
    )
    for row_index, row in enumerate(panels):
        top = _GAP + row_index * (height + _GAP)
        for column_index, panel in enumerate(row):
            left = _GAP + column_index * (width + _GAP)
            sheet[:, top : top + height, left : left + width] = panel
    return sheet


def write_contact_sheet(
    path: str | os.PathLike[str],
    rows: Sequence[tuple[FloatArray, FloatArray, FloatArray]],
    *,
    colourspace: str = SCENE_LINEAR,
) -> Path:
    """Write :func:`contact_sheet` of ``rows`` as a PNG at ``path``, atomically; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, contact_sheet(rows, colourspace=colourspace))
    logger.debug("wrote contact sheet %s", path)
    return path


def _display(panel: FloatArray, colourspace: str) -> FloatArray:
    """Return ``panel`` as three channels, display-encoded and clipped to 0-1."""
    channels = panel.shape[0]
    if channels == 1:
        rgb = np.repeat(panel, 3, axis=0)
    elif channels == 2:
        rgb = np.concatenate([panel, np.zeros_like(panel[:1])])
    else:
        rgb = panel[:3]
    rgb = np.nan_to_num(rgb.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if colourspace.lower() in _LINEAR_NAMES:
        rgb = _srgb_encode(rgb)
    return np.clip(rgb, 0.0, 1.0)


def _srgb_encode(linear: FloatArray) -> FloatArray:
    """The sRGB transfer curve (values below 0 stay linear)."""
    curve = 1.055 * np.power(np.maximum(linear, 0.0031308), 1 / 2.4) - 0.055
    return np.where(linear <= 0.0031308, 12.92 * linear, curve).astype(np.float32)
