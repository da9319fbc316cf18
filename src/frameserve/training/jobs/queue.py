"""The training job queue: jobs run in the background, one at a time per device, served at once.

::

    jobs = TrainingJobs("~/.frameserve/jobs", registry=registry, busy=interactive_waiting)
    jobs.submit("degrain", [("in.1001.exr", "gt.1001.exr")], TrainingSettings(steps=500))
    jobs.submit("plate", [(UploadedFrame(a.id), UploadedFrame(b.id))])  # uploaded frames
    jobs.submit("daynight", LabelSource("label", "shots/"))               # a label job
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

**States** (:class:`~frameserve.training.jobs.store.JobState`). ``queued`` → ``running`` →
``done`` | ``failed`` | ``cancelled``; ``resume`` queues a cancelled, failed or done job again
(``steps`` may extend it).

**Devices.** A job's device (its ``device`` setting) is resolved when it is queued —
``"auto"`` becomes ``"cuda:0"`` or ``"cpu"``, ``"cuda"`` the current GPU — and kept in the
job's record; each resolved device has one queue and one worker thread, so two jobs never
train on one device at once, whatever names they gave it.

**Yielding to inference.** Training shares the machine with interactive requests. After each
step, while ``busy()`` says interactive work is waiting, the worker sleeps in short naps (at
most :data:`MAX_YIELD_SECONDS` a step), so an artist's request never queues behind a step
for long; training still progresses under a constant load.

**Cancelling** takes effect before the next step: within a second whenever a step (with its
validation, contact sheet and checkpoint) takes less, as it does by far with the default
settings on a CPU (tens of milliseconds a step). The step under way is finished, and a
checkpoint of the steps done is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import Queue

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.devices import resolve_device
from frameserve.errors import ConfigError, JobConflictError, JobNotFoundError
from frameserve.training import (
    ImagePairs,
    LabelledImages,
    Trainer,
    TrainingProgress,
    TrainingSettings,
    list_checkpoints,
)
from frameserve.training.checkpoints import CONTACT_SHEET_FOLDER
from frameserve.training.jobs.data import JobData, PathPairs, read_job_data, reread_job_data
from frameserve.training.jobs.serving import JobModels
from frameserve.training.jobs.status import JobStatus, job_status
from frameserve.training.jobs.store import (
    JobRecord,
    JobState,
    check_job_name,
    hide_job_folder,
    load_records,
)
from frameserve.training.uploads import DEFAULT_MAX_FILE_BYTES, UploadStore

__all__ = ["MAX_YIELD_SECONDS", "UPLOADS_FOLDER", "TrainingJobs"]

logger = logging.getLogger(__name__)

#: The longest a training step waits for interactive work to drain.
MAX_YIELD_SECONDS = 1.0
#: Where uploads wait in the jobs folder (a name no job can have).
UPLOADS_FOLDER = ".uploads"
_NAP = 0.02


class _Job:
    """One job in this process: its record and what runs it; guarded by the queue's lock."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.data: ImagePairs | LabelledImages | None = None  # given as arrays (not stored)
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


