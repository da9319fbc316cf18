"""The training job queue: jobs run in the background, one at a time per device, served at once.

::

    jobs = TrainingJobs("~/.frameserve/jobs", registry=registry, busy=interactive_waiting)
    jobs.submit("degrain", [("in.1001.exr", "gt.1001.exr")], TrainingSettings(steps=500))
    jobs.submit("plate", [(UploadedFrame(a.id), UploadedFrame(b.id))])  # uploaded frames
    jobs.submit("daynight", LabelSource("label", "shots/"))               # a label job
    jobs.status("degrain").to_dict()   # state, step, loss, validation loss, steps/s, ETA
    jobs.cancel("degrain")             # stops before its next step (a checkpoint is saved)
    jobs.resume("degrain")             # goes on from the newest checkpoint

**Folder.** Each job lives in ``jobs_folder/NAME`` (the trainer's job folder, see
:mod:`frameserve.training.checkpoints`) plus ``queue.json``: its state, its frame files, its
settings, its device and its last saved progress. Frames uploaded over HTTP
(:mod:`frameserve.training.uploads`, in ``jobs_folder/.uploads``) that a job names are linked into
``NAME/frames/``, so the job keeps them after the upload ages out. A new :class:`TrainingJobs`
on the same folder lists every job again; jobs that were queued or running when the server
stopped are queued again and resume from their newest checkpoint. Jobs submitted as arrays
cannot be read again after a restart; they fail then.

**Kinds.** Image-to-image jobs learn ``(input, target)`` pairs of files (or arrays); label and
number jobs learn from a folder of class folders or a table of file → value
(:class:`LabelSource`); :mod:`frameserve.training.jobs.data` reads them and says what the record
keeps.

**States.** ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled``; ``resume`` queues
a cancelled, failed or done job again (``steps`` may extend it).

**Devices.** A job's device (its ``device`` setting) is resolved when it is queued —
``"auto"`` becomes ``"cuda:0"`` or ``"cpu"``, ``"cuda"`` the current GPU — and kept in the
job's record; each resolved device has one queue and one worker thread, so two jobs never
train on one device at once, whatever names they gave it.

**Serving.** Each job is a model (id :func:`~frameserve.training.model_id_for` its name) from a
registry provider named ``training:NAME``, listed from submission on (the trainer is
built then, which also checks the settings against the frames), with a ``checkpoint``
knob. The provider is refreshed whenever a checkpoint is written or the state changes, and its
token holds the newest checkpoint's step, so cached results of an older network are never
served.

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

import json
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

from frameserve.catalogue.entries import ModelEntry
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
    model_id_for,
    trained_model_class,
)
from frameserve.training.checkpoints import CONTACT_SHEET_FOLDER, JOB_FILE, write_atomically
from frameserve.training.jobs.data import (
    FrameSource,
    JobData,
    LabelSource,
    PathPairs,
    read_job_data,
    reread_job_data,
)
from frameserve.training.uploads import DEFAULT_MAX_FILE_BYTES, UploadStore

__all__ = [
    "MAX_YIELD_SECONDS",
    "STATES",
    "UPLOADS_FOLDER",
    "FrameSource",
    "JobStatus",
    "LabelSource",
    "TrainingJobs",
]

logger = logging.getLogger(__name__)

#: Job states, in the order a job goes through them.
STATES = ("queued", "running", "done", "failed", "cancelled")
#: The longest a training step waits for interactive work to drain.
MAX_YIELD_SECONDS = 1.0
QUEUE_FILE = "queue.json"
#: Where uploads wait in the jobs folder (a name no job can have).
UPLOADS_FOLDER = ".uploads"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_NAP = 0.02
_DELETED = ".deleted-"


@dataclass(frozen=True, kw_only=True)
class JobStatus:
    """Where one job stands (a snapshot).

    Attributes:
        name / model_id: the job, and the model serving it.
        kind: ``"image"``, ``"label"`` or ``"number"``.
        state: one of :data:`STATES`.
        device: the device it trains on (resolved: ``"cpu"``, ``"cuda:0"``).
        step / total_steps: steps done and planned.
        loss / validation_loss: smoothed training loss and latest validation loss (or None).
        steps_per_second: speed over the last steps (0: not measured yet).
        eta_seconds: time left while it runs (``None``: unknown, or not running).
        elapsed_seconds: training time so far, across resumes.
        checkpoints: the saved checkpoints' names, oldest first.
        error: why the job failed (``None`` otherwise).
    """

    name: str
    model_id: str
    kind: str
    state: str
    device: str
    step: int
    total_steps: int
    loss: float | None
    validation_loss: float | None
    steps_per_second: float
    eta_seconds: float | None
    elapsed_seconds: float
    checkpoints: tuple[str, ...]
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return {
            "name": self.name,
            "model_id": self.model_id,
            "kind": self.kind,
            "state": self.state,
            "device": self.device,
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": self.loss,
            "validation_loss": self.validation_loss,
            "steps_per_second": self.steps_per_second,
            "eta_seconds": self.eta_seconds,
            "elapsed_seconds": self.elapsed_seconds,
            "checkpoints": list(self.checkpoints),
            "error": self.error,
        }


class _Job:
    """One job's mutable state; guarded by :attr:`TrainingJobs._lock`."""

    def __init__(self, name: str, folder: Path, record: dict[str, Any]) -> None:
        self.name = name
        self.folder = folder
        self.record = record  # what queue.json holds
        self.data: ImagePairs | LabelledImages | None = None  # given as arrays (not stored)
        self.trainer: Trainer | None = None  # built at submission, before its first run
        self.cancel = threading.Event()
        self.progress: TrainingProgress | None = None
        self.finished = threading.Event()

    @property
    def state(self) -> str:
        return str(self.record["state"])

    @property
    def device(self) -> str:
        return str(self.record.get("device") or self.record["settings"].get("device", "cpu"))

    def save(self) -> None:
        text = json.dumps(self.record, indent=2).encode()
        write_atomically(self.folder / QUEUE_FILE, lambda stream: stream.write(text))


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
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._reserved: set[str] = set()  # names being submitted
        self._queues: dict[str, Queue[str | None]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._closed = False
        for record_path in sorted(self.folder.glob(f"*/{QUEUE_FILE}")):
            if not record_path.parent.name.startswith("."):  # uploads, deletions under way
                self._load(record_path)
        for leftover in self.folder.glob(f"{_DELETED}*"):  # a delete the process never ended
            shutil.rmtree(leftover, ignore_errors=True)
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
        or a :class:`LabelSource`; or arrays (:class:`ImagePairs`, :class:`LabelledImages`),
        which are not kept across a restart.

        Raises:
            ConfigError: a bad name, settings that do not fit the data, an unavailable device.
            ImageIOError: an unreadable frame.
            UploadNotFoundError: an upload id that is not stored.
            JobConflictError: a job of that name exists.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"job name {name!r} is not allowed; use 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
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
        record: dict[str, Any] = {"name": name, "state": "queued", "error": None}
        record.update(files=files, settings=settings.to_dict(), device=device)
        job = _Job(name, folder, record)
        job.data, job.trainer = loaded, trainer
        with self._lock:
            job.save()
            self._jobs[name] = job
            self._reserved.discard(name)
        self._serve(job)  # listed from now on
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
            progress, record = job.progress, dict(job.record)
        last = record.get("progress") or {}
        state = str(record["state"])
        loss: float | None
        validation_loss: float | None
        if progress is not None:
            step, speed, elapsed = (
                progress.step,
                progress.steps_per_second,
                progress.elapsed_seconds,
            )
            loss, validation_loss = progress.train_loss, progress.validation_loss
        else:  # not run in this process yet: what the last checkpoint recorded
            step = saved[-1].step if saved else 0
            loss, validation_loss = last.get("loss"), last.get("validation_loss")
            speed, elapsed = 0.0, float(last.get("elapsed_seconds", 0.0))
        eta: float | None = None
        if state == "running" and progress is not None and math.isfinite(progress.eta_seconds):
            eta = progress.eta_seconds
        return JobStatus(
            name=name,
            model_id=model_id_for(name),
            kind=str((record.get("files") or {}).get("kind", "image")),
            state=state,
            device=job.device,
            step=step,
            total_steps=int(record["settings"]["steps"]),
            loss=_finite(loss),
            validation_loss=_finite(validation_loss),
            steps_per_second=speed if math.isfinite(speed) else 0.0,
            eta_seconds=eta,
            elapsed_seconds=elapsed,
            checkpoints=tuple(entry.name for entry in saved),
            error=record.get("error"),
        )

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
            if job.state not in ("queued", "running"):
                raise JobConflictError(f"training job {name!r} is {job.state}, not running")
            job.cancel.set()
            if job.state == "queued":
                self._set_state(job, "cancelled")
        self._refresh(job)
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
            if job.state in ("queued", "running"):
                raise JobConflictError(f"training job {name!r} is {job.state} already")
            if steps is not None:
                done = list_checkpoints(job.folder)
                if done and steps < done[-1].step:
                    raise ConfigError(
                        f"'steps': {steps} is below the {done[-1].step} steps job {name!r} has done"
                    )
                job.record["settings"] = TrainingSettings.from_dict(
                    {**job.record["settings"], "steps": steps}
                ).to_dict()
            job.cancel.clear()
            job.progress = None
            self._set_state(job, "queued")
        self._refresh(job)
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
            if job.state in ("queued", "running"):
                raise JobConflictError(
                    f"training job {name!r} is {job.state}; cancel it before deleting it"
                )
            del self._jobs[name]
            hidden = self.folder / f"{_DELETED}{name}-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(job.folder, hidden)  # gone at once: a restart does not list it again
        if self.registry is not None:
            self.registry.remove_provider(_provider(name))
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
        if self.registry is not None:
            for job in jobs:
                self.registry.remove_provider(_provider(job.name))

    # -- running -------------------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        job.finished.clear()
        try:
            device = str(resolve_device(job.record["settings"].get("device", "cpu")))
        except ConfigError as exc:  # a GPU gone since the job was submitted
            with self._lock:
                job.record["error"] = str(exc)
                self._set_state(job, "failed")
            self._refresh(job)
            job.finished.set()
            return
        with self._lock:
            if job.record.get("device") != device:
                job.record["device"] = device
                job.save()
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
                if job.state != "queued" or self._closed:
                    job.finished.set()
                    continue
                self._set_state(job, "running")
            self._refresh(job)
            try:
                trainer = self._trainer(job)
                trainer.run(should_stop=job.cancel.is_set)
            except Exception as exc:  # a failing job is reported, the worker lives on
                logger.exception("training job %r failed", name)
                with self._lock:
                    _remember(job)
                    job.record["error"] = str(exc) or type(exc).__name__
                    self._set_state(job, "failed")
            else:
                with self._lock:
                    _remember(job)  # the last checkpoint is of the last step run
                    if self._closed:
                        pass  # stays "running" on disk: queued again at the next start
                    elif job.cancel.is_set():
                        self._set_state(job, "cancelled")
                    else:
                        self._set_state(job, "done")
            self._refresh(job)
            job.finished.set()

    def _trainer(self, job: _Job) -> Trainer:
        settings = TrainingSettings.from_dict(job.record["settings"])

        def report(progress: TrainingProgress) -> None:
            with self._lock:
                job.progress = progress
                if progress.checkpoint is not None:
                    _remember(job)
            if progress.checkpoint is not None:
                self._refresh(job)
            waited = 0.0
            while waited < MAX_YIELD_SECONDS and not job.cancel.is_set() and self.busy():
                time.sleep(_NAP)
                waited += _NAP

        if job.trainer is not None:
            trainer, job.trainer = job.trainer, None
            trainer.on_progress = report
            return trainer
        data = job.data
        files = job.record["files"]
        if data is None and files is None:
            raise ConfigError(
                f"training job {job.name!r} was given frames as arrays, which are not kept "
                "across a server restart; submit it again"
            )
        if list_checkpoints(job.folder):
            return Trainer.resume(job.folder, data, on_progress=report, steps=settings.steps)
        if data is None:
            data = reread_job_data(files)
        return Trainer(data, settings, job_dir=job.folder, name=job.name, on_progress=report)

    # -- state and serving ---------------------------------------------------------------------

    def _set_state(self, job: _Job, state: str) -> None:
        """Record ``state`` (the caller holds the lock)."""
        job.record["state"] = state
        if state in ("queued", "running"):
            job.record["error"] = None
        job.save()
        logger.info("training job %r: %s", job.name, state)

    def _job(self, name: str) -> _Job:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            raise JobNotFoundError(f"no training job is called {name!r}")
        return job

    def _load(self, record_path: Path) -> None:
        try:
            record = json.loads(record_path.read_text())
            job = _Job(str(record["name"]), record_path.parent, record)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("skipping unreadable training job %s: %s", record_path, exc)
            return
        self._jobs[job.name] = job
        if job.state in ("queued", "running"):
            job.record["state"] = "queued"
            self._serve(job)
            self._enqueue(job)
        else:
            job.finished.set()
            self._serve(job)

    def _serve(self, job: _Job) -> None:
        if self.registry is not None:
            self.registry.add_provider(_provider(job.name), lambda: self._entries(job))

    def _refresh(self, job: _Job) -> None:
        if self.registry is not None:
            self.registry.refresh_provider(_provider(job.name))

    def _entries(self, job: _Job) -> list[ModelEntry]:
        if not (job.folder / JOB_FILE).is_file():
            return []  # the trainer has not started yet
        training = job.state in ("queued", "running")
        model = trained_model_class(job.folder, model_id=model_id_for(job.name), training=training)
        saved = list_checkpoints(job.folder)
        newest = saved[-1].step if saved else -1
        token = f"{job.state}:{newest}:{len(saved)}"
        return [ModelEntry.from_class(model, source=f"training job {job.name}", token=token)]


def _provider(name: str) -> str:
    return f"training:{name}"


def _remember(job: _Job) -> None:
    """Keep the progress in the record (the caller holds the lock): a job listed after a
    restart shows the loss of its last checkpoint until it runs again."""
    progress = job.progress
    if progress is not None:
        job.record["progress"] = {
            "step": progress.step,
            "loss": _finite(progress.train_loss),
            "validation_loss": _finite(progress.validation_loss),
            "elapsed_seconds": progress.elapsed_seconds,
        }
        job.save()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
