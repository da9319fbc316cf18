"""Checkpoint files of a training job: where they live, how they are written and read safely.

A job folder holds::

    job.json                  what the job is (name, kind, channels, settings, frames)
    checkpoints/step_500.pt   one file per checkpoint, named after its step
    contact_sheets/step_500.png

A checkpoint is a :func:`torch.save` dictionary of plain data and tensors, read back with
``weights_only=True`` (no code runs when loading one): the network's spec and weights, the
optimiser state, the step, the data generator's state, the settings, the task description and
the list of training frames (see :data:`FORMAT`).

Every file is written atomically (:mod:`frameserve.media.atomic`: under a hidden temporary
name in its own folder, flushed to disk, renamed onto its final name), so a process killed at
any moment leaves either the old file or the new one, never a partial one; the trainer removes
the leftovers of killed writes (``.step_500.tmp-PID-RANDOM.pt``) when a job starts or resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frameserve.errors import ConfigError
from frameserve.media.atomic import write_atomically, write_bytes_atomically

__all__ = [
    "CHECKPOINT_FOLDER",
    "CONTACT_SHEET_FOLDER",
    "FORMAT",
    "JOB_FILE",
    "LATEST",
    "CheckpointEntry",
    "checkpoint_path",
    "job_summary",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "read_job_file",
    "resolve_checkpoint",
    "save_checkpoint",
    "write_job_file",
]

logger = logging.getLogger(__name__)

#: The format tag every checkpoint carries.
FORMAT = "frameserve.training/1"
JOB_FILE = "job.json"
CHECKPOINT_FOLDER = "checkpoints"
CONTACT_SHEET_FOLDER = "contact_sheets"
#: The checkpoint name that stands for the newest one.
LATEST = "latest"

_NAME = re.compile(r"step_(\d+)\Z")


@dataclass(frozen=True)
class CheckpointEntry:
    """One saved checkpoint: its name (``"step_500"``), step and file."""

    name: str
    step: int
    path: Path


def checkpoint_path(job_dir: str | os.PathLike[str], step: int) -> Path:
    """Return the file of the checkpoint at ``step`` in ``job_dir``."""
    return Path(job_dir) / CHECKPOINT_FOLDER / f"step_{step}.pt"


def list_checkpoints(job_dir: str | os.PathLike[str]) -> list[CheckpointEntry]:
    """Return the complete checkpoints of a job, oldest first (temporary files are ignored)."""
    folder = Path(job_dir) / CHECKPOINT_FOLDER
    if not folder.is_dir():
        return []
    entries = []
    for path in folder.glob("step_*.pt"):
        match = _NAME.match(path.stem)
        if match:
            entries.append(CheckpointEntry(path.stem, int(match[1]), path))
    return sorted(entries, key=lambda entry: entry.step)


def resolve_checkpoint(path: str | os.PathLike[str], name: str = LATEST) -> Path:
    """Return a checkpoint file: ``path`` itself if it is a file, else checkpoint ``name`` of
    the job folder ``path`` (``"latest"``: the newest).

    Raises:
        ConfigError: no such file, job or checkpoint (the message lists those saved).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"no checkpoint or job folder at {str(path)!r}")
    entries = list_checkpoints(path)
    if not entries:
        raise ConfigError(f"job folder {str(path)!r} holds no checkpoint yet")
    if name == LATEST:
        return entries[-1].path
    for entry in entries:
        if entry.name == name:
            return entry.path
    saved = ", ".join([LATEST, *(e.name for e in entries)])
    raise ConfigError(f"checkpoint {name!r} is not saved in {str(path)!r}; choose one of {saved}")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (see the module docstring); return ``path``."""
    write_atomically(path, lambda stream: torch.save(payload, stream))
    return path


def load_checkpoint(path: str | os.PathLike[str], *, device: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by a trainer (tensors on ``device``), without running code.

    Raises:
        ConfigError: the file is missing, unreadable, or not a frameserve checkpoint.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:  # torch raises many kinds for damaged or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"checkpoint {str(path)!r} cannot be read: {type(exc).__name__}: {reason}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a frameserve training checkpoint ({FORMAT})")
    return payload


def read_job_file(job_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the description of the job in ``job_dir`` (its ``job.json``).

    Raises:
        ConfigError: the folder is not a training job.
    """
    path = Path(job_dir) / JOB_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{str(job_dir)!r} is not a training job folder: no {JOB_FILE}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a frameserve training job ({FORMAT})")
    return data


def job_summary(job_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return what a job list shows, from ``job.json`` and the files (no checkpoint is read).

    ``{"name", "kind", "step", "total_steps", "finished", "checkpoints", "contact_sheets"}``:
    ``step`` is the newest checkpoint's (0 without one); the lists are names and files, oldest
    first.

    Raises:
        ConfigError: the folder is not a training job.
    """
    job = read_job_file(job_dir)
    saved = list_checkpoints(job_dir)
    step = saved[-1].step if saved else 0
    total = int(job["settings"]["steps"])
    sheets = list(_glob(Path(job_dir) / CONTACT_SHEET_FOLDER, "step_*.png"))
    return {
        "name": job["name"],
        "kind": job["task"]["kind"],
        "step": step,
        "total_steps": total,
        "finished": step >= total,
        "checkpoints": [entry.name for entry in saved],
        "contact_sheets": [str(p) for p in sorted(sheets, key=_step_of)],
    }


def write_job_file(job_dir: Path, description: dict[str, Any]) -> Path:
    """Write ``job.json`` atomically; return its path."""
    text = json.dumps({"format": FORMAT, **description}, indent=2, sort_keys=True)
    path = job_dir / JOB_FILE
    write_bytes_atomically(path, text.encode())
    return path


def prune_checkpoints(job_dir: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints (nothing when ``keep`` is None)."""
    if keep is None:
        return
    for entry in list_checkpoints(job_dir)[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
            logger.debug("removed old checkpoint %s", entry.path)


def _step_of(path: Path) -> int:
    match = _NAME.match(path.stem)
    return int(match[1]) if match else -1


def _glob(folder: Path, pattern: str) -> Iterator[Path]:
    return folder.glob(pattern) if folder.is_dir() else iter(())
