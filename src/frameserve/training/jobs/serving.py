"""Serving training jobs as models: one registry provider per job, its entry from the job folder.

Each job is a model (id :func:`~frameserve.training.model_id_for` its name) from a registry
provider named ``training:NAME``, listed from submission on (the trainer is built then and
writes ``job.json``), with a ``checkpoint`` knob (:func:`~frameserve.training.trained_model_class`).
The queue refreshes the provider whenever a checkpoint is written or the state changes; the
entry's token holds the state and the newest checkpoint's step, so cached results of an older
network are never served::

    models = JobModels(registry)           # None: jobs are not served
    models.add(record)                     # reads record.state at every refresh
    models.refresh(record.name)
    models.remove(record.name)
"""

from __future__ import annotations

from pathlib import Path

from frameserve.catalogue.entries import CatalogueEntry, FailedModel, ModelEntry
from frameserve.catalogue.registry import ModelRegistry
from frameserve.errors import FrameServeError, ModelNotFoundError
from frameserve.training.checkpoints import JOB_FILE, list_checkpoints
from frameserve.training.inference import model_id_for, trained_model_class
from frameserve.training.jobs.store import QUEUE_FILE, JobRecord

__all__ = [
    "FOLDER_PROVIDER",
    "JobModels",
    "job_entries",
    "jobs_folder_entries",
    "provider_name",
    "serve_jobs_folder",
]

#: The registry provider of :func:`serve_jobs_folder`.
FOLDER_PROVIDER = "training jobs folder"

_JOB_SOURCE = "training job "  # the source of a job's model entry, before its name


class JobModels:
    """Adds, refreshes and removes the registry providers of training jobs.

    Args:
        registry: where the jobs are served (``None``: nowhere; every call does nothing).
    """

    def __init__(self, registry: ModelRegistry | None) -> None:
        self.registry = registry

    def add(self, record: JobRecord) -> None:
        """Serve the job of ``record`` (its entry follows the record's state)."""
        if self.registry is not None:
            self.registry.add_provider(provider_name(record.name), lambda: job_entries(record))

    def refresh(self, name: str) -> None:
        """List job ``name``'s model again (a new checkpoint, or a new state)."""
        if self.registry is not None:
            self.registry.refresh_provider(provider_name(name))

    def taken(self, name: str) -> bool:
        """Whether a model other than a job's (a built-in one, one from the model folders,
        loaded or failed) has job ``name``'s model id."""
        if self.registry is None:
            return False
        model_id = model_id_for(name)
        try:
            source = self.registry.get(model_id).source
        except ModelNotFoundError:
            failed = self.registry.failure(model_id)
            if failed is None:
                return False
            source = failed.source
        return not source.startswith(_JOB_SOURCE)

    def remove(self, name: str) -> None:
        """Stop serving job ``name``."""
        if self.registry is not None:
            self.registry.remove_provider(provider_name(name))


def job_entries(record: JobRecord) -> list[ModelEntry]:
    """Return the model entry of the job of ``record`` (none before its trainer is built)."""
    if not (record.folder / JOB_FILE).is_file():
        return []
    model = trained_model_class(
        record.folder, model_id=model_id_for(record.name), training=record.state.active
    )
    saved = list_checkpoints(record.folder)
    newest = saved[-1].step if saved else -1
    token = f"{record.state}:{newest}:{len(saved)}"
    return [ModelEntry.from_class(model, source=f"{_JOB_SOURCE}{record.name}", token=token)]


def jobs_folder_entries(folder: Path) -> list[CatalogueEntry]:
    """Return a model entry for each job in the jobs ``folder``, exactly as a server serves it.

    Reads only: a job folder holds ``job.json`` once its trainer is built (on a server or with
    ``frameserve train --local``); its ``queue.json``, when there, says whether it may still
    add checkpoints. A job that cannot be read is listed as failed, with why. Changes nothing
    on disk, so a server may be using the folder meanwhile.
    """
    entries: list[CatalogueEntry] = []
    for job_file in sorted(Path(folder).expanduser().glob(f"*/{JOB_FILE}")):
        job = job_file.parent
        if job.name.startswith("."):
            continue
        source = f"{_JOB_SOURCE}{job.name}"
        try:
            record = JobRecord.read(job / QUEUE_FILE) if (job / QUEUE_FILE).is_file() else None
            training = None if record is None else record.state.active
            model = trained_model_class(job, model_id=model_id_for(job.name), training=training)
            saved = list_checkpoints(job)
            token = f"{record.state if record else '-'}:{saved[-1].step if saved else -1}"
            entries.append(ModelEntry.from_class(model, source=source, token=token))
        except (FrameServeError, OSError, ValueError, KeyError, TypeError) as exc:
            entries.append(FailedModel(id=model_id_for(job.name), source=source, error=str(exc)))
    return entries


def serve_jobs_folder(registry: ModelRegistry, folder: Path) -> None:
    """List the jobs of ``folder`` among ``registry``'s models (commands without a server)."""
    registry.add_provider(FOLDER_PROVIDER, lambda: jobs_folder_entries(folder))


def provider_name(name: str) -> str:
    """Return the registry provider name of job ``name``."""
    return f"training:{name}"
