"""The training job queue: jobs run in the background, one at a time per device, served at once.

::

    jobs = TrainingJobs("~/.frameserve/jobs", registry=registry, busy=interactive_waiting,
                        limits=JobLimits(data_roots=(plates,)))
    jobs.submit("degrain", [(plates / "in.1001.exr", plates / "gt.1001.exr")],
                TrainingSettings(steps=500), owner="maya")
    jobs.submit("plate", [(UploadedFrame(a.id), UploadedFrame(b.id))])  # uploaded frames
    jobs.submit("daynight", LabelSource("label", "/shows/abc/shots"))    # a label job
    jobs.status("degrain").to_dict()   # state, step, loss, validation loss, steps/s, ETA
    jobs.cancel("degrain")             # stops before its next step (a checkpoint is saved)
    jobs.resume("degrain")             # goes on from the newest checkpoint

Each job has a folder and a record in the jobs folder (:mod:`frameserve.training.jobs.store`);
frames uploaded over HTTP (:mod:`frameserve.training.uploads`, in ``jobs_folder/.uploads``)
that a job names are linked into its folder (:mod:`frameserve.training.jobs.data`), and each
job is served as a model from submission on (:mod:`frameserve.training.jobs.serving`). A new
:class:`TrainingJobs` on the same folder lists every job again; jobs that were queued or
running when the server stopped are queued again and resume from their newest checkpoint.
Jobs submitted as arrays cannot be read again after a restart; they fail then.

**Frames** are read within the job limits (:mod:`frameserve.training.jobs.data`), on a reader
thread for at most ``decode_timeout`` seconds (:mod:`~frameserve.training.jobs.loading`), and
held in shared memory only while the job is queued or running
(:mod:`~frameserve.training.jobs.live`, :mod:`~frameserve.training.jobs.shared`). A job may
not take the name of a model (it is served as a model of its name) or of another job.

**States** (:class:`~frameserve.training.jobs.store.JobState`). ``queued`` → ``running`` →
``done`` | ``failed`` | ``cancelled``; ``resume`` queues a cancelled, failed or done job again
(``steps`` may extend it).

**Running** is :mod:`frameserve.training.jobs.runs`'s: one job at a time per device, each
run in a training process of its own (:mod:`frameserve.training.jobs.process`), so a crash or
``kill -9`` of a job ends that run only (the job is ``failed``, saying what happened, and
``resume`` goes on from its last checkpoint) and never the server. With a ``cluster``
(``frameserve serve --ray``) each run is a Ray task on a node with the resources the
deployment file's ``[training]`` asks for (:mod:`frameserve.training.jobs.cluster`), the same
way: progress, cancel, resume, yielding and crashes behave as below.

**Yielding to inference.** Training shares the machine with interactive requests. The worker
passes ``busy()`` on to the job's process every few milliseconds; after each step, while it
says interactive work is waiting, the process sleeps in short naps (at most
:data:`MAX_YIELD_SECONDS` a step), so an artist's request never queues behind a step for
long; training still progresses under a constant load.

**Cancelling** takes effect before the next step: within a second whenever a step (with its
validation, contact sheet and checkpoint) takes less, as it does by far with the default
settings on a CPU (tens of milliseconds a step). The step under way is finished, and a
checkpoint of the steps done is written. A process that has not built its trainer yet is
killed at once (it has nothing to save); one that has not stopped
:data:`~frameserve.training.jobs.process.STOP_GRACE_SECONDS` after it was asked is killed.
:meth:`TrainingJobs.close` kills the processes that have not stopped within its timeout:
no process outlives the server's close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from frameserve.catalogue.registry import ModelRegistry
from frameserve.errors import ConfigError, JobConflictError, JobNotFoundError
from frameserve.training import (
    ImagePairs,
    LabelledImages,
    TrainingSettings,
    list_checkpoints,
)
from frameserve.training.checkpoints import CONTACT_SHEET_FOLDER
from frameserve.training.inference import model_id_for
from frameserve.training.jobs.cluster import ClusterTraining
from frameserve.training.jobs.data import (
    JobData,
    PathPairs,
    check_frame_count,
    count_named_frames,
)
from frameserve.training.jobs.limits import JobLimits
from frameserve.training.jobs.live import LiveJob, NewJob, prepare_job
from frameserve.training.jobs.loading import JobLoader
from frameserve.training.jobs.losses import LossPoint, read_losses
from frameserve.training.jobs.process import MAX_YIELD_SECONDS
from frameserve.training.jobs.runs import JobRuns
from frameserve.training.jobs.scratch import SCRATCH_FOLDER, remove_old_scratch, scratch_folder
from frameserve.training.jobs.serving import JobModels
from frameserve.training.jobs.status import JobStatus, job_status
from frameserve.training.jobs.store import (
    JobRecord,
    JobState,
    check_job_name,
    hide_job_folder,
    load_records,
)
from frameserve.training.uploads import DEFAULT_MAX_FILE_BYTES, NO_OWNER, UploadStore

__all__ = ["MAX_YIELD_SECONDS", "SCRATCH_FOLDER", "UPLOADS_FOLDER", "TrainingJobs"]

logger = logging.getLogger(__name__)

#: Where uploads wait in the jobs folder (a name no job can have).
UPLOADS_FOLDER = ".uploads"
_READERS = 2  # submissions whose frames are read at once


class TrainingJobs:
    """Queues, runs, cancels and resumes training jobs kept in ``folder``; see the module doc.

    Args:
        folder: the jobs folder (made at the first submission).
        registry: serves each job as a model (``None``: jobs are not served).
        busy: returns whether interactive inference is waiting (training then naps).
        max_upload_bytes: the largest frame file :attr:`uploads` takes.
        limits: what a job may read and hold (default :class:`JobLimits()`: no data roots, so
            frames are uploads or arrays).
        cluster: run each job as a Ray task on the cluster the server has joined
            (:mod:`frameserve.training.jobs.cluster`; ``folder`` must then be on storage every
            node shares); ``None``: in a training process on this machine.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        registry: ModelRegistry | None = None,
        busy: Callable[[], bool] | None = None,
        max_upload_bytes: int = DEFAULT_MAX_FILE_BYTES,
        limits: JobLimits | None = None,
        cluster: ClusterTraining | None = None,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.registry = registry
        self.busy = busy or (lambda: False)
        self.limits = limits or JobLimits()
        #: Frames uploaded for jobs to come (:mod:`frameserve.training.uploads`).
        self.uploads = UploadStore(
            self.folder / UPLOADS_FOLDER,
            max_file_bytes=max_upload_bytes,
            max_frame_pixels=self.limits.max_frame_pixels,
        )
        self._models = JobModels(registry)
        self._loader = JobLoader(_READERS)
        self._lock = threading.Lock()
        self._jobs: dict[str, LiveJob] = {}
        self._reserved: set[str] = set()  # names being submitted
        self._runs = JobRuns(
            self._lock,
            self._jobs,
            models=self._models,
            limits=self.limits,
            busy=lambda: self.busy(),  # what self.busy is when asked
            cluster=cluster,
        )
        for record in load_records(self.folder):
            self._load(record)
        self.uploads.prune()
        remove_old_scratch(self.folder / SCRATCH_FOLDER)

    # -- public --------------------------------------------------------------------------------

    def submit(
        self,
        name: str,
        data: JobData,
        settings: TrainingSettings | None = None,
        *,
        validation: PathPairs = (),
        owner: str = NO_OWNER,
        upload_owner: str | None = None,
    ) -> JobStatus:
        """Queue a new job learning ``data`` and return its status.

        ``data`` is ``(input, target)`` pairs of image files (paths inside the data roots, or
        :class:`~frameserve.training.uploads.UploadedFrame` ids), with ``validation`` pairs
        alike; or a :class:`~frameserve.training.jobs.data.LabelSource`; or arrays
        (:class:`ImagePairs`, :class:`LabelledImages`), which are not kept across a restart.
        The frames are read on a reader thread for at most ``limits.decode_timeout`` seconds.

        Args:
            owner: who submits it (a user's name; :data:`~frameserve.training.uploads.NO_OWNER`
                without authentication).
            upload_owner: whose uploads it may name (``None``: anyone's).

        Raises:
            ConfigError: a bad name, settings that do not fit the data, an unavailable device,
                paths outside the data roots, a reading that took too long.
            RequestTooLargeError: the job names more than a limit allows.
            ImageIOError: an unreadable frame.
            UploadNotFoundError: an upload id that is not stored.
            JobConflictError: a job or a model of that name exists.
        """
        check_job_name(name)
        settings = settings or TrainingSettings()
        device = self._runs.device_for(settings.device)
        self._check_model_free(name)
        check_frame_count(count_named_frames(data, validation), self.limits)  # before a read
        folder = self.folder / name
        with self._lock:
            if name in self._jobs or name in self._reserved:
                raise JobConflictError(f"a training job called {name!r} exists already")
            if folder.exists():
                raise JobConflictError(f"the jobs folder already holds {str(folder)!r}")
            folder.mkdir(parents=True)
            self._reserved.add(name)

        def cleanup() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._reserved.discard(name)

        def read(should_stop: Callable[[], bool]) -> NewJob:
            try:  # reads the frames, checks the settings against them, writes job.json
                return prepare_job(
                    name,
                    data,
                    validation,
                    settings,
                    folder=folder,
                    uploads=self.uploads,
                    limits=self.limits,
                    upload_owner=upload_owner,
                    should_stop=should_stop,
                )
            except BaseException:
                cleanup()
                raise

        files, frames = self._loader.run(read, timeout=self.limits.decode_timeout, cleanup=cleanup)
        record = JobRecord(
            folder=folder,
            name=name,
            state=JobState.QUEUED,
            files=files,
            settings=settings.to_dict(),
            device=device,
            owner=owner,
        )
        job = LiveJob(record)
        job.hold(frames)
        with self._lock:
            record.save()
            self._jobs[name] = job
            self._reserved.discard(name)
        self._models.add(record)  # listed from now on
        self._runs.enqueue(job)
        logger.info(
            "training job %r queued on %s (%d steps) by %s", name, device, settings.steps, owner
        )
        return self.status(name)

    def jobs(self) -> list[JobStatus]:
        """Return every job's status, by name."""
        with self._lock:
            names = sorted(self._jobs)
        return [self.status(name) for name in names]

    def status(self, name: str) -> JobStatus:
        """Return job ``name``'s status.

        Raises:
            JobNotFoundError: no such job.
        """
        job = self._job(name)
        saved = list_checkpoints(job.folder)
        with self._lock:
            progress, record = job.progress, job.record.copy()
        return job_status(record, progress, saved)

    def cancel(self, name: str, *, wait: float = 0.0) -> JobStatus:
        """Stop job ``name`` before its next step (a checkpoint of the steps done is saved).

        Args:
            wait: seconds to wait for a running job to stop before returning its status.

        Raises:
            JobNotFoundError: no such job.
            JobConflictError: the job is not queued or running.
        """
        job = self._job(name)
        with self._lock:
            if not job.state.active:
                raise JobConflictError(f"training job {name!r} is {job.state}, not running")
            job.cancel.set()
            if job.state is JobState.QUEUED:
                job.set_state(JobState.CANCELLED)
        self._models.refresh(name)
        if wait > 0:
            job.finished.wait(wait)
        return self.status(name)

    def resume(self, name: str, *, steps: int | None = None) -> JobStatus:
        """Queue a stopped job again; it goes on from its newest checkpoint.

        Args:
            steps: a new total of steps (to train a finished job further).

        Raises:
            JobNotFoundError: no such job.
            JobConflictError: the job is queued or running.
            ConfigError: ``steps`` below the steps done.
        """
        job = self._job(name)
        with self._lock:
            if job.state.active:
                raise JobConflictError(f"training job {name!r} is {job.state} already")
            if steps is not None:
                done = list_checkpoints(job.folder)
                if done and steps < done[-1].step:
                    raise ConfigError(
                        f"'steps': {steps} is below the {done[-1].step} steps job {name!r} has done"
                    )
                job.record.settings = TrainingSettings.from_dict(
                    {**job.record.settings, "steps": steps}
                ).to_dict()
            job.cancel.clear()
            job.progress = None
            job.set_state(JobState.QUEUED)
        self._models.refresh(name)
        self._runs.enqueue(job)
        return self.status(name)

    def job_folder(self, name: str) -> Path:
        """Return job ``name``'s folder (checkpoints, contact sheets, ``job.json``).

        Raises:
            JobNotFoundError: no such job.
        """
        return self._job(name).folder

    def contact_sheet(self, name: str) -> Path | None:
        """Return job ``name``'s newest contact sheet (``None``: none written yet)."""
        job = self._job(name)
        sheets = list((job.folder / CONTACT_SHEET_FOLDER).glob("step_*.png"))
        if not sheets:
            return None
        return max(sheets, key=lambda path: int(path.stem.removeprefix("step_")))

    def losses(self, name: str) -> list[LossPoint]:
        """Return job ``name``'s loss curve, ``(step, loss, validation_loss)`` oldest first, as
        kept in its folder (:mod:`~frameserve.training.jobs.losses`); JobNotFoundError: no
        such job."""
        return read_losses(self._job(name).folder)

    def delete(self, name: str) -> None:
        """Remove a stopped job: its model, checkpoints, contact sheets and frames.

        Raises:
            JobNotFoundError: no such job.
            JobConflictError: the job is queued or running (cancel it first).
        """
        job = self._job(name)
        with self._lock:
            if job.state.active:
                raise JobConflictError(
                    f"training job {name!r} is {job.state}; cancel it before deleting it"
                )
            del self._jobs[name]
            job.frames = job.data = None  # no frames held past this point
            hidden = hide_job_folder(job.folder)
        self._models.remove(name)
        shutil.rmtree(hidden, ignore_errors=True)
        logger.info("training job %r deleted", name)

    def wait(self, name: str, timeout: float | None = None) -> JobStatus:
        """Block until job ``name`` is no longer queued or running (or ``timeout``)."""
        self._job(name).finished.wait(timeout)
        return self.status(name)

    def held_data(self, name: str) -> ImagePairs | LabelledImages | None:
        """Return the decoded frames job ``name`` holds now, views of its shared memory
        (``None``: none, as when it is stopped and its frames come from files);
        JobNotFoundError: no such job."""
        return self._job(name).data

    def process_id(self, name: str) -> int | None:
        """Return the id of job ``name``'s training process (``None``: it runs in none now;
        on a Ray cluster, its task's worker process on its node, once the task has started);
        JobNotFoundError: no such job."""
        process = self._job(name).process
        return None if process is None else process.pid

    def owner(self, name: str) -> str:
        """Return who submitted job ``name``; JobNotFoundError: no such job."""
        return self._job(name).record.owner

    def scratch(self) -> contextlib.AbstractContextManager[Path]:
        """Return a context giving a new empty folder inside the jobs folder for temporary
        files (exports), removed when it ends (and at the next start, if the process dies)."""
        return scratch_folder(self.folder / SCRATCH_FOLDER)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job (they stay queued or running on disk, to go on at the next start).

        Running jobs stop before their next step and write a checkpoint; a training process
        still running after ``timeout`` seconds is killed: none outlives this call.
        """
        self._loader.close()
        self._runs.close(timeout)
        with self._lock:
            jobs = list(self._jobs)
        for name in jobs:
            self._models.remove(name)

    def _check_model_free(self, name: str) -> None:
        """Raise :class:`JobConflictError` if a model (not a job) is served as ``name``."""
        if self._models.taken(name):
            raise JobConflictError(
                f"job name {name!r} is taken: a model called {model_id_for(name)!r} exists "
                "already (a built-in or installed model), and a job is served as a model of "
                "its name; choose another name"
            )

    # -- state ---------------------------------------------------------------------------------

    def _job(self, name: str) -> LiveJob:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise JobNotFoundError(f"no training job is called {name!r}")
        return job

    def _load(self, record: JobRecord) -> None:
        job = LiveJob(record)
        self._jobs[job.name] = job
        self._models.add(record)
        if record.state.active:
            record.state = JobState.QUEUED
            self._runs.enqueue(job)
        else:
            job.finished.set()
