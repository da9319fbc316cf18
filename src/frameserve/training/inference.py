"""Using a trained job: load its network, serve it as a frameserve model.

::

    network, metadata = load_trained("jobs/degrain")            # the newest checkpoint
    network, metadata = load_trained("jobs/degrain/checkpoints/step_500.pt")

    Degrain = trained_model_class("jobs/degrain")                # a Model subclass
    write_model_plugin("jobs/degrain", "studio_models/degrain")   # a plug-in folder for it

**The served model** (:func:`trained_model_class`) has the id made from the job's name
(letters, digits, ``_ . -``; others become ``_``), one input and one output ``image`` with the
channels of the training data, the data's colourspace as ``colourspace_in`` and
``colourspace_out``, and the network's spatial needs (fully convolutional, its size multiple,
its receptive field radius as ``overlap``), so the engine pads and tiles for it. Its knob
``checkpoint`` picks the checkpoint: ``"latest"`` (the default, the newest saved; looked up on
every request) or a saved one such as ``"step_500"``. While the job can still train, the knob
is free text checked on each request (new checkpoints keep appearing) and ``cacheable`` is
``False``; once the job is finished it is a menu of the saved checkpoints and results are
cached. Label jobs return the frame unchanged with a ``label`` result object (``label``,
``score``, ``classes``, ``scores``); number jobs with a ``value`` object.

A plug-in folder written by :func:`write_model_plugin` holds a two-line ``model.py`` that
builds the class from the job folder when the registry imports it (cheap: it reads
``job.json`` and lists the checkpoints; weights load on first use), so a registry reload
picks up a job that has finished.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from frameserve.errors import ConfigError, KnobError
from frameserve.media.atomic import write_bytes_atomically
from frameserve.plugin.knobs import ButtonKnob, ChoiceKnob, KnobSpec, KnobValues, StringKnob
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec, Model, Prediction, SpatialNeeds
from frameserve.plugin.results import ResultObject, python_script
from frameserve.training import checkpoints
from frameserve.training.kinds import JobKind
from frameserve.training.networks import (
    NetworkSpec,
    build_network,
    receptive_field_radius,
    size_multiple,
)
from frameserve.training.settings import TrainingSettings

__all__ = [
    "TrainedMetadata",
    "load_trained",
    "model_id_for",
    "trained_model_class",
    "write_model_plugin",
]

logger = logging.getLogger(__name__)

_CACHED_NETWORKS = 3


@dataclass(frozen=True, kw_only=True)
class TrainedMetadata:
    """What a checkpoint says about its network and the job that trained it.

    Attributes:
        kind: ``"image"``, ``"label"`` or ``"number"`` (a :class:`JobKind`).
        classes: label jobs: the class names, in score order.
        size_multiple / receptive_field: image jobs: what frame heights and widths must be
            multiples of, and how far an output pixel sees (0 and 0 for other kinds).
        frames: the training and validation frames (names, files, digests).
    """

    name: str
    kind: JobKind
    checkpoint: Path
    step: int
    total_steps: int
    finished: bool
    in_channels: int
    out_channels: int
    classes: tuple[str, ...]
    colourspace: str
    network: NetworkSpec
    settings: TrainingSettings
    frames: tuple[dict[str, Any], ...]
    size_multiple: int
    receptive_field: int
    train_loss: float
    validation_loss: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as JSON-friendly data."""
        return {
            "name": self.name,
            "kind": self.kind.value,
            "checkpoint": str(self.checkpoint),
            "step": self.step,
            "total_steps": self.total_steps,
            "finished": self.finished,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "classes": list(self.classes),
            "colourspace": self.colourspace,
            "network": self.network.to_dict(),
            "settings": self.settings.to_dict(),
            "frames": list(self.frames),
            "size_multiple": self.size_multiple,
            "receptive_field": self.receptive_field,
            "train_loss": self.train_loss,
            "validation_loss": self.validation_loss,
        }


