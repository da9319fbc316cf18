"""Training jobs on a server: the queue, the job records on disk, and serving jobs as models.

The trainer itself is :mod:`frameserve.training`; this package runs it for many clients::

    from frameserve.training.jobs import LabelSource, TrainingJobs
"""

from __future__ import annotations

from frameserve.training.jobs.data import FrameSource, LabelSource, PathPairs
from frameserve.training.jobs.queue import JobStatus, TrainingJobs

__all__ = ["FrameSource", "JobStatus", "LabelSource", "PathPairs", "TrainingJobs"]
