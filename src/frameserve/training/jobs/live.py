"""A training job in this process: its record, plus what lives only in memory.

The queue (:mod:`frameserve.training.jobs.queue`) keeps one :class:`LiveJob` per job and
changes it under its lock::

    files, data, trainer = prepare_job(name, pairs, (), settings, folder=folder,
                                       uploads=store, limits=limits)   # a new job
    job = LiveJob(record)
    job.set_state(JobState.RUNNING)              # recorded in queue.json at once
    trainer = job.build_trainer(limits, on_progress=report)
    job.release_frames()                         # stopped: its frames are read again if resumed

A job holds its decoded frames (:attr:`LiveJob.data`) only while it is queued or running and
they can be read again (its frames came from files); a job given arrays keeps them, since
nothing else could give them back.
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
    list_checkpoints,
)
from frameserve.training.jobs.data import JobData, PathPairs, read_job_data, reread_job_data
from frameserve.training.jobs.limits import JobLimits
from frameserve.training.jobs.store import JobRecord, JobState
from frameserve.training.uploads import UploadStore

__all__ = ["LiveJob", "NewJob", "prepare_job"]

logger = logging.getLogger(__name__)

#: A new job's record of its files, its decoded frames, and its trainer.
NewJob: TypeAlias = tuple[dict[str, Any] | None, ImagePairs | LabelledImages, Trainer]


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
    """Read a new job's frames within ``limits``, check the settings against them and build
    its trainer (which writes ``job.json`` in ``folder``); see
    :func:`~frameserve.training.jobs.data.read_job_data`.

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
    return files, loaded, Trainer(loaded, settings, job_dir=folder, name=name)


class LiveJob:
    """One job in this process: its record plus its frames, trainer, progress and events."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.data: ImagePairs | LabelledImages | None = None  # decoded frames, while active
        self.trainer: Trainer | None = None  # built at submission, before its first run
        self.cancel = threading.Event()
        self.progress: TrainingProgress | None = None
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

    def build_trainer(
        self, limits: JobLimits, *, on_progress: Callable[[TrainingProgress], None]
    ) -> Trainer:
        """Return the trainer of the job's next run: the one built at submission, or one that
        goes on from its newest checkpoint (reading its frames again, within ``limits``,
        if it holds none).

        Raises:
            ConfigError: its frames were arrays, lost since; files outside the data roots.
            ReadingStopped: it was cancelled while its frames were read.
        """
        if self.trainer is not None:
            trainer, self.trainer = self.trainer, None
            trainer.on_progress = on_progress
            return trainer
        data = self.data
        if data is None:  # read again as a new job's are: in the data roots, within limits
            if self.record.files is None:
                raise ConfigError(
                    f"training job {self.name!r} was given frames as arrays, which are not "
                    "kept across a server restart; submit it again"
                )
            data = reread_job_data(
                self.record.files, folder=self.folder, limits=limits, should_stop=self.cancel.is_set
            )
            self.data = data
        settings = TrainingSettings.from_dict(self.record.settings)
        if list_checkpoints(self.folder):
            return Trainer.resume(self.folder, data, on_progress=on_progress, steps=settings.steps)
        return Trainer(data, settings, job_dir=self.folder, name=self.name, on_progress=on_progress)

    def release_frames(self) -> None:
        """Drop the trainer, and the frames if they can be read again (the caller holds the
        queue's lock; the job is not running)."""
        self.trainer = None
        if self.record.files is not None and not self.state.active:
            self.data = None