def load_trained(
    checkpoint: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainedMetadata]:
    """Return the network of a checkpoint (for inference: eval mode, no gradients, on
    ``device``) and its metadata.

    ``checkpoint`` is a checkpoint file or a job folder (its newest checkpoint).

    Raises:
        ConfigError: no checkpoint there, or a file that is not one.
    """
    path = checkpoints.resolve_checkpoint(checkpoint)
    payload = checkpoints.load_checkpoint(path, device=str(device))
    spec = NetworkSpec.from_dict(payload["network"])
    network = build_network(spec)
    network.load_state_dict(payload["network_state"])
    network.to(device).eval().requires_grad_(False)
    task = payload["task"]
    image = spec.kind == "unet"
    metadata = TrainedMetadata(
        name=payload["name"],
        kind=JobKind(task["kind"]),
        checkpoint=path,
        step=int(payload["step"]),
        total_steps=int(payload["settings"]["steps"]),
        finished=bool(payload["finished"]),
        in_channels=int(task["in_channels"]),
        out_channels=int(task["out_channels"]),
        classes=tuple(task["classes"]),
        colourspace=task["colourspace"],
        network=spec,
        settings=TrainingSettings.from_dict(payload["settings"]),
        frames=tuple(task["frames"]),
        size_multiple=size_multiple(spec.size) if image else 0,
        receptive_field=receptive_field_radius(spec.size) if image else 0,
        train_loss=float(payload["train_loss"]),
        validation_loss=payload["validation_loss"],
    )
    return network, metadata


def model_id_for(name: str) -> str:
    """Return a model id made from a job name (``"Degrain v2"`` → ``"Degrain_v2"``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", name.strip()).lstrip("_.-")
    return cleaned or "trained"


def trained_model_class(
    job_dir: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    training: bool | None = None,
    max_size: int | None = None,
    module: str | None = None,
) -> type[Model]:
    """Return a :class:`~frameserve.plugin.model.Model` subclass serving the job in ``job_dir``.

    Args:
        model_id: the model's id (default: :func:`model_id_for` the job's name).
        training: whether the job may still add checkpoints (``None``: unless its newest
            checkpoint is at its last step).
        max_size: the largest frame side run in one piece; bigger frames are tiled
            (``None``: tiles only after running out of memory).
        module: the ``__module__`` the class claims (a plug-in passes ``__name__`` so the
            registry takes the class as its own).

    Raises:
        ConfigError: ``job_dir`` is not a training job.
    """
    job = checkpoints.read_job_file(job_dir)
    task, spec = job["task"], NetworkSpec.from_dict(job["network"])
    saved = checkpoints.list_checkpoints(job_dir)
    if training is None:
        training = not saved or saved[-1].step < int(job["settings"]["steps"])
    knob: KnobSpec
    help_text = "Which checkpoint to run: 'latest' (the newest saved) or one such as 'step_500'."
    if training:
        knob = StringKnob("checkpoint", default=checkpoints.LATEST, help=help_text)
    else:
        names = (checkpoints.LATEST, *(entry.name for entry in reversed(saved)))
        knob = ChoiceKnob("checkpoint", default=checkpoints.LATEST, choices=names, help=help_text)
    name = str(job["name"])
    image = task["kind"] == JobKind.IMAGE
    out_channels = task["out_channels"] if image else task["in_channels"]
    attributes: dict[str, Any] = {
        "id": model_id or model_id_for(name),
        "label": f"{name} (trained)",
        "description": _description(name, task, spec, training),
        "inputs": (ImageSpec("image", int(task["in_channels"])),),
        "outputs": (ImageSpec("image", int(out_channels)),),
        "knobs": (knob,) if image else (knob, _SHOW_BUTTON),
        "colourspace_in": task["colourspace"],
        "colourspace_out": task["colourspace"],
        "cacheable": not training,
        "job_dir": Path(job_dir).resolve(),
        "__module__": module or __name__,
        "__doc__": f"Serves the network trained by job {name!r}.",
    }
    if image:
        attributes["spatial"] = SpatialNeeds(
            fully_convolutional=True,
            size_multiple=size_multiple(spec.size),
            overlap=receptive_field_radius(spec.size),
            max_size=max_size,
        )
        attributes["max_batch_size"] = 4
    base = TrainedImageModel if image else TrainedLabelModel
    class_name = "Trained" + "".join(part.title() for part in re.split(r"\W+|_", name) if part)
    return type(class_name if class_name.isidentifier() else "TrainedJob", (base,), attributes)


def write_model_plugin(
    job_dir: str | os.PathLike[str],
    plugin_dir: str | os.PathLike[str],
    *,
    model_id: str | None = None,
) -> Path:
    """Write a plug-in folder (``plugin_dir/model.py``) that serves the job; return the file.

    The plug-in finds the job folder by a path relative to itself, so moving both together
    keeps it working.
    """
    job = Path(job_dir).resolve()
    name = str(checkpoints.read_job_file(job)["name"])
    folder = Path(plugin_dir)
    folder.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(job, folder.resolve())
    source = (
        f'"""Serves training job {name!r} (written by frameserve.training)."""\n\n'
        "from pathlib import Path\n\n"
        "from frameserve.training import trained_model_class\n\n"
        "TrainedJob = trained_model_class(\n"
        f"    Path(__file__).resolve().parent / {relative!r}, model_id={model_id!r}, "
        "module=__name__\n"
        ")\n"
    )
    path = folder / "model.py"
    write_bytes_atomically(path, source.encode())
    return path


class _TrainedModel(Model):
    """Loads the chosen checkpoint's network on first use and keeps the last few loaded."""

    job_dir: ClassVar[Path]
    weights = (
        WeightsLicence(
            name="trained by this job",
            licence="the studio's own",
            source="frameserve training from the job's example frames",
            commercial=True,
            note="the weights learnt only from the frames the job was given; their owner "
            "decides how they are used",
        ),
    )

    def setup(self, device: torch.device) -> None:
        self._device = device
        self._lock = threading.Lock()
        self._networks: OrderedDict[tuple[Path, int], tuple[nn.Module, TrainedMetadata]]
        self._networks = OrderedDict()

    def network(self, knobs: KnobValues) -> tuple[nn.Module, TrainedMetadata]:
        """Return the network and metadata of the checkpoint the ``checkpoint`` knob names."""
        choice = str(knobs["checkpoint"])
        try:
            path = checkpoints.resolve_checkpoint(self.job_dir, choice)
            key = (path, path.stat().st_mtime_ns)
        except (ConfigError, FileNotFoundError) as exc:  # a name not saved, or just pruned
            saved = [
                checkpoints.LATEST,
                *(e.name for e in checkpoints.list_checkpoints(self.job_dir)),
            ]
            raise KnobError(
                f"knob 'checkpoint': {choice!r} is not allowed; choose one of {', '.join(saved)}"
            ) from exc
        with self._lock:
            if key not in self._networks:
                self._networks[key] = load_trained(path, device=self._device)
                logger.info("%s: loaded %s", type(self).id, path)
                while len(self._networks) > _CACHED_NETWORKS:
                    self._networks.popitem(last=False)
            self._networks.move_to_end(key)
            return self._networks[key]


