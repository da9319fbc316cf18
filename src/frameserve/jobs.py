"""The training job queue: jobs run in the background, one at a time per device, served at once.

::

    jobs = TrainingJobs("~/.frameserve/jobs", registry=registry, busy=interactive_waiting)
    jobs.submit("degrain", [("in.1001.exr", "gt.1001.exr")], TrainingSettings(steps=500))
    jobs.status("degrain").to_dict()   # state, step, loss, validation loss, steps/s, ETA
    jobs.cancel("degrain")             # stops within a step (a checkpoint is saved)
    jobs.resume("degrain")             # goes on from the newest checkpoint

**Folder.** Each job lives in ``jobs_folder/NAME`` (the trainer's job folder, see
:mod:`frameserve.training.checkpoints`) plus ``queue.json``: its state, its frame files and
its settings. A new :class:`TrainingJobs` on the same folder lists every job again; jobs that
were queued or running when the server stopped are queued again and resume from their newest
checkpoint. Jobs submitted as arrays cannot be read again after a restart; they fail then.

**States.** ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled``; ``resume`` queues
a cancelled, failed or done job again (``steps`` may extend it).

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
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

from frameserve.errors import ConfigError, FrameServeError
from frameserve.model_folders import ModelEntry
from frameserve.registry import ModelRegistry
from frameserve.training import (
    ImagePairs,
    Trainer,
    TrainingProgress,
    TrainingSettings,
    list_checkpoints,
    model_id_for,
    trained_model_class,
)
from frameserve.training.checkpoints import CONTACT_SHEET_FOLDER, JOB_FILE, write_atomically

__all__ = [
    "MAX_YIELD_SECONDS",
    "STATES",
    "JobConflictError",
    "JobNotFoundError",
    "JobStatus",
    "TrainingJobs",
]

logger = logging.getLogger(__name__)

#: Job states, in the order a job goes through them.
STATES = ("queued", "running", "done", "failed", "cancelled")
#: The longest a training step waits for interactive work to drain.
MAX_YIELD_SECONDS = 1.0
QUEUE_FILE = "queue.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_NAP = 0.02

PathPairs = Sequence[tuple[str, str]]


class JobNotFoundError(FrameServeError):
    """No training job has that name."""


class JobConflictError(FrameServeError):
    """The job's state forbids what was asked (a name in use, resuming a running job)."""


@dataclass(frozen=True, kw_only=True)
class JobStatus:
    """Where one job stands (a snapshot).

    Attributes:
        name / model_id: the job, and the model serving it.
        state: one of :data:`STATES`.
        step / total_steps: steps done and planned.
        loss / validation_loss: smoothed training loss and latest validation loss (or None).
        steps_per_second / eta_seconds: speed over the last steps and time left (0: unknown).
        checkpoints: the saved checkpoints' names, oldest first.
        error: why the job failed (``None`` otherwise).
    """

    name: str
    model_id: str
    state: str
    step: int
    total_steps: int
    loss: float | None
    validation_loss: float | None
    steps_per_second: float
    eta_seconds: float
    checkpoints: tuple[str, ...]
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return {
            "name": self.name,
            "model_id": self.model_id,
            "state": self.state,
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": self.loss,
            "validation_loss": self.validation_loss,
            "steps_per_second": self.steps_per_second,
            "eta_seconds": self.eta_seconds,
            "checkpoints": list(self.checkpoints),
            "error": self.error,
        }


class _Job:
    """One job's mutable state; guarded by :attr:`TrainingJobs._lock`."""

    def __init__(self, name: str, folder: Path, record: dict[str, Any]) -> None:
        self.name = name
        self.folder = folder
        self.record = record  # what queue.json holds
        self.data: ImagePairs | None = None  # frames given as arrays (not stored)
        self.trainer: Trainer | None = None  # built at submission, before its first run
        self.cancel = threading.Event()
        self.progress: TrainingProgress | None = None
        self.finished = threading.Event()

    @property
    def state(self) -> str:
        return str(self.record["state"])

    @property
    def device(self) -> str:
        return str(self.record["settings"].get("device", "cpu"))

    def save(self) -> None:
        text = json.dumps(self.record, indent=2).encode()
        write_atomically(self.folder / QUEUE_FILE, lambda stream: stream.write(text))


