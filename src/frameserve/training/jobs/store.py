"""The job records on disk: each job's ``queue.json``, written atomically, read back at start.

A job lives in ``jobs_folder/NAME`` (the trainer's job folder, see
:mod:`frameserve.training.checkpoints`) plus ``queue.json``: its state, its frames (as
:mod:`frameserve.training.jobs.data` records them), its settings, its resolved device, why it
failed, the progress of its last checkpoint and who submitted it (``owner``)::

    record = JobRecord(folder=jobs / "degrain", name="degrain", state=JobState.QUEUED,
                       files=files, settings=settings.to_dict(), device="cpu", owner="maya")
    record.save()                          # atomically (frameserve.media.atomic)
    records = load_records(jobs)           # at the next start: every readable job

A job is deleted by renaming its folder to a hidden ``.deleted-*`` name (gone at once: a
restart does not list it again) and then removing it; :func:`load_records` finishes deletions
that a process never ended, and removes the temporary files of writes a killed process left in
the job folders (:func:`~frameserve.media.atomic.remove_leftovers`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frameserve.errors import ConfigError
from frameserve.media.atomic import remove_leftovers, write_bytes_atomically
from frameserve.training.kinds import JobKind
from frameserve.training.progress import TrainingProgress
from frameserve.training.uploads import NO_OWNER

__all__ = [
    "QUEUE_FILE",
    "JobRecord",
    "JobState",
    "check_job_name",
    "hide_job_folder",
    "json_float",
    "load_records",
]

logger = logging.getLogger(__name__)

#: A job's record, in its folder.
QUEUE_FILE = "queue.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_DELETED = ".deleted-"


class JobState(enum.StrEnum):
    """Where a job stands: ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled``.

    A state is a :class:`str` (``JobState.DONE == "done"``): the records and the HTTP API hold
    the plain name.
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """Whether the job is queued or running (so it cannot be resumed or deleted)."""
        return self in (JobState.QUEUED, JobState.RUNNING)


@dataclass(kw_only=True)
class JobRecord:
    """What ``queue.json`` keeps of one job; the queue changes it under its lock.

    Attributes:
        folder: the job folder (not stored: the record lies in it).
        name: the job's name (its folder's name).
        state: where it stands.
        files: what it learns from (see :mod:`frameserve.training.jobs.data`); ``None`` for
            arrays, which are not kept.
        settings: its :class:`~frameserve.training.TrainingSettings`, as plain data.
        device: the device it trains on, resolved (``"cpu"``, ``"cuda:0"``).
        error: why it failed (``None`` otherwise).
        progress: step, losses and training time of its last checkpoint (``None``: none yet).
        owner: the user who submitted it (``"-"``: a server without authentication; records
            written before owners were kept are read as that).
    """

    folder: Path
    name: str
    state: JobState
    files: dict[str, Any] | None
    settings: dict[str, Any]
    device: str
    error: str | None = None
    progress: dict[str, Any] | None = None
    owner: str = NO_OWNER

    @property
    def kind(self) -> JobKind:
        """What the job's network learns to give (image, label, number)."""
        return JobKind((self.files or {}).get("kind", JobKind.IMAGE))

    def keep_progress(self, progress: TrainingProgress) -> None:
        """Keep the step, losses and time of ``progress`` (a job listed after a restart shows
        those of its last checkpoint until it runs again)."""
        self.progress = {
            "step": progress.step,
            "loss": json_float(progress.train_loss),
            "validation_loss": json_float(progress.validation_loss),
            "elapsed_seconds": progress.elapsed_seconds,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the record as ``queue.json`` holds it."""
        data: dict[str, Any] = {
            "name": self.name,
            "state": self.state.value,
            "error": self.error,
            "files": self.files,
            "settings": self.settings,
            "device": self.device,
            "owner": self.owner,
        }
        if self.progress is not None:
            data["progress"] = self.progress
        return data

    def save(self) -> None:
        """Write ``queue.json`` atomically."""
        text = json.dumps(self.to_dict(), indent=2)
        write_bytes_atomically(self.folder / QUEUE_FILE, text.encode())

    def copy(self) -> JobRecord:
        """Return a snapshot of the record (its dictionaries are shared, not copied)."""
        return dataclasses.replace(self)

    @classmethod
    def read(cls, path: Path) -> JobRecord:
        """Read the record at ``path`` (a ``queue.json``).

        Raises:
            OSError: it cannot be read.
            ValueError, KeyError, TypeError: it is not a job record.
        """
        data = json.loads(path.read_text(encoding="utf-8"))
        settings, files = data["settings"], data.get("files")
        if not isinstance(settings, dict) or not isinstance(files, dict | None):
            raise TypeError("'settings' must be an object and 'files' an object or null")
        JobKind((files or {}).get("kind", JobKind.IMAGE))  # ValueError: an unknown kind
        return cls(
            folder=path.parent,
            name=str(data["name"]),
            state=JobState(data["state"]),
            files=files,
            settings=settings,
            device=str(data.get("device") or settings.get("device", "cpu")),
            error=data.get("error"),
            progress=data.get("progress"),
            owner=str(data.get("owner") or NO_OWNER),
        )


def load_records(folder: Path) -> list[JobRecord]:
    """Return the record of every job in the jobs ``folder``, by name; see the module doc.

    Unreadable records are logged and skipped; hidden folders (uploads, deletions under way)
    hold no job. Never raises for a folder that does not exist.
    """
    for leftover in folder.glob(f"{_DELETED}*"):  # a delete the process never ended
        shutil.rmtree(leftover, ignore_errors=True)
    records = []
    for path in sorted(folder.glob(f"*/{QUEUE_FILE}")):
        if path.parent.name.startswith("."):
            continue
        remove_leftovers(path.parent, recursive=True)  # a stopped job may never run again
        try:
            records.append(JobRecord.read(path))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("skipping unreadable training job %s: %s", path, exc)
    return records


def check_job_name(name: object) -> str:
    """Return ``name`` if a job may be called so (it names the job's folder).

    Raises:
        ConfigError: not 1-64 letters, digits, ``_ . -`` starting with a letter or digit.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"job name {name!r} is not allowed; use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def hide_job_folder(folder: Path) -> Path:
    """Rename a job folder to a hidden ``.deleted-*`` name beside it; return the new path.

    The job is gone at once (no restart lists it again); the caller then removes the hidden
    folder, and :func:`load_records` does so if the process stops first.

    Raises:
        OSError: the rename failed.
    """
    hidden = folder.parent / f"{_DELETED}{folder.name}-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(folder, hidden)
    return hidden


def json_float(value: float | None) -> float | None:
    """Return ``value``, or ``None`` for what JSON has no number for (NaN, infinities)."""
    return value if value is not None and math.isfinite(value) else None
