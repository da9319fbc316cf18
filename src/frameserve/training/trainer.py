"""The trainer: builds or resumes a job's network and trains it step by step.

After each step it does what is due (validation, a contact sheet, a checkpoint) and reports a
:class:`~frameserve.training.progress.TrainingProgress`; what differs between image, label
and number jobs is the task's (:mod:`frameserve.training.tasks`).

::

    trainer = Trainer(pairs, TrainingSettings(steps=2000), job_dir="jobs/degrain",
                      name="degrain", on_progress=print)
    trainer.run(should_stop=cancelled.is_set)     # returns at the end, or soon after a stop
    ...
    trainer = Trainer.resume("jobs/degrain")      # later, in another process: goes on
    trainer.run()

**Steps.** One step draws a batch of random crops (:mod:`frameserve.training.data`), runs the
network, takes an Adam step with the scheduled learning rate, then does what is due at that
step: a validation loss, a contact sheet, a checkpoint (and always a checkpoint when a run
ends). Each step calls ``on_progress`` with a :class:`TrainingProgress`. ``run`` checks
``should_stop`` before every step; a step of the default settings takes a fraction of a second
on a 2-core CPU, so a cancel takes effect at once, and validation also checks it between
batches.

**Reproducible.** The weights are initialised from ``seed`` (without touching the process's
global RNG for longer than that), every crop and augmentation comes from a numpy generator
seeded with it, and no step draws other random numbers; on the CPU, the same seed and data
give bit-identical weights (with the same number of torch threads: the CPU kernels used are
deterministic, so no global ``torch.use_deterministic_algorithms`` switch is needed). On CUDA
runs agree closely but not bit for bit (cuDNN's kernels are not all deterministic). A
checkpoint holds the network, the optimiser, the step and the generator's state, so
:meth:`Trainer.resume` goes on exactly as if the run had never stopped.

**Other networks, synthetic degradations.** ``network`` trains another image-to-image network
than the settings' U-Net (a :class:`NetworkSpec` of kind ``"restoration"`` or ``"dncnn"``,
whose channels match the data), and ``degradation`` degrades every crop's input afresh at each
step (:mod:`frameserve.training.degradations`): restoration networks learn from clean
photographs alone::

    trainer = Trainer(photos, settings, job_dir="jobs/denoise", degradation=SensorNoise(),
                      network=NetworkSpec(kind="restoration", size="medium",
                                          in_channels=3, out_channels=3))
    trainer = Trainer.resume("jobs/denoise", photos, degradation=SensorNoise())

Both are stored in the checkpoints: a resumed job rebuilds the same network, and must be given
the same degradation again. Deep networks without normalisation train faster at learning
rates that a rare batch would make diverge: ``TrainingSettings(gradient_clip=...)`` clips each
step's gradient norm before the Adam step.

**Crash-safe.** Checkpoints are written atomically (:mod:`frameserve.media.atomic`): a
process killed with ``kill -9`` loses the steps since the last checkpoint, never a file. The
temporary files of the writes it never finished are removed when the job is next built or
resumed (:func:`~frameserve.media.atomic.remove_leftovers`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from frameserve.engine.devices import resolve_device
from frameserve.errors import ConfigError
from frameserve.media.atomic import remove_leftovers
from frameserve.training import checkpoints
from frameserve.training.contact_sheet import write_contact_sheet
from frameserve.training.data import ImagePairs
from frameserve.training.degradations import Degradation, DegradedTask
from frameserve.training.labels import LabelledImages
from frameserve.training.networks import RESTORATION_KINDS, NetworkSpec, build_network
from frameserve.training.progress import ProgressCallback, StepClock, TrainingProgress
from frameserve.training.reload import reload_data
from frameserve.training.settings import TrainingSettings
from frameserve.training.tasks import Batch, TrainingTask, task_for

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)

_SMOOTHING = 0.9  # of the running training loss


class Trainer:
    """Trains one job's network in ``job_dir``; see the module docstring.

    Args:
        data: :class:`ImagePairs` (image to image) or :class:`LabelledImages` (label, number).
        settings: how to train (defaults: :class:`TrainingSettings()`).
        job_dir: where checkpoints, contact sheets and ``job.json`` go; must hold no
            checkpoint yet (use :meth:`resume` to go on with one).
        name: the job's name (the served model's id is made from it).
        on_progress: called after every step.
        network: image jobs: train this network instead of the settings' U-Net (kind
            ``"restoration"`` or ``"dncnn"``; its channels must match the data's).
        degradation: image jobs: degrade every input crop afresh at each step (see
            :mod:`frameserve.training.degradations`).

    Raises:
        ConfigError: settings that do not fit the data (a crop larger than a frame, a
            residual network with different channels in and out, a crop that is not a
            multiple of the network's size multiple), a job folder in use, an unavailable
            device.
    """

    def __init__(
        self,
        data: ImagePairs | LabelledImages,
        settings: TrainingSettings | None = None,
        *,
        job_dir: str | os.PathLike[str],
        name: str = "",
        on_progress: ProgressCallback | None = None,
        network: NetworkSpec | None = None,
        degradation: Degradation | None = None,
    ) -> None:
        job = Path(job_dir)
        _check_no_checkpoints(job)
        self._build(
            data,
            settings or TrainingSettings(),
            job,
            name or job.name,
            on_progress,
            other_network=network,
            degradation=degradation,
        )
        checkpoints.write_job_file(job, self._description())

    @classmethod
    def plan(
        cls,
        data: ImagePairs | LabelledImages,
        settings: TrainingSettings | None = None,
        *,
        job_dir: str | os.PathLike[str],
        name: str = "",
        network: NetworkSpec | None = None,
        degradation: Degradation | None = None,
    ) -> None:
        """Check a new job as the constructor does and write its ``job.json``, without
        building its network (nothing is allocated, no device is touched): a job planned in
        one process is trained by a :class:`Trainer` built in another.

        Raises:
            ConfigError: as the constructor.
        """
        job = Path(job_dir)
        _check_no_checkpoints(job)
        trainer = cls.__new__(cls)
        trainer._check(
            data, settings or TrainingSettings(), job, name or job.name, network, degradation
        )
        job.mkdir(parents=True, exist_ok=True)
        checkpoints.write_job_file(job, trainer._description())

    @classmethod
    def resume(
        cls,
        job_dir: str | os.PathLike[str],
        data: ImagePairs | LabelledImages | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        steps: int | None = None,
        degradation: Degradation | None = None,
    ) -> Trainer:
        """Return a trainer that goes on from the newest checkpoint of ``job_dir``.

        Args:
            data: the job's data; ``None`` reads it again from the files the checkpoint
                lists (jobs whose frames came from arrays must be given them).
            degradation: the degradation the job trained with, if any (the same settings).
            steps: a new total of steps (at least the steps done); the schedule then spans
                the new total, so the result differs from a job planned that long.

        Raises:
            ConfigError: no checkpoint, data that differs from what the job trained on, a
                degradation other than the job's, or a new total below the steps done.
        """
        job = Path(job_dir)
        path = checkpoints.resolve_checkpoint(job)
        payload = checkpoints.load_checkpoint(path)
        settings = TrainingSettings.from_dict(payload["settings"])
        if steps is not None:
            if steps < payload["step"]:
                raise ConfigError(
                    f"steps {steps} is below the {payload['step']} steps the job has done"
                )
            settings = dataclasses.replace(settings, steps=steps)
        task_data = reload_data(payload["task"]) if data is None else data
        saved_degradation = payload["task"].get("degradation")
        given = degradation.describe() if degradation is not None else None
        if given != saved_degradation:
            raise ConfigError(
                f"job {payload['name']!r} trained with degradation {saved_degradation}; resume "
                f"it with the same one (got {given})"
            )
        saved_network = NetworkSpec.from_dict(payload["network"])
        trainer = cls.__new__(cls)
        trainer._build(
            task_data,
            settings,
            job,
            payload["name"],
            on_progress,
            other_network=saved_network if saved_network.kind in RESTORATION_KINDS else None,
            degradation=degradation,
        )
        trainer.task.check_same_frames(payload["task"]["frames"], trainer.name)
        trainer._restore(payload)
        checkpoints.write_job_file(job, trainer._description())
        logger.info("resumed job %r at step %d from %s", trainer.name, trainer.step_count, path)
        return trainer

    # -- state -------------------------------------------------------------------------------

    def _build(
        self,
        data: ImagePairs | LabelledImages,
        settings: TrainingSettings,
        job_dir: Path,
        name: str,
        on_progress: ProgressCallback | None,
        *,
        other_network: NetworkSpec | None = None,
        degradation: Degradation | None = None,
    ) -> None:
        self._check(data, settings, job_dir, name, other_network, degradation)
        self.on_progress = on_progress
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            network = build_network(self.network_spec)
        self.task.prepare(network)
        self.network: nn.Module = network.to(self.device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=settings.learning_rate)
        self.rng = np.random.default_rng(settings.seed)
        self.step_count = 0
        self._clock = StepClock()
        self._train_loss = math.nan
        self._validation_loss: float | None = None
        self._validation: list[Batch] | None = None
        self._sheet: Batch | bool | None = False  # False: not drawn yet
        self._last_saved = -1
        self._should_stop: Callable[[], bool] | None = None
        job_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(job_dir, recursive=True)  # of a write a killed process never finished

    def _check(
        self,
        data: ImagePairs | LabelledImages,
        settings: TrainingSettings,
        job_dir: Path,
        name: str,
        other_network: NetworkSpec | None,
        degradation: Degradation | None,
    ) -> None:
        """Set what the job is (settings, task, network spec) once it is checked to fit."""
        self.settings = settings
        self.job_dir = job_dir
        self.name = name
        self.task: TrainingTask = task_for(data)
        if degradation is not None:
            self.task = DegradedTask(self.task, degradation)
        self.task.check(settings)
        self.device = resolve_device(settings.device)  # ConfigError: not available here
        self.network_spec: NetworkSpec = self.task.network_spec(settings)
        if other_network is not None:
            self.task.check_network(other_network, settings)
            self.network_spec = other_network

    def _restore(self, payload: dict[str, Any]) -> None:
        self.network.load_state_dict(payload["network_state"])
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.rng.bit_generator.state = payload["rng_state"]
        self.step_count = int(payload["step"])
        self._clock.elapsed = float(payload["elapsed_seconds"])
        self._train_loss = float(payload["train_loss"])
        self._validation_loss = payload["validation_loss"]
        self._last_saved = self.step_count
        threads = payload.get("torch_threads")
        if self.device.type == "cpu" and threads != torch.get_num_threads():
            logger.warning(
                "job %r was trained with %s torch threads and resumes with %d: the weights may "
                "differ in the last bits from an uninterrupted run",
                self.name,
                threads,
                torch.get_num_threads(),
            )

    @property
    def finished(self) -> bool:
        """Whether every step of the job is done."""
        return self.step_count >= self.settings.steps

    # -- running -----------------------------------------------------------------------------

    def step(self) -> TrainingProgress:
        """Run one training step and what is due after it; return the progress.

        Raises:
            ConfigError: the job is finished, or the loss became NaN or infinite (lower the
                learning rate).
        """
        if self.finished:
            raise ConfigError(f"job {self.name!r} has done all its {self.settings.steps} steps")
        started = self._clock.start(self.step_count)
        rate = self.settings.learning_rate_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        inputs, targets = self.task.sample(self.rng, self.settings)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(self.network, self.network(inputs), targets, self.settings.loss)
        value = float(loss.detach())
        if not math.isfinite(value):  # checked before the weights change: they stay usable
            raise ConfigError(
                f"job {self.name!r} diverged at step {self.step_count + 1}: the loss is {value}; "
                f"lower the learning rate (now {self.settings.learning_rate})"
            )
        loss.backward()  # type: ignore[no-untyped-call]
        if self.settings.gradient_clip is not None:
            nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.gradient_clip)
        self.optimizer.step()
        self.step_count += 1
        self._train_loss = (
            value
            if math.isnan(self._train_loss)
            else (_SMOOTHING * self._train_loss + (1 - _SMOOTHING) * value)
        )
        sheet = None
        if self._due(self.settings.contact_sheet_interval):
            sheet = self.write_contact_sheet()
        if self._due(self.settings.validation_interval):
            self.validate()
        checkpoint = None
        if self.finished or (
            self.settings.checkpoint_interval
            and self.step_count % self.settings.checkpoint_interval == 0
        ):
            checkpoint = self.save_checkpoint()
        self._clock.stop(started, self.step_count)
        progress = self._progress(value, rate, checkpoint, sheet)
        if self.on_progress is not None:
            self.on_progress(progress)
        return progress

    def run(
        self, steps: int | None = None, *, should_stop: Callable[[], bool] | None = None
    ) -> TrainingProgress | None:
        """Run until the job is done, ``steps`` more steps are done, or ``should_stop()``.

        ``should_stop`` is checked before every step (and between validation batches); the
        run then ends with a checkpoint of the steps done. Returns the last progress
        (``None`` if no step ran).
        """
        end = self.settings.steps
        if steps is not None:
            end = min(end, self.step_count + steps)
        progress = None
        self._should_stop = should_stop
        self._clock.restart()
        try:
            while self.step_count < end:
                if should_stop is not None and should_stop():
                    logger.info("job %r stopped at step %d", self.name, self.step_count)
                    break
                progress = self.step()
        finally:
            self._should_stop = None
            if self.step_count > 0 and self._last_saved != self.step_count:
                path = self.save_checkpoint()
                if progress is not None:
                    progress = dataclasses.replace(progress, checkpoint=path)
        return progress

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the network's output for ``(N, C, H, W)`` inputs (any size; on the CPU).

        Image jobs give frames; label jobs class scores ``(N, classes)``; number jobs
        ``(N, 1)`` values.
        """
        self.network.eval()
        with torch.inference_mode():
            return self.task.predict(self.network, inputs.to(self.device)).cpu()

    def validate(self) -> float | None:
        """Compute, remember and return the validation loss (``None``: no validation data,
        or stopped)."""
        if self._validation is None:
            self._validation = self.task.validation_set(self.settings)
        if not self._validation:
            return None
        self.network.eval()
        total = 0.0
        with torch.inference_mode():
            for inputs, targets in self._validation:
                if self._should_stop is not None and self._should_stop():
                    return None
                prediction = self.task.predict(self.network, inputs.to(self.device))
                loss = self.task.loss(
                    self.network, prediction, targets.to(self.device), self.settings.loss
                )
                total += float(loss)
        self._validation_loss = total / len(self._validation)
        return self._validation_loss

    def write_contact_sheet(self) -> Path | None:
        """Write a contact sheet for the current step; return it (``None``: the job's kind
        has none)."""
        if self._sheet is False:
            self._sheet = self.task.sheet_samples(self.settings)
        if not isinstance(self._sheet, tuple):
            return None
        inputs, targets = self._sheet
        predictions = self.predict(inputs)
        rows = [
            (inputs[i].numpy(), predictions[i].numpy(), targets[i].numpy())
            for i in range(len(inputs))
        ]
        path = self.job_dir / checkpoints.CONTACT_SHEET_FOLDER / f"step_{self.step_count}.png"
        return write_contact_sheet(path, rows, colourspace=self.task.colourspace)

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current state, atomically; return its path."""
        path = checkpoints.checkpoint_path(self.job_dir, self.step_count)
        payload = {
            **self._description(),
            "format": checkpoints.FORMAT,
            "step": self.step_count,
            "finished": self.finished,
            "network_state": self.network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "rng_state": self.rng.bit_generator.state,
            "elapsed_seconds": self._clock.elapsed,
            "train_loss": self._train_loss,
            "validation_loss": self._validation_loss,
            "torch_version": str(torch.__version__),
            "torch_threads": torch.get_num_threads(),
        }
        checkpoints.save_checkpoint(path, payload)
        self._last_saved = self.step_count
        checkpoints.prune_checkpoints(self.job_dir, self.settings.keep_checkpoints)
        logger.info(
            "job %r: checkpoint at step %d/%d (loss %.4g) in %s",
            self.name,
            self.step_count,
            self.settings.steps,
            self._train_loss,
            path,
        )
        return path

    # -- helpers -----------------------------------------------------------------------------

    def _due(self, interval: int) -> bool:
        return bool(interval) and (self.step_count % interval == 0 or self.finished)

    def _description(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.settings.to_dict(),
            "network": self.network_spec.to_dict(),
            "task": self.task.describe(),
        }

    def _progress(
        self, loss: float, rate: float, checkpoint: Path | None, sheet: Path | None
    ) -> TrainingProgress:
        speed = self._clock.steps_per_second
        remaining = self.settings.steps - self.step_count
        return TrainingProgress(
            step=self.step_count,
            total_steps=self.settings.steps,
            loss=loss,
            train_loss=self._train_loss,
            validation_loss=self._validation_loss,
            learning_rate=rate,
            steps_per_second=speed,
            eta_seconds=remaining / speed if speed > 0 else math.inf,
            elapsed_seconds=self._clock.elapsed,
            checkpoint=checkpoint,
            contact_sheet=sheet,
        )


def _check_no_checkpoints(job: Path) -> None:
    """Raise :class:`ConfigError` if job folder ``job`` holds checkpoints (a new job's may not)."""
    if checkpoints.list_checkpoints(job):
        raise ConfigError(
            f"job folder {str(job)!r} already holds checkpoints; resume it with "
            "Trainer.resume(job_dir) or choose another folder"
        )