class TrainingJobs:
    """Queues, runs, cancels and resumes training jobs kept in ``folder``; see the module doc.

    Args:
        folder: the jobs folder (made at the first submission).
        registry: serves each job as a model (``None``: jobs are not served).
        busy: returns whether interactive inference is waiting (training then naps).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        registry: ModelRegistry | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.registry = registry
        self.busy = busy or (lambda: False)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, Queue[str | None]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._closed = False
        for record_path in sorted(self.folder.glob(f"*/{QUEUE_FILE}")):
            self._load(record_path)

    # -- public --------------------------------------------------------------------------------

    def submit(
        self,
        name: str,
        pairs: PathPairs | ImagePairs,
        settings: TrainingSettings | None = None,
        *,
        validation: PathPairs = (),
    ) -> JobStatus:
        """Queue a new job learning ``pairs`` (``(input, target)`` file paths, or arrays).

        Raises:
            ConfigError: a bad name, unreadable frames or settings that do not fit them.
            JobConflictError: a job of that name exists.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"job name {name!r} is not allowed; use 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        settings = settings or TrainingSettings()
        if isinstance(pairs, ImagePairs):
            data, files = pairs, None
        else:
            if not pairs:
                raise ConfigError("a training job needs at least one (input, target) pair")
            files = {
                "train": [[str(a), str(b)] for a, b in pairs],
                "validation": [[str(a), str(b)] for a, b in validation],
            }
            data = ImagePairs.from_files(pairs, validation)
        data.check_crop_size(settings.crop_size)
        with self._lock:
            if name in self._jobs:
                raise JobConflictError(f"a training job called {name!r} exists already")
            folder = self.folder / name
            if folder.exists():
                raise JobConflictError(f"the jobs folder already holds {str(folder)!r}")
            folder.mkdir(parents=True)
            try:  # checks the settings against the frames, writes job.json: served at once
                trainer = Trainer(data, settings, job_dir=folder, name=name)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            record = {"name": name, "state": "queued", "error": None, "files": files}
            record["settings"] = settings.to_dict()
            job = _Job(name, folder, record)
            job.data, job.trainer = data, trainer
            job.save()
            self._jobs[name] = job
        self._serve(job)
        self._enqueue(job)
        logger.info("training job %r queued (%d steps)", name, settings.steps)
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
        step = progress.step if progress else (saved[-1].step if saved else 0)
        finite = progress is not None and progress.train_loss == progress.train_loss
        return JobStatus(
            name=name,
            model_id=model_id_for(name),
            state=str(record["state"]),
            step=step,
            total_steps=int(record["settings"]["steps"]),
            loss=progress.train_loss if progress and finite else None,
            validation_loss=progress.validation_loss if progress else None,
            steps_per_second=progress.steps_per_second if progress else 0.0,
            eta_seconds=progress.eta_seconds if progress else 0.0,
            checkpoints=tuple(entry.name for entry in saved),
            error=record.get("error"),
        )

    def cancel(self, name: str) -> JobStatus:
        """Stop job ``name`` (within a step; a checkpoint of the steps done is saved).

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
                job.record["settings"] = TrainingSettings.from_dict(
                    {**job.record["settings"], "steps": steps}
                ).to_dict()
            job.cancel.clear()
            job.progress = None
            self._set_state(job, "queued")
        self._refresh(job)
        self._enqueue(job)
        return self.status(name)

    def contact_sheet(self, name: str) -> Path | None:
        """Return job ``name``'s newest contact sheet (``None``: none written yet)."""
        job = self._job(name)
        sheets = list((job.folder / CONTACT_SHEET_FOLDER).glob("step_*.png"))
        if not sheets:
            return None
        return max(sheets, key=lambda path: int(path.stem.removeprefix("step_")))

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
        with self._lock:
            device = job.device
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
            job = self._jobs[name]
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
                    job.record["error"] = str(exc) or type(exc).__name__
                    self._set_state(job, "failed")
            else:
                with self._lock:
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
        if data is None and job.record["files"] is None:
            raise ConfigError(
                f"training job {job.name!r} was given frames as arrays, which are not kept "
                "across a server restart; submit it again"
            )
        if list_checkpoints(job.folder):
            return Trainer.resume(job.folder, data, on_progress=report, steps=settings.steps)
        if data is None:
            files = job.record["files"]
            data = ImagePairs.from_files(
                [tuple(p) for p in files["train"]], [tuple(p) for p in files["validation"]]
            )
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
