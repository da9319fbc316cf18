"""Training jobs over HTTP: uploads, jobs, progress, contact sheets and model packages.

Reached as ``client.training``::

    with Client("http://render7:8000") as client:
        job = client.training.submit(
            "degrain", [("plate.1001.exr", "clean.1001.exr")], settings={"steps": 500},
            upload=True,                              # send the local files first
        )
        job = client.training.wait("degrain", on_progress=print)   # until done / failed
        client.training.download_package("degrain", "studio_models/degrain", format="pt2")

Frames are paths the server reads (strings), or uploads: with ``upload=True`` every local path
is uploaded first (``POST /v2/training/uploads``) and the job names the uploads by id; the
uploads a failed submission made are deleted again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias
from urllib.parse import quote, urlencode

from frameserve.client._exceptions import ProtocolViolation
from frameserve.client._requests import Requester

__all__ = ["FINAL_STATES", "Training", "TrainingFrame", "TrainingJob", "Upload"]

#: States a job does not leave by itself.
FINAL_STATES = ("done", "failed", "cancelled")
_JOBS = "/v2/training/jobs"
_UPLOADS = "/v2/training/uploads"


@dataclass(frozen=True, kw_only=True)
class Upload:
    """An image file stored on the server for training jobs (it ages out at ``expires``).

    Attributes:
        id: what a job names it by (32 hex digits of its SHA-256).
        filename: the name it was uploaded under.
        size: bytes.
        width / height / channels: what the image holds.
        uploaded / expires: seconds since the epoch.
    """

    id: str
    filename: str
    size: int
    width: int
    height: int
    channels: tuple[str, ...]
    uploaded: float
    expires: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Upload:
        """Build an upload from the server's JSON.

        Raises:
            ProtocolViolation: a field is missing or of the wrong type.
        """
        try:
            return cls(
                id=str(data["id"]),
                filename=str(data["filename"]),
                size=int(data["bytes"]),
                width=int(data["width"]),
                height=int(data["height"]),
                channels=tuple(str(name) for name in data["channels"]),
                uploaded=float(data["uploaded"]),
                expires=None if data.get("expires") is None else float(data["expires"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolViolation(f"an upload's description cannot be read: {exc}") from exc


#: A frame of a training pair: a path (the server's, or local with ``upload=True``), or an upload.
TrainingFrame: TypeAlias = str | os.PathLike[str] | Upload


@dataclass(frozen=True, kw_only=True)
class TrainingJob:
    """Where a training job stands, as the server reported it.

    Attributes:
        name / model_id: the job, and the model serving it (with a ``checkpoint`` knob).
        kind: ``"image"``, ``"label"`` or ``"number"``.
        state: ``"queued"``, ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``.
        device: where it trains (``"cpu"``, ``"cuda:0"``).
        step / total_steps: steps done and planned.
        loss / validation_loss: smoothed training loss, latest validation loss (or None).
        steps_per_second / eta_seconds: speed, and time left while it runs (None: unknown).
        elapsed_seconds: training time so far.
        checkpoints: saved checkpoints, oldest first (``"step_500"``).
        error: why it failed.
        settings: the training settings it runs with (``{"steps": 2000, "crop_size": 64,
            ...}``; empty from a server that does not send them).
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
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def finished(self) -> bool:
        """Whether the job is done, failed or cancelled."""
        return self.state in FINAL_STATES

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingJob:
        """Build a status from the server's JSON (fields it does not send take defaults).

        Raises:
            ProtocolViolation: a field is missing or of the wrong type.
        """
        try:
            return cls(
                name=str(data["name"]),
                model_id=str(data.get("model_id") or data["name"]),
                kind=str(data.get("kind", "image")),
                state=str(data["state"]),
                device=str(data.get("device", "")),
                step=int(data["step"]),
                total_steps=int(data["total_steps"]),
                loss=_number(data.get("loss")),
                validation_loss=_number(data.get("validation_loss")),
                steps_per_second=float(data.get("steps_per_second") or 0.0),
                eta_seconds=_number(data.get("eta_seconds")),
                elapsed_seconds=float(data.get("elapsed_seconds") or 0.0),
                checkpoints=tuple(str(c) for c in data.get("checkpoints", ())),
                error=None if data.get("error") is None else str(data["error"]),
                settings=_settings(data.get("settings")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolViolation(f"a training job's status cannot be read: {exc}") from exc


class Training:
    """The training endpoints of one server (``client.training``); see the module docstring."""

    def __init__(self, requests: Requester) -> None:
        self._requests = requests

    # -- uploads ---------------------------------------------------------------------------

    def upload(
        self, file: str | os.PathLike[str] | bytes, *, filename: str | None = None
    ) -> Upload:
        """Upload one image file (EXR, PNG, TIFF, DPX, JPEG) and return what the server stored.

        Args:
            file: a local file, or its bytes (then ``filename`` is required).
            filename: the name to store it under; its extension says the format (default:
                the file's own name).

        Raises:
            BadRequestError: a name without an image extension, or bytes that are not an
                image of that format (the message says which).
            PayloadTooLargeError: the file is above the server's size cap.
            HTTPStatusError: 507, the server holds as many uploads as it keeps.
            OSError: the local file cannot be read.
        """
        return self._upload(file, filename)[0]

    def uploads(self) -> list[Upload]:
        """Return the uploads the server holds, oldest first."""
        data = self._get_object(_UPLOADS, "the upload list")
        return [Upload.from_dict(item) for item in _list(data, "uploads")]

    def delete_upload(self, upload: Upload | str) -> None:
        """Delete an upload (jobs that name it keep their own copy).

        Raises:
            NotFoundError: no such upload.
        """
        identity = upload.id if isinstance(upload, Upload) else upload
        self._requests.call("DELETE", f"{_UPLOADS}/{quote(identity, safe='')}")

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        name: str,
        pairs: Sequence[tuple[TrainingFrame, TrainingFrame]],
        *,
        validation: Sequence[tuple[TrainingFrame, TrainingFrame]] = (),
        settings: Mapping[str, Any] | None = None,
        upload: bool = False,
        on_upload: Callable[[int, int, str], object] | None = None,
    ) -> TrainingJob:
        """Queue an image-to-image job learning ``(input, target)`` pairs; return its status.

        Args:
            name: the job (and model) name: letters, digits, ``_ . -``.
            pairs / validation: frames as paths the server reads, or :class:`Upload` s.
            settings: training settings by name (``{"steps": 500, "crop_size": 64}``).
            upload: upload every path from this machine first (uploads this call made are
                deleted again if the submission fails).
            on_upload: called as ``on_upload(done, total, filename)`` before each upload.

        Raises:
            BadRequestError: bad settings, unreadable frames (the message names them), a bad
                name.
            ConflictError: a job of that name exists.
        """
        frames = [frame for pair in (*pairs, *validation) for frame in pair]
        made: list[str] = []
        ids: dict[str, str] = {}  # local path -> upload id
        try:
            if upload:
                local = list(
                    dict.fromkeys(os.fspath(f) for f in frames if not isinstance(f, Upload))
                )
                for index, path in enumerate(local):
                    if on_upload is not None:
                        on_upload(index, len(local), os.path.basename(path))
                    stored, new = self._upload(path, None)
                    ids[path] = stored.id
                    if new:
                        made.append(stored.id)

            def wire(frame: TrainingFrame) -> str | dict[str, str]:
                if isinstance(frame, Upload):
                    return {"upload": frame.id}
                path = os.fspath(frame)
                return {"upload": ids[path]} if path in ids else path

            body = {
                "name": name,
                "pairs": [[wire(a), wire(b)] for a, b in pairs],
                "validation": [[wire(a), wire(b)] for a, b in validation],
                "settings": dict(settings or {}),
            }
            return self._job_answer("POST", _JOBS, body)
        except BaseException:
            for identity in made:  # a failed submission leaves no uploads behind
                with contextlib.suppress(Exception):  # else they age out on the server
                    self.delete_upload(identity)
            raise

    def submit_labelled(
        self,
        name: str,
        kind: str,
        path: str,
        *,
        validation: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> TrainingJob:
        """Queue a label job (``kind="label"``, ``path`` a folder of class folders) or a
        number job (``kind="number"``, ``path`` a CSV or JSON table of file to value), read
        by the server; ``validation`` is another such folder or table.

        Raises:
            ValueError: an unknown kind.
            BadRequestError: no such folder or table, unreadable images, bad settings.
        """
        keys = {"label": "labels", "number": "values"}
        if kind not in keys:
            raise ValueError(f"kind must be 'label' or 'number', not {kind!r}")
        body: dict[str, Any] = {"name": name, keys[kind]: path, "settings": dict(settings or {})}
        if validation is not None:
            body["validation"] = validation
        return self._job_answer("POST", _JOBS, body)

    def jobs(self) -> list[TrainingJob]:
        """Return every job on the server, by name."""
        data = self._get_object(_JOBS, "the job list")
        return [TrainingJob.from_dict(item) for item in _list(data, "jobs")]

    def job(self, name: str) -> TrainingJob:
        """Return job ``name``'s status.

        Raises:
            NotFoundError: no such job.
        """
        return self._job_answer("GET", _job_path(name))

    def cancel(self, name: str) -> TrainingJob:
        """Stop job ``name`` before its next step (a checkpoint is kept); return its status
        (the server waits a moment for it to stop).

        Raises:
            NotFoundError: no such job.
            ConflictError: it is not queued or running.
        """
        return self._job_answer("POST", _job_path(name, "cancel"))

    def resume(self, name: str, *, steps: int | None = None) -> TrainingJob:
        """Queue a stopped job again from its newest checkpoint (``steps``: a new total).

        Raises:
            NotFoundError: no such job.
            ConflictError: it is queued or running.
            BadRequestError: ``steps`` below the steps done.
        """
        body = {} if steps is None else {"steps": steps}
        return self._job_answer("POST", _job_path(name, "resume"), body)

    def delete(self, name: str) -> None:
        """Delete a stopped job: its model, checkpoints and frames.

        Raises:
            NotFoundError: no such job.
            ConflictError: it is queued or running (cancel it first).
        """
        self._requests.call("DELETE", _job_path(name))

    def wait(
        self,
        name: str,
        *,
        interval: float = 0.5,
        timeout: float | None = None,
        on_progress: Callable[[TrainingJob], object] | None = None,
    ) -> TrainingJob:
        """Poll job ``name`` every ``interval`` seconds until it is done, failed or cancelled,
        or ``timeout`` seconds passed; return its last status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(name)
            if on_progress is not None:
                on_progress(job)
            if job.finished or (deadline is not None and time.monotonic() >= deadline):
                return job
            time.sleep(interval)

    def contact_sheet(self, name: str) -> bytes:
        """Return job ``name``'s newest contact sheet, a PNG (input | prediction | target).

        Raises:
            NotFoundError: no such job, or no contact sheet yet.
        """
        return bytes(self._requests.call("GET", _job_path(name, "contact_sheet")).body)

    def download_package(
        self,
        name: str,
        out: str | os.PathLike[str],
        *,
        format: str = "pt",
        checkpoint: str | None = None,
        model_id: str | None = None,
        version: str | None = None,
        force: bool = False,
    ) -> Path:
        """Export job ``name`` as a model package on the server and unpack it into ``out``.

        The server builds and checks the package (a ``model.toml`` and the network as
        ``format``: ``"pt"``, ``"pt2"`` or ``"onnx"``); it is unpacked into a hidden folder
        beside ``out`` and renamed into place, so ``out`` never holds half a package.

        Args:
            checkpoint: ``"latest"`` (default) or a checkpoint such as ``"step_500"``.
            model_id / version: the package's id (default: the job's model id) and version.
            force: replace an existing ``out``.

        Raises:
            FileExistsError: ``out`` exists and ``force`` is false.
            NotFoundError: no such job.
            BadRequestError: an unknown format or checkpoint, or a label or number job.
        """
        target = Path(out)
        if target.exists() and not force:
            raise FileExistsError(f"{target} already exists; pass force=True to replace it")
        options = {"format": format, "checkpoint": checkpoint, "id": model_id, "version": version}
        query = urlencode({key: value for key, value in options.items() if value is not None})
        archive = self._requests.call("GET", f"{_job_path(name, 'package')}?{query}").body
        _unpack(bytes(archive), target)
        return target

    # -- helpers ---------------------------------------------------------------------------

    def _upload(
        self, file: str | os.PathLike[str] | bytes, filename: str | None
    ) -> tuple[Upload, bool]:
        if isinstance(file, bytes | bytearray | memoryview):
            if not filename:
                raise ValueError("uploading bytes needs a filename (its extension says the format)")
            data = bytes(file)
        else:
            data = Path(file).read_bytes()
            filename = filename or os.path.basename(os.fspath(file))
        path = f"{_UPLOADS}?{urlencode({'filename': filename})}"
        headers = {"Content-Type": "application/octet-stream"}
        response = self._requests.call("POST", path, headers=headers, body=[data])
        answer = self._requests.json_object(response, "the upload's description")
        return Upload.from_dict(answer), response.status == 201

    def _job_answer(self, method: str, path: str, body: object = None) -> TrainingJob:
        headers: dict[str, str] | None = None
        parts: tuple[bytes, ...] = ()
        if body is not None:
            headers = {"Content-Type": "application/json"}
            parts = (json.dumps(body).encode(),)
        response = self._requests.call(method, path, headers=headers, body=parts)
        return TrainingJob.from_dict(self._requests.json_object(response, "a training job"))

    def _get_object(self, path: str, what: str) -> dict[str, Any]:
        return self._requests.json_object(self._requests.call("GET", path), what)


def _job_path(name: str, action: str = "") -> str:
    path = f"{_JOBS}/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path


def _number(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _settings(value: object) -> dict[str, Any]:
    """A status's ``settings`` object (absent or ``null``: empty); else a TypeError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"'settings' must be an object, not {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def _list(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProtocolViolation(f"{key!r} is not a list of objects")
    return items


def _unpack(archive: bytes, target: Path) -> None:
    """Unpack a package zip into a hidden folder beside ``target``, then rename it there."""
    try:
        bundle = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile as exc:
        raise ProtocolViolation(f"the package is not a zip archive: {exc}") from exc
    names = bundle.namelist()
    for member in names:
        parts = PurePosixPath(member).parts
        if not parts or member.startswith("/") or ".." in parts or "\\" in member:
            raise ProtocolViolation(f"the package holds a file outside its folder: {member!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{secrets.token_hex(4)}.staging"
    try:
        with bundle:
            bundle.extractall(staging)
        if target.exists():
            old = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
