"""A training job in the server: its record, plus what lives only in memory.

The queue (:mod:`frameserve.training.jobs.queue`) keeps one :class:`LiveJob` per job and
changes it under its lock::

    files, frames = prepare_job(name, pairs, (), settings, folder=folder,
                                uploads=store, limits=limits)   # a new job
    job = LiveJob(record)
    job.hold(frames)
    job.set_state(JobState.RUNNING)              # recorded in queue.json at once
    frames = job.frames_for_run(limits)          # read again if they were released
    job.release_frames()                         # stopped: its frames are read again if resumed

A job holds its decoded frames in shared memory (:mod:`~frameserve.training.jobs.shared`: the
server's views and its training process map the same pages) only while it is queued or
running and they can be read again (its frames came from files); a job given arrays keeps
them, since nothing else could give them back. Its network is trained in a
process of its own (:mod:`frameserve.training.jobs.process`), never in the server's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from frameserve.errors import ConfigError
from frameserve.training import (
    ImagePairs,
    LabelledImages,
    Trainer,
    TrainingProgress,
    TrainingSettings,
)
from frameserve.training.jobs.data import JobData, PathPairs, read_job_data, reread_job_data
from frameserve.training.jobs.limits import JobLimits
from frameserve.training.jobs.process import JobRun
from frameserve.training.jobs.shared import SharedFrames
from frameserve.training.jobs.store import JobRecord, JobState
from frameserve.training.uploads import UploadStore

__all__ = ["LiveJob", "NewJob", "prepare_job"]

logger = logging.getLogger(__name__)

#: A new job's record of its files, and its decoded frames in shared memory.
NewJob: TypeAlias = tuple[dict[str, Any] | None, SharedFrames]


def prepare_job(
    name: str,
    data: JobData,
    validation: PathPairs,
    settings: TrainingSettings,
    *,
    folder: Path,
    uploads: UploadStore,
    limits: JobLimits,
    upload_owner: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> NewJob:
    """Read a new job's frames within ``limits``, check the settings against them, write
    ``job.json`` in ``folder`` (:meth:`Trainer.plan`: no network is built here) and move the
    frames into shared memory; see :func:`~frameserve.training.jobs.data.read_job_data`.

    Raises:
        ConfigError, RequestTooLargeError, ImageIOError, UploadNotFoundError: as
            :func:`~frameserve.training.jobs.data.read_job_data`, or settings that do not fit.
    """
    files, loaded = read_job_data(
        data,
        validation,
        folder=folder,
        uploads=uploads,
        limits=limits,
        owner=upload_owner,
        should_stop=should_stop,
    )
    if isinstance(loaded, ImagePairs):
        loaded.check_crop_size(settings.crop_size)
    Trainer.plan(loaded, settings, job_dir=folder, name=name)
    return files, SharedFrames.share(loaded)


class LiveJob:
    """One job in the server: its record plus its frames, process, progress and events."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.frames: SharedFrames | None = None  # in shared memory, while active
        self.data: ImagePairs | LabelledImages | None = None  # views of ``frames``
        self.process: JobRun | None = None  # its training process (or Ray task), while it runs
        self.cancel = threading.Event()
        self.progress: TrainingProgress | None = None
        self.saved: TrainingProgress | None = None  # of the last checkpoint of this run
        self.finished = threading.Event()

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def folder(self) -> Path:
        return self.record.folder

    @property
    def state(self) -> JobState:
        return self.record.state

    def set_state(self, state: JobState) -> None:
        """Record ``state`` in ``queue.json`` (the caller holds the queue's lock)."""
        self.record.state = state
        if state.active:
            self.record.error = None
        self.record.save()
        logger.info("training job %r: %s", self.name, state)

    def remember(self) -> None:
        """Keep the progress in the record (the caller holds the queue's lock)."""
        if self.progress is not None:
            self.record.keep_progress(self.progress)
            self.record.save()

    def hold(self, frames: SharedFrames) -> None:
        """Hold ``frames`` (and views of them) until :meth:`release_frames`."""
        self.frames, self.data = frames, frames.data()

    def frames_for_run(self, limits: JobLimits) -> SharedFrames:
        """Return the frames of the job's next run: those it holds, or its files read again
        (as a new job's are: in the data roots, within ``limits``) if it holds none.

        Raises:
            ConfigError: its frames were arrays, lost since; files outside the data roots.
            ReadingStopped: it was cancelled while its frames were read.
        """
        frames = self.frames
        if frames is None:
            if self.record.files is None:
                raise ConfigError(
                    f"training job {self.name!r} was given frames as arrays, which are not "
                    "kept across a server restart; submit it again"
                )
            data = reread_job_data(
                self.record.files, folder=self.folder, limits=limits, should_stop=self.cancel.is_set
            )
            frames = SharedFrames.share(data)
            del data  # the decoded copy goes: the job holds the shared one
            self.hold(frames)
        return frames

    def release_frames(self) -> None:
        """Drop the frames if they can be read again (the caller holds the queue's lock; the
        job is not running)."""
        if self.record.files is not None and not self.state.active:
            self.frames = self.data = None
