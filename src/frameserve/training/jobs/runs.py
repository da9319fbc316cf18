"""Running queued jobs: one worker thread per device, each run in a process of its own.

The queue (:mod:`frameserve.training.jobs.queue`) hands :class:`JobRuns` the jobs to run; it
shares the queue's lock and its jobs::

    runs = JobRuns(lock, jobs, models=JobModels(registry), limits=limits, busy=busy)
    runs.enqueue(job)              # queued on its device's worker
    runs.close(timeout=10.0)       # stops every run; kills processes still running after it

**Devices.** A job's device is resolved when it is queued — ``"auto"`` becomes ``"cuda:0"``
or ``"cpu"``, ``"cuda"`` the current GPU — and kept in the job's record; each resolved device
has one queue and one worker thread, so two jobs never train on one device at once, whatever
names they gave it.

**A process per run.** The worker reads the job's frames again if it holds none (in the
server, confined to the data roots and within the limits), then starts the job's training
process (:mod:`frameserve.training.jobs.process`) and follows it: each step's progress (its
losses kept in the job's ``losses.jsonl``, :mod:`~frameserve.training.jobs.losses`), each
checkpoint (the job's model is refreshed then), the ``busy`` signal passed on, a cancel passed
on. The run ends as the process does:

- ``ended``: done, or ``cancelled``, or still ``running`` on disk if the server is closing (it
  goes on at the next start);
- ``failed``: the trainer's error message, as when it ran in the server;
- the process died (a signal, an exit status, the out-of-memory killer): ``failed``, with an
  error naming what happened and the checkpoint a ``resume`` goes on from; the steps after it
  are lost. A process killed because it did not stop when told to is ``cancelled`` instead.

**On a Ray cluster** (``cluster`` given: ``frameserve serve --ray``) each run is a Ray task
instead (:mod:`frameserve.training.jobs.cluster`), followed the same way. A job's device is
then resolved on the node that runs it, not here, and each job has a worker thread of its own
while it is queued or running: Ray's scheduler, not this queue, decides which jobs run at
once (as many as the cluster has the resources for).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from queue import Queue

from frameserve.engine.devices import resolve_device
from frameserve.errors import ConfigError
from frameserve.training import TrainingProgress, list_checkpoints
from frameserve.training.checkpoints import load_checkpoint
from frameserve.training.jobs.cluster import ClusterTraining
from frameserve.training.jobs.data import ReadingStopped
from frameserve.training.jobs.limits import JobLimits
from frameserve.training.jobs.live import LiveJob
from frameserve.training.jobs.losses import LossLog
from frameserve.training.jobs.process import JobProcess, JobRun, RunOrder
from frameserve.training.jobs.serving import JobModels
from frameserve.training.jobs.store import JobState, json_float

__all__ = ["JobRuns"]

logger = logging.getLogger(__name__)


class JobRuns:
    """Runs jobs one at a time per device, each in a process of its own; see the module doc.

    Args:
        lock: the queue's lock (guards ``jobs`` and every job's state).
        jobs: the queue's jobs, by name (a job deleted while it waits is not run).
        models: serves the jobs as models (refreshed at each checkpoint and state).
        limits: what a job may read when its frames are read again.
        busy: whether interactive inference waits (the training processes then nap).
        cluster: run each job as a Ray task on this cluster (``None``: in a process here).
    """

    def __init__(
        self,
        lock: threading.Lock,
        jobs: dict[str, LiveJob],
        *,
        models: JobModels,
        limits: JobLimits,
        busy: Callable[[], bool],
        cluster: ClusterTraining | None = None,
    ) -> None:
        self._lock = lock
        self.cluster = cluster
        self._jobs = jobs
        self._models = models
        self.limits = limits
        self.busy = busy
        self.closed = False  # read and set under the lock
        self._queues: dict[str, Queue[str | None]] = {}
        self._workers: dict[str, threading.Thread] = {}

    def enqueue(self, job: LiveJob) -> None:
        """Queue ``job`` (queued in its record) on its device's worker."""
        job.finished.clear()
        try:
            device = self.device_for(job.record.settings.get("device", "cpu"))
        except ConfigError as exc:  # a GPU gone since the job was submitted
            with self._lock:
                job.record.error = str(exc)
                job.set_state(JobState.FAILED)
            self._models.refresh(job.name)
            job.finished.set()
            return
        with self._lock:
            if job.record.device != device:
                job.record.device = device
                job.record.save()
            key = device if self.cluster is None else f"ray:{job.name}"
            if key not in self._queues:
                self._queues[key] = Queue()
                worker = threading.Thread(
                    target=self._work,
                    args=(key, self._queues[key]),
                    name=f"frameserve-training-{key}",
                    daemon=True,
                )
                self._workers[key] = worker
                worker.start()
            self._queues[key].put(job.name)

    def device_for(self, device: str) -> str:
        """The device a job asking for ``device`` is recorded with: resolved here (``"auto"``
        becomes ``"cuda:0"`` or ``"cpu"``), or as given on a cluster (its node resolves it).

        Raises:
            ConfigError: an unknown name, or a device this machine does not have.
        """
        if self.cluster is not None:
            return device
        return str(resolve_device(device))

    def close(self, timeout: float) -> None:
        """Stop every run: each process stops before its next step and writes a checkpoint;
        one still running after ``timeout`` seconds is killed. No process outlives this."""
        with self._lock:
            self.closed = True
            jobs = list(self._jobs.values())
            for queue in self._queues.values():
                queue.put(None)
            workers = list(self._workers.values())
        for job in jobs:
            job.cancel.set()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            late = [job.process for job in jobs if job.process is not None]
        for process in late:
            logger.warning(
                "training job %r did not stop within %g s: killed", process.name, timeout
            )
            process.kill()
        for worker in workers:  # soon: its process has ended (a reading never starts one)
            worker.join(timeout)
        if self.cluster is not None:
            self.cluster.close()

    # -- a worker --------------------------------------------------------------------------------

    def _work(self, key: str, queue: Queue[str | None]) -> None:
        while (name := queue.get()) is not None:
            self._run(name)  # holds the job's frames only while it runs
            if self.cluster is not None:
                with self._lock:  # a job's own worker ends with its run
                    if queue.empty():
                        self._queues.pop(key, None)
                        self._workers.pop(key, None)
                        return

    def _run(self, name: str) -> None:
        with self._lock:
            job = self._jobs.get(name)
            if job is None:  # deleted while it waited
                return
            if job.state is not JobState.QUEUED or self.closed:
                job.finished.set()
                return
            job.set_state(JobState.RUNNING)
        self._models.refresh(name)
        try:
            kind, value = self._train(job)
        except ReadingStopped:
            self._stopped(job)  # cancelled (or closing) while its frames were read again
        except Exception as exc:  # a failing job is reported, the worker lives on
            logger.exception("training job %r failed", name)
            self._failed(job, str(exc) or type(exc).__name__)
        else:
            if kind == "ended":
                with self._lock:
                    if isinstance(value, TrainingProgress):
                        job.progress = value  # with the checkpoint the run ended with
                self._stopped(job)
            elif kind == "crashed":
                self._back_to_checkpoint(job)  # the steps after its last checkpoint are lost
                if job.cancel.is_set():  # killed as it was told to stop
                    self._stopped(job)
                else:
                    message = _crash_message(job, str(value))
                    logger.error("%s", message)
                    self._failed(job, message)
            else:
                self._failed(job, str(value))  # its process logged why
        with self._lock:
            job.release_frames()  # read again from its files if it is resumed
        self._models.refresh(name)
        job.finished.set()

    def _train(self, job: LiveJob) -> tuple[str, object]:
        """Run the job in a process of its own until it ends; return how it ended (see
        :meth:`~frameserve.training.jobs.process.JobProcess.outcome`)."""
        job.saved = None
        order = RunOrder(
            name=job.name,
            folder=job.folder,
            settings=job.record.settings,
            frames=job.frames_for_run(self.limits),
            log_level=logging.getLogger("frameserve").getEffectiveLevel(),
        )
        losses = LossLog(job.folder)  # the job's whole curve, kept across runs

        def report(progress: TrainingProgress) -> None:
            losses.append(progress)
            with self._lock:
                job.progress = progress
                if progress.checkpoint is not None:
                    job.saved = progress
                    job.remember()
            if progress.checkpoint is not None:
                self._models.refresh(job.name)

        process: JobRun = JobProcess(order) if self.cluster is None else self.cluster.run(order)
        del order
        with self._lock:
            job.process = process
            stopped = self.closed
        try:
            if stopped:  # closing already: it would be killed at once
                process.kill()
            process.start()
            if self.cluster is None:  # a Ray task says where it runs once it does
                logger.info("training job %r runs in process %s", job.name, process.pid)
            return process.follow(stopping=job.cancel.is_set, busy=self.busy, on_progress=report)
        finally:
            with self._lock:
                job.process = None
            process.close()

    def _stopped(self, job: LiveJob) -> None:
        """Record that job's run ended without failing: done, cancelled, or paused to close."""
        with self._lock:
            job.remember()  # the last checkpoint is of the last step run
            if self.closed:
                pass  # stays "running" on disk: queued again at the next start
            elif job.cancel.is_set():
                job.set_state(JobState.CANCELLED)
            else:
                job.set_state(JobState.DONE)

    def _back_to_checkpoint(self, job: LiveJob) -> None:
        """Make ``job``'s progress that of its newest checkpoint (its process died after it
        wrote it: it may be newer than the last progress it reported, or older)."""
        saved = list_checkpoints(job.folder)
        try:
            payload = load_checkpoint(saved[-1].path) if saved else None
        except ConfigError:  # unreadable: what it last reported with a checkpoint
            payload = None
        with self._lock:
            if payload is None:
                job.progress = job.saved
                return
            job.progress = None  # the status shows the record's progress and newest step
            job.record.progress = {
                "step": int(payload["step"]),
                "loss": json_float(payload["train_loss"]),
                "validation_loss": json_float(payload["validation_loss"]),
                "elapsed_seconds": float(payload["elapsed_seconds"]),
            }
            job.record.save()

    def _failed(self, job: LiveJob, error: str) -> None:
        """Record that job's run failed with ``error``."""
        with self._lock:
            job.remember()
            job.record.error = error
            job.set_state(JobState.FAILED)


def _crash_message(job: LiveJob, what: str) -> str:
    """Say that ``job``'s process ended as ``what`` says, and where a resume goes on from."""
    saved = list_checkpoints(job.folder)
    where = (
        f"its last checkpoint (step {saved[-1].step})"
        if saved
        else "step 0 (it had written no checkpoint yet)"
    )
    return f"training job {job.name!r} stopped: {what}; resume it to go on from {where}"
