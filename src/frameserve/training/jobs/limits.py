"""What one training job may read and hold: data roots and size caps, checked before the work.

::

    limits = JobLimits(data_roots=(Path("/shows/abc/plates"),), max_job_frames=200)

A job names frames, label folders and value tables by path only inside ``data_roots`` (none by
default: clients upload their frames); every cap is checked before a file is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from frameserve.engine.limits import DEFAULT_MAX_FRAME_PIXELS

__all__ = ["JobLimits"]


@dataclass(frozen=True, kw_only=True)
class JobLimits:
    """What one training job may read and hold.

    Attributes:
        data_roots: resolved folders whose files jobs may name by path; empty: none.
        max_frame_pixels: largest image, in pixels, checked from its header before decoding.
        max_job_frames: image files (inputs, targets, labelled images) one job may name.
        max_table_rows, max_table_bytes: the largest value table of a number job.
        max_job_bytes: decoded frames one job may hold in memory (released when it is
            deleted).
        decode_timeout: seconds reading a job's frames may take before the job is refused.
    """

    data_roots: tuple[Path, ...] = field(default_factory=tuple)
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_job_frames: int = 1000
    max_table_rows: int = 100_000
    max_table_bytes: int = 16 << 20
    max_job_bytes: int = 4 << 30
    decode_timeout: float = 120.0