class TrainedImageModel(_TrainedModel):
    """Runs a trained U-Net on each frame (and on whole batches at once)."""

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        network, _ = self.network(knobs)
        return network(frames["image"][None])[0]  # type: ignore[no-any-return]

    def predict_batch(  # type: ignore[override]
        self, frames: Mapping[str, torch.Tensor], knobs: KnobValues
    ) -> torch.Tensor:
        network, _ = self.network(knobs)
        return network(frames["image"])  # type: ignore[no-any-return]


#: Label and number models: a button that shows the answer in a Nuke message.
_SHOW_BUTTON = ButtonKnob("show", help="Show the answer for this frame in a message.")


class TrainedLabelModel(_TrainedModel):
    """Passes the frame through and answers a ``label`` or ``value`` result object.

    Pressing the ``show`` button (MLClient node) also answers a ``PythonScript`` object that
    shows the answer in a Nuke message, ahead of the result object.
    """

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> Prediction:
        network, metadata = self.network(knobs)
        image = frames["image"]
        scores = network(image[None])[0].float()
        if metadata.kind is JobKind.LABEL:
            probabilities = torch.softmax(scores, dim=0)
            best = int(probabilities.argmax())
            result = ResultObject(
                "label",
                {
                    "label": metadata.classes[best],
                    "score": float(probabilities[best]),
                    "classes": list(metadata.classes),
                    "scores": [float(p) for p in probabilities],
                },
            )
            message = f"{metadata.classes[best]} ({float(probabilities[best]):.1%})"
        else:
            result = ResultObject("value", {"value": float(scores[0])})
            message = f"{float(scores[0]):.6g}"
        objects = [result]
        if knobs["show"]:
            objects.insert(0, python_script(f"nuke.message({message!r})"))
        return Prediction(frames={"image": image}, objects=objects)


def _description(name: str, task: dict[str, Any], spec: NetworkSpec, training: bool) -> str:
    what = {kind: f"image to {kind}" for kind in JobKind}
    state = "still training" if training else "finished"
    return (
        f"A {spec.size} network trained by job {name!r} ({what.get(task['kind'], task['kind'])}, "
        f"{task['colourspace']}; {state})."
    )
