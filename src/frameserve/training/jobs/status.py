"""A training job's status: the snapshot the doors show, from its record and live progress.

::

    status = job_status(record, progress, list_checkpoints(record.folder))
    status.to_dict()     # state, step, loss, validation loss, steps/s, ETA, checkpoints,
                         # and the settings it trains with
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from frameserve.training.checkpoints import CheckpointEntry
from frameserve.training.inference import model_id_for
from frameserve.training.jobs.store import JobRecord, JobState, json_float
from frameserve.training.kinds import JobKind
from frameserve.training.progress import TrainingProgress

__all__ = ["JobStatus", "job_status"]


@dataclass(frozen=True, kw_only=True)
class JobStatus:
    """Where one job stands (a snapshot).

    Attributes:
        name / model_id: the job, and the model serving it.
        kind: ``"image"``, ``"label"`` or ``"number"`` (a :class:`JobKind`).
        state: ``"queued"``, ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``
            (a :class:`~frameserve.training.jobs.store.JobState`).
        device: the device it trains on (resolved: ``"cpu"``, ``"cuda:0"``).
        step / total_steps: steps done and planned.
        loss / validation_loss: smoothed training loss and latest validation loss (or None).
        steps_per_second: speed over the last steps (0: not measured yet).
        eta_seconds: time left while it runs (``None``: unknown, or not running).
        elapsed_seconds: training time so far, across resumes.
        checkpoints: the saved checkpoints' names, oldest first.
        error: why the job failed (``None`` otherwise).
        owner: the user who submitted it (``"-"`` without authentication).
        settings: the :class:`~frameserve.training.TrainingSettings` it trains with, as plain
            data (``{"steps": 2000, "crop_size": 64, ...}``; ``steps`` as a resume set it).
    """

    name: str
    model_id: str
    kind: JobKind
    state: JobState
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
    owner: str
    settings: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return {
            "name": self.name,
            "model_id": self.model_id,
            "kind": self.kind.value,
            "state": self.state.value,
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
            "owner": self.owner,
            "settings": dict(self.settings),
        }


def job_status(
    record: JobRecord, progress: TrainingProgress | None, saved: list[CheckpointEntry]
) -> JobStatus:
    """Return the status of the job of ``record``.

    Args:
        progress: the job's latest progress in this process (``None``: it has not run here
            yet, so the status shows what its last checkpoint recorded).
        saved: its checkpoints, oldest first.
    """
    last = record.progress or {}
    loss: float | None
    validation_loss: float | None
    if progress is not None:
        step, speed, elapsed = progress.step, progress.steps_per_second, progress.elapsed_seconds
        loss, validation_loss = progress.train_loss, progress.validation_loss
    else:
        step = saved[-1].step if saved else 0
        loss, validation_loss = last.get("loss"), last.get("validation_loss")
        speed, elapsed = 0.0, float(last.get("elapsed_seconds", 0.0))
    eta: float | None = None
    running = record.state is JobState.RUNNING
    if running and progress is not None and math.isfinite(progress.eta_seconds):
        eta = progress.eta_seconds
    return JobStatus(
        name=record.name,
        model_id=model_id_for(record.name),
        kind=record.kind,
        state=record.state,
        device=record.device,
        step=step,
        total_steps=int(record.settings["steps"]),
        loss=json_float(loss),
        validation_loss=json_float(validation_loss),
        steps_per_second=speed if math.isfinite(speed) else 0.0,
        eta_seconds=eta,
        elapsed_seconds=elapsed,
        checkpoints=tuple(entry.name for entry in saved),
        error=record.error,
        owner=record.owner,
        settings=dict(record.settings),
    )
