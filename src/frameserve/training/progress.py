"""Training progress: what a trainer reports after each step, and how it times the steps.

::

    trainer = Trainer(pairs, settings, job_dir="jobs/degrain", on_progress=report)
    def report(progress: TrainingProgress) -> None:
        print(progress.step, progress.train_loss, progress.eta_seconds)
        send(progress.to_dict())               # JSON-ready: paths as text, unknown ETA as None

A :class:`StepClock` times the steps: the speed is measured over the last
:data:`RATE_WINDOW` steps of the current run (validation, contact sheets and checkpoints
included), the training time adds up across the job's runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RATE_WINDOW", "ProgressCallback", "StepClock", "TrainingProgress"]

#: Steps the speed is measured over.
RATE_WINDOW = 20


@dataclass(frozen=True, kw_only=True)
class TrainingProgress:
    """Where a job stands after a step.

    Attributes:
        step / total_steps: steps done, and of the whole job.
        loss: this step's training loss.
        train_loss: the training loss smoothed over the last steps.
        validation_loss: the latest validation loss (``None``: none yet, or no validation data).
        learning_rate: the rate this step used.
        steps_per_second: over the last steps, checkpoints and validation included.
        eta_seconds: time left at that speed.
        elapsed_seconds: training time of the job so far, across resumes.
        checkpoint / contact_sheet: the file written at this step, if any.
    """

    step: int
    total_steps: int
    loss: float
    train_loss: float
    validation_loss: float | None
    learning_rate: float
    steps_per_second: float
    eta_seconds: float
    elapsed_seconds: float
    checkpoint: Path | None = None
    contact_sheet: Path | None = None

    @property
    def finished(self) -> bool:
        """Whether the job has done all its steps."""
        return self.step >= self.total_steps

    def to_dict(self) -> dict[str, Any]:
        """Return the progress as JSON-friendly data (paths as text, an unknown ETA as None)."""
        data = dataclasses.asdict(self)
        data["finished"] = self.finished
        data["eta_seconds"] = self.eta_seconds if math.isfinite(self.eta_seconds) else None
        for name in ("checkpoint", "contact_sheet"):
            data[name] = None if data[name] is None else str(data[name])
        return data


#: What a trainer calls after every step.
ProgressCallback = Callable[[TrainingProgress], object]


class StepClock:
    """Times a job's steps: its training time, and the speed of the current run.

    ::

        clock = StepClock(elapsed=saved_seconds)
        started = clock.start(step)        # before a step
        clock.stop(started, step + 1)      # after it (and what was due at it)
        clock.steps_per_second, clock.elapsed
    """

    def __init__(self, elapsed: float = 0.0) -> None:
        #: Training time of the job so far, in seconds.
        self.elapsed = elapsed
        self._times: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW + 1)

    def restart(self) -> None:
        """Forget the speed measured so far (a new run starts; the pause is not training)."""
        self._times.clear()

    def start(self, step: int) -> float:
        """Note that a step after ``step`` steps starts; return its start time."""
        started = time.perf_counter()
        if not self._times:
            self._times.append((started, step))
        return started

    def stop(self, started: float, step: int) -> None:
        """Note that the step begun at ``started`` ended with ``step`` steps done."""
        now = time.perf_counter()
        self.elapsed += now - started
        self._times.append((now, step))

    @property
    def steps_per_second(self) -> float:
        """The speed over the last :data:`RATE_WINDOW` steps of this run (0: none timed)."""
        if not self._times:
            return 0.0
        (first_time, first_step), (last_time, last_step) = self._times[0], self._times[-1]
        return (last_step - first_step) / max(last_time - first_time, 1e-9)