class TrainingJobs:
    """Queues, runs, cancels and resumes training jobs kept in ``folder``; see the module doc.

    Args:
        folder: the jobs folder (made at the first submission).
        registry: serves each job as a model (``None``: jobs are not served).
        busy: returns whether interactive inference is waiting (training then naps).
        max_upload_bytes: the largest frame file :attr:`uploads` takes.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        registry: ModelRegistry | None = None,
        busy: Callable[[], bool] | None = None,
        max_upload_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.registry = registry
        self.busy = busy or (lambda: False)
        #: Frames uploaded for jobs to come (:mod:`frameserve.training.uploads`).
        self.uploads = UploadStore(self.folder / UPLOADS_FOLDER, max_file_bytes=max_upload_bytes)
        self._models = JobModels(registry)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._reserved: set[str] = set()  # names being submitted
        self._queues: dict[str, Queue[str | None]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._closed = False
        for record in load_records(self.folder):
            self._load(record)
        self.uploads.prune()

    # -- public --------------------------------------------------------------------------------

    def submit(
        self,
        name: str,
        data: JobData,
        settings: TrainingSettings | None = None,
        *,
        validation: PathPairs = (),
    ) -> JobStatus:
        """Queue a new job learning ``data`` and return its status.

        ``data`` is ``(input, target)`` pairs of image files (paths the server reads, or
        :class:`~frameserve.training.uploads.UploadedFrame` ids), with ``validation`` pairs alike;
        or a :class:`~frameserve.training.jobs.data.LabelSource`; or arrays
        (:class:`ImagePairs`, :class:`LabelledImages`), which are not kept across a restart.

        Raises:
            ConfigError: a bad name, settings that do not fit the data, an unavailable device.
            ImageIOError: an unreadable frame.
            UploadNotFoundError: an upload id that is not stored.
            JobConflictError: a job of that name exists.
        """
        check_job_name(name)
        settings = settings or TrainingSettings()
        device = str(resolve_device(settings.device))
        folder = self.folder / name
        with self._lock:
            if name in self._jobs or name in self._reserved:
                raise JobConflictError(f"a training job called {name!r} exists already")
            if folder.exists():
                raise JobConflictError(f"the jobs folder already holds {str(folder)!r}")
            folder.mkdir(parents=True)
            self._reserved.add(name)
        try:  # reads the frames, checks the settings against them, writes job.json
            files, loaded = read_job_data(data, validation, folder=folder, uploads=self.uploads)
            if isinstance(loaded, ImagePairs):
                loaded.check_crop_size(settings.crop_size)
            trainer = Trainer(loaded, settings, job_dir=folder, name=name)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._reserved.discard(name)
            raise
        record = JobRecord(
            folder=folder,
            name=name,
            state=JobState.QUEUED,
            files=files,
            settings=settings.to_dict(),
            device=device,
        )
        job = _Job(record)
        job.data, job.trainer = loaded, trainer
        with self._lock:
            record.save()
            self._jobs[name] = job
            self._reserved.discard(name)
        self._models.add(record)  # listed from now on
        self._enqueue(job)
        logger.info("training job %r queued on %s (%d steps)", name, device, settings.steps)
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
                self._set_state(job, JobState.CANCELLED)
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
            self._set_state(job, JobState.QUEUED)
        self._models.refresh(name)
        self._enqueue(job)
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
            hidden = hide_job_folder(job.folder)
        self._models.remove(name)
        shutil.rmtree(hidden, ignore_errors=True)
        logger.info("training job %r deleted", name)

    def wait(self, name: str, timeout: float | None = None) -> JobStatus:
        """Block until job ``name`` is no longer queued or running (or ``timeout``)."""
        self._job(name).finished.wait(timeout)
        return self.status(name)

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job (they stay queued or running on disk, to go on at the next start)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
            for queue in self._queues.values():
                queue.put(None)
            workers = list(self._workers.values())
        for job in jobs:
            job.cancel.set()
        for worker in workers:
            worker.join(timeout)
        for job in jobs:
            self._models.remove(job.name)

    # -- running -------------------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        job.finished.clear()
        try:
            device = str(resolve_device(job.record.settings.get("device", "cpu")))
        except ConfigError as exc:  # a GPU gone since the job was submitted
            with self._lock:
                job.record.error = str(exc)
                self._set_state(job, JobState.FAILED)
            self._models.refresh(job.name)
            job.finished.set()
            return
        with self._lock:
            if job.record.device != device:
                job.record.device = device
                job.record.save()
            if device not in self._queues:
                self._queues[device] = Queue()
                worker = threading.Thread(
                    target=self._work,
                    args=(self._queues[device],),
                    name=f"frameserve-training-{device}",
                    daemon=True,
                )
                self._workers[device] = worker
                worker.start()
            self._queues[device].put(job.name)

    def _work(self, queue: Queue[str | None]) -> None:
        while (name := queue.get()) is not None:
            job = self._jobs.get(name)
            if job is None:  # deleted while it waited
                continue
            with self._lock:
                if job.state is not JobState.QUEUED or self._closed:
                    job.finished.set()
                    continue
                self._set_state(job, JobState.RUNNING)
            self._models.refresh(name)
            try:
                trainer = self._trainer(job)
                trainer.run(should_stop=job.cancel.is_set)
            except Exception as exc:  # a failing job is reported, the worker lives on
                logger.exception("training job %r failed", name)
                with self._lock:
                    self._remember(job)
                    job.record.error = str(exc) or type(exc).__name__
                    self._set_state(job, JobState.FAILED)
            else:
                with self._lock:
                    self._remember(job)  # the last checkpoint is of the last step run
                    if self._closed:
                        pass  # stays "running" on disk: queued again at the next start
                    elif job.cancel.is_set():
                        self._set_state(job, JobState.CANCELLED)
                    else:
                        self._set_state(job, JobState.DONE)
            self._models.refresh(name)
            job.finished.set()

    def _trainer(self, job: _Job) -> Trainer:
        settings = TrainingSettings.from_dict(job.record.settings)

        def report(progress: TrainingProgress) -> None:
            with self._lock:
                job.progress = progress
                if progress.checkpoint is not None:
                    self._remember(job)
            if progress.checkpoint is not None:
                self._models.refresh(job.name)
            waited = 0.0
            while waited < MAX_YIELD_SECONDS and not job.cancel.is_set() and self.busy():
                time.sleep(_NAP)
                waited += _NAP

        if job.trainer is not None:
            trainer, job.trainer = job.trainer, None
            trainer.on_progress = report
            return trainer
        data, files = job.data, job.record.files
        if list_checkpoints(job.folder):  # without data, it reads the files its checkpoint lists
            if data is None and files is None:
                raise _arrays_lost(job.name)
            return Trainer.resume(job.folder, data, on_progress=report, steps=settings.steps)
        if data is None:
            if files is None:
                raise _arrays_lost(job.name)
            data = reread_job_data(files)
        return Trainer(data, settings, job_dir=job.folder, name=job.name, on_progress=report)

    # -- state ---------------------------------------------------------------------------------

    def _set_state(self, job: _Job, state: JobState) -> None:
        """Record ``state`` (the caller holds the lock)."""
        job.record.state = state
        if state.active:
            job.record.error = None
        job.record.save()
        logger.info("training job %r: %s", job.name, state)

    @staticmethod
    def _remember(job: _Job) -> None:
        """Keep the progress in the record (the caller holds the lock)."""
        if job.progress is not None:
            job.record.keep_progress(job.progress)
            job.record.save()

    def _job(self, name: str) -> _Job:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise JobNotFoundError(f"no training job is called {name!r}")
        return job

    def _load(self, record: JobRecord) -> None:
        job = _Job(record)
        self._jobs[job.name] = job
        self._models.add(record)
        if record.state.active:
            record.state = JobState.QUEUED
            self._enqueue(job)
        else:
            job.finished.set()


def _arrays_lost(name: str) -> ConfigError:
    return ConfigError(
        f"training job {name!r} was given frames as arrays, which are not kept across a server "
        "restart; submit it again"
    )
