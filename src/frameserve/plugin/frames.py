"""The one internal form of a frame, and the checks every front door applies to it.

This is the one place that defines it; every other module points here. Inside frameserve a
frame is a ``torch.Tensor`` of shape ``(C, H, W)``:

- dtype ``float32``;
- channels first (the MLClient wire's planar layout maps onto it without a transpose);
- **top row first** (Nuke sends rows bottom to top; the MLClient door flips them);
- **scene-linear** values unless declared otherwise: a request may say which colourspace its
  frames are in, and a model which colourspace it wants (``colourspace_in`` /
  ``colourspace_out``); the runner converts between them (:mod:`frameserve.engine.colour`);
- **never clipped**: values above 1 (highlights) and below 0 are normal, and NaN/Inf pass
  through to the model untouched.

A batch of frames, as ``predict_batch`` gets them, is the same stacked: ``(N, C, H, W)``.
Front doors convert their wire format to this form before a request is built, and back after
the result comes out; models, the scheduler and the runner see nothing else.
"""

from __future__ import annotations

import torch

from frameserve.errors import FrameError

__all__ = ["MAX_DIMENSION", "check_frame"]

#: Largest width or height accepted from any client (a 32K frame is already 4 GB of RGBA).
MAX_DIMENSION = 32768


def check_frame(frame: object, *, what: str) -> torch.Tensor:
    """Return ``frame`` if it is a float32 ``(C, H, W)`` tensor of a sane size, else raise.

    Raises:
        FrameError: naming ``what`` (for example ``"input 'image'"``), the expected form and
            what was found.
    """
    if not isinstance(frame, torch.Tensor):
        raise FrameError(f"{what}: expected a (C, H, W) float32 tensor, got {type(frame).__name__}")
    if frame.dim() != 3:
        raise FrameError(f"{what}: expected shape (C, H, W), got {tuple(frame.shape)}")
    if frame.dtype != torch.float32:
        raise FrameError(f"{what}: expected float32 values, got {frame.dtype}")
    channels, height, width = frame.shape
    if channels < 1 or height < 1 or width < 1:
        raise FrameError(f"{what}: every dimension must be at least 1, got {tuple(frame.shape)}")
    if height > MAX_DIMENSION or width > MAX_DIMENSION:
        raise FrameError(
            f"{what}: {width}x{height} is larger than the largest frame accepted, "
            f"{MAX_DIMENSION}x{MAX_DIMENSION}"
        )
    return frame
