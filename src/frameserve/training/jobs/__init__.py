"""Training jobs on a server: the queue, the job records on disk, and serving jobs as models.

The trainer itself is :mod:`frameserve.training`; this package runs it for many clients. The
names the front doors and commands use::

    from frameserve.training.jobs import JobState, LabelSource, TrainingJobs

================  ==========================================================================
``queue``         :class:`TrainingJobs`: submit, cancel, resume, delete, list
``runs``          running queued jobs: a worker thread per device, one job at a time each
``process``       each run in a training process of its own (``spawn``), followed and stopped
``cluster``       each run as a Ray task on a cluster instead (``serve --ray``), followed alike
``shared``        a job's decoded frames in shared memory, mapped by its training process
``live``          a job in the server: its frames (while active), process, state changes
``store``         each job's ``queue.json`` record (with its owner), read back after a restart
``status``        :class:`JobStatus`: what a job's status says
``serving``       each job served as a model (a registry provider per job)
``data``          what a job learns from (files, uploads, label folders, value tables)
``limits``        :class:`JobLimits`: data roots and size caps, checked before the work
``files``         files named by path: confined to the data roots, regular files only
``loading``       a new job's frames read off the request thread, within a time limit
``scratch``       temporary folders for exports, inside the jobs folder
``losses``        each job's loss curve, kept in its folder (``losses.jsonl``, bounded)
================  ==========================================================================
"""

from __future__ import annotations

from frameserve.training.jobs.data import FrameSource, LabelSource, PathPairs
from frameserve.training.jobs.queue import TrainingJobs
from frameserve.training.jobs.status import JobStatus
from frameserve.training.jobs.store import JobState
from frameserve.training.kinds import JobKind

__all__ = [
    "FrameSource",
    "JobKind",
    "JobState",
    "JobStatus",
    "LabelSource",
    "PathPairs",
    "TrainingJobs",
]
