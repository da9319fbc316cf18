"""A training job's loss curve on disk: ``losses.jsonl`` in its folder, one line a step.

The server keeps it as its training process reports progress
(:mod:`frameserve.training.jobs.runs`), so the whole curve outlives the page that watched it
and the server itself::

    log = LossLog(job_folder)           # reads what earlier runs kept
    log.append(progress)                # one step's TrainingProgress
    read_losses(job_folder)             # [(step, loss, validation_loss), ...], oldest first

Each line is ``{"step": 120, "loss": 0.0123, "validation_loss": null}``: the step, its
training loss (smoothed over the last steps, as the job's status shows it) and the latest
validation loss (``null``: none yet, or no validation data).

**Bounded.** At :data:`MAX_LOSS_POINTS` points the file is thinned and rewritten atomically:
to at most half as many, the steps that are multiples of the smallest power of two that allows
it (and the first and the newest), so what is kept is spread evenly over the job's steps,
whatever its length; the steps after it are all kept until the next thinning.

**Resumed jobs.** A run resumed from an older checkpoint (its process died after it) reports
steps it had reported before; the points from that step on are dropped first, so the curve is
always the one the job's checkpoints went through.

Only the run's thread writes (one run of a job at a time); readers skip a line being written.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from frameserve.media.atomic import write_bytes_atomically
from frameserve.training.progress import TrainingProgress

__all__ = ["LOSSES_FILE", "MAX_LOSS_POINTS", "LossLog", "LossPoint", "read_losses"]

logger = logging.getLogger(__name__)

#: The curve's file in a job's folder.
LOSSES_FILE = "losses.jsonl"
#: The most points kept; past it, every other one is dropped.
MAX_LOSS_POINTS = 4000

#: ``(step, training loss, validation loss or None)``.
LossPoint = tuple[int, float | None, float | None]


def _number(value: object) -> float | None:
    """``value`` as a finite float, else ``None`` (JSON has no NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def read_losses(folder: Path) -> list[LossPoint]:
    """The curve kept in ``folder`` (a job's), oldest step first; ``[]`` if none is kept.

    Lines that are not a point (one being written, a damaged file) are skipped.
    """
    try:
        text = (folder / LOSSES_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    points: list[LossPoint] = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        step = data.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        points.append((step, _number(data.get("loss")), _number(data.get("validation_loss"))))
    return points


def _line(point: LossPoint) -> str:
    step, loss, validation = point
    return json.dumps({"step": step, "loss": loss, "validation_loss": validation}) + "\n"


class LossLog:
    """Appends one job's points to its ``losses.jsonl``, bounded (see the module doc).

    ``limit``: the most points kept (:data:`MAX_LOSS_POINTS`).
    """

    def __init__(self, folder: Path, *, limit: int = MAX_LOSS_POINTS) -> None:
        self.path = folder / LOSSES_FILE
        self.limit = max(limit, 4)
        kept = read_losses(folder)
        self._count = len(kept)
        self._last = kept[-1][0] if kept else None

    def append(self, progress: TrainingProgress) -> None:
        """Keep ``progress``'s step; a failure to write is logged, never raised (the run goes
        on without its curve)."""
        point: LossPoint = (
            int(progress.step),
            _number(progress.train_loss),
            _number(progress.validation_loss),
        )
        try:
            if self._last is not None and point[0] <= self._last:
                self._rewrite([p for p in read_losses(self.path.parent) if p[0] < point[0]])
            if self._count >= self.limit:
                self._rewrite(_thinned(read_losses(self.path.parent), self.limit))
            with self.path.open("a", encoding="utf-8") as file:
                file.write(_line(point))
        except OSError as exc:
            logger.warning("could not keep the loss curve in %s: %s", self.path, exc)
            return
        self._count += 1
        self._last = point[0]

    def _rewrite(self, points: list[LossPoint]) -> None:
        write_bytes_atomically(self.path, "".join(_line(p) for p in points).encode())
        self._count = len(points)
        self._last = points[-1][0] if points else None


def _thinned(points: list[LossPoint], limit: int) -> list[LossPoint]:
    """At most ``limit // 2`` points of ``points`` (and the first and the newest): those whose
    step is a multiple of the smallest power of two that leaves no more, so that what is kept
    is spread evenly over every step, whatever was thinned before."""
    stride = 1
    while sum(1 for p in points if p[0] % stride == 0) > limit // 2:
        stride *= 2
    kept = [p for p in points[1:-1] if p[0] % stride == 0]
    return points[:1] + kept + points[-1:] if len(points) > 1 else points
