"""What differs between image, label and number jobs, behind one interface the trainer uses.

The trainer is the same loop for every job; a task supplies the network spec, the batches,
the loss, the fixed validation set and the contact-sheet samples (:func:`task_for` picks the
task from the data's type). Batches are drawn only from the trainer's numpy generator, in a
fixed order, so a seeded run is reproducible.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frameserve.engine.tiling import pad_reflect
from frameserve.errors import ConfigError
from frameserve.training.augment import Augmentation
from frameserve.training.data import ImagePairs, fixed_crops, sample_crops
from frameserve.training.kinds import JobKind
from frameserve.training.labels import LabelledImages
from frameserve.training.networks import RESTORATION_KINDS, NetworkSpec, network_size_multiple
from frameserve.training.settings import TrainingSettings

__all__ = ["Batch", "ImageTask", "LabelTask", "TrainingTask", "task_for"]

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingTask(ABC):
    """The job-specific half of training (the trainer is the other half)."""

    kind: JobKind
    colourspace: str
    in_channels: int
    out_channels: int

    @abstractmethod
    def check(self, settings: TrainingSettings) -> None:
        """Raise :class:`ConfigError` if ``settings`` cannot work with this data."""

    @abstractmethod
    def network_spec(self, settings: TrainingSettings) -> NetworkSpec:
        """Return the network this job trains."""

    def prepare(self, network: nn.Module) -> None:  # noqa: B027 (an optional hook)
        """Adjust a freshly built network to the data (before any step)."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, settings: TrainingSettings) -> Batch:
        """Return one training batch ``(inputs, targets)`` drawn from ``rng``, on the CPU."""

    @abstractmethod
    def loss(
        self, network: nn.Module, prediction: torch.Tensor, target: torch.Tensor, loss: str
    ) -> torch.Tensor:
        """Return the scalar loss of ``prediction`` against ``target``."""

    @abstractmethod
    def validation_set(self, settings: TrainingSettings) -> list[Batch]:
        """Return the fixed validation batches (empty without validation data)."""

    def predict(self, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Run ``network`` on ``(N, C, H, W)`` inputs of any size."""
        return network(inputs)  # type: ignore[no-any-return]

    def sheet_samples(self, settings: TrainingSettings) -> Batch | None:
        """Return fixed ``(inputs, targets)`` for contact sheets, or ``None`` (no sheets)."""
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Return the task as plain data: kind, channels, classes, colourspace and frames."""

    def check_network(self, network: NetworkSpec, settings: TrainingSettings) -> None:
        """Check that this task can train ``network`` given instead of its own.

        Raises:
            ConfigError: ``network`` is not a restoration network, the job is not an image
                job, its channels differ from the data's, or the crop is not a multiple of its
                size multiple.
        """
        kinds = " or ".join(repr(kind) for kind in RESTORATION_KINDS)
        if network.kind not in RESTORATION_KINDS:
            raise ConfigError(
                f"a network of kind {network.kind!r} cannot be given; give one of kind {kinds}, "
                "or none to train the U-Net the settings name"
            )
        if self.kind is not JobKind.IMAGE:
            raise ConfigError(
                f"a {network.kind!r} network trains on image jobs; this is a {self.kind} job"
            )
        channels = (self.in_channels, self.out_channels)
        if (network.in_channels, network.out_channels) != channels:
            raise ConfigError(
                f"the network takes {network.in_channels} and gives {network.out_channels} "
                f"channels; the data has {channels[0]} in and {channels[1]} out"
            )
        multiple = network_size_multiple(network)
        if settings.crop_size % multiple:
            raise ConfigError(
                f"training setting 'crop_size': {settings.crop_size} is not a multiple of "
                f"{multiple}, the size multiple of the {network.kind!r} {network.size!r} network"
            )

    def check_same_frames(self, saved: list[dict[str, Any]], job: str) -> None:
        """Check that the data is the frames job ``job`` trained on (``saved``: as described).

        Raises:
            ConfigError: frames were added, removed or changed (the message names them).
        """
        now = self.describe()["frames"]
        if [f["digest"] for f in now] != [f["digest"] for f in saved]:
            changed = [
                s["name"] for s, n in zip(saved, now, strict=False) if s["digest"] != n["digest"]
            ]
            raise ConfigError(
                f"the data differs from what job {job!r} trained on "
                f"({len(saved)} frames saved, {len(now)} given; changed: "
                f"{', '.join(changed) or 'none'}); start a new job to train on other frames"
            )


class ImageTask(TrainingTask):
    """An image-to-image job: random crops of frame pairs, L1/L2 loss on pixels."""

    kind = JobKind.IMAGE

    def __init__(self, data: ImagePairs) -> None:
        self.data = data
        self.colourspace = data.colourspace
        self.in_channels = data.in_channels
        self.out_channels = data.out_channels

    def check(self, settings: TrainingSettings) -> None:
        self.data.check_crop_size(settings.crop_size)
        self.network_spec(settings)  # a residual network needs matching channels

    def network_spec(self, settings: TrainingSettings) -> NetworkSpec:
        residual = settings.residual
        if residual is None:
            residual = self.in_channels == self.out_channels
        return NetworkSpec(
            kind="unet",
            size=settings.network,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            residual=residual,
        )

    def sample(self, rng: np.random.Generator, settings: TrainingSettings) -> Batch:
        inputs, targets = sample_crops(
            self.data.train,
            rng,
            count=settings.batch_size,
            crop_size=settings.crop_size,
            augmentation=_augmentation(settings),
        )
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def loss(
        self, network: nn.Module, prediction: torch.Tensor, target: torch.Tensor, loss: str
    ) -> torch.Tensor:
        return _pixel_loss(prediction, target, loss)

    def validation_set(self, settings: TrainingSettings) -> list[Batch]:
        pairs = self.data.validation
        if not pairs:
            return []
        if settings.validation_crops is None:
            return [
                (torch.from_numpy(p.input)[None], torch.from_numpy(p.target)[None]) for p in pairs
            ]
        inputs, targets = fixed_crops(
            pairs,
            count=settings.validation_crops,
            crop_size=settings.crop_size,
            seed=settings.seed,
        )
        return _batches(torch.from_numpy(inputs), torch.from_numpy(targets), settings.batch_size)

    def predict(self, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        multiple = int(getattr(network, "multiple", 1))
        padded = pad_reflect(inputs, _round_up(height, multiple), _round_up(width, multiple))
        return network(padded)[..., :height, :width]  # type: ignore[no-any-return]

    def sheet_samples(self, settings: TrainingSettings) -> Batch | None:
        pairs = self.data.validation or self.data.train
        inputs, targets = fixed_crops(
            pairs,
            count=settings.contact_sheet_samples,
            crop_size=settings.crop_size,
            seed=settings.seed + 1,
        )
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "classes": [],
            "colourspace": self.colourspace,
            "frames": self.data.describe(),
        }


class LabelTask(TrainingTask):
    """An image-to-label (cross-entropy) or image-to-number (L1/L2) job on resized images."""

    def __init__(self, data: LabelledImages) -> None:
        self.data = data
        self.kind = data.kind
        self.colourspace = data.colourspace
        self.in_channels = data.in_channels
        self.out_channels = data.out_channels
        self._resized: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
        self._resized = {}

    def check(self, settings: TrainingSettings) -> None:
        self.network_spec(settings)

    def network_spec(self, settings: TrainingSettings) -> NetworkSpec:
        return NetworkSpec(
            kind="encoder",
            size=settings.network,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            image_size=settings.crop_size,
        )

    def prepare(self, network: nn.Module) -> None:
        if self.kind is not JobKind.NUMBER:
            return
        values = torch.tensor([item.target for item in self.data.train], dtype=torch.float32)
        spread = float(values.std()) if len(values) > 1 else 0.0
        with torch.no_grad():
            _buffer(network, "output_offset").fill_(float(values.mean()))
            _buffer(network, "output_scale").fill_(spread if spread > 1e-12 else 1.0)

    def sample(self, rng: np.random.Generator, settings: TrainingSettings) -> Batch:
        images, targets, _, _ = self._tensors(settings.crop_size)
        augmentation = _augmentation(settings)
        indices = [int(rng.integers(len(images))) for _ in range(settings.batch_size)]
        batch = np.stack([augmentation.draw(rng).apply(images[i].numpy()) for i in indices]).astype(
            np.float32
        )
        return torch.from_numpy(batch), targets[indices]

    def loss(
        self, network: nn.Module, prediction: torch.Tensor, target: torch.Tensor, loss: str
    ) -> torch.Tensor:
        if self.kind is JobKind.LABEL:
            return F.cross_entropy(prediction, target.long())
        scale, offset = _buffer(network, "output_scale"), _buffer(network, "output_offset")
        return _pixel_loss((prediction - offset) / scale, (target[:, None] - offset) / scale, loss)

    def validation_set(self, settings: TrainingSettings) -> list[Batch]:
        _, _, images, targets = self._tensors(settings.crop_size)
        return _batches(images, targets, settings.batch_size) if len(images) else []

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "classes": list(self.data.classes),
            "colourspace": self.colourspace,
            "frames": self.data.describe(),
        }

    def _tensors(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training and validation images resized to ``size`` (once), with their targets."""
        if size not in self._resized:

            def stack(items: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor]:
                if not items:
                    return torch.empty(0, self.in_channels, size, size), torch.empty(0)
                images = [
                    F.interpolate(
                        torch.from_numpy(item.image)[None],
                        size=[size, size],
                        mode="bilinear",
                        antialias=True,
                    )[0]
                    for item in items
                ]
                targets = torch.tensor([float(item.target) for item in items])
                return torch.stack(images), targets

            self._resized[size] = (*stack(self.data.train), *stack(self.data.validation))
        return self._resized[size]


def task_for(data: ImagePairs | LabelledImages) -> TrainingTask:
    """Return the task that trains on ``data``.

    Raises:
        TypeError: ``data`` is neither :class:`ImagePairs` nor :class:`LabelledImages`.
    """
    if isinstance(data, ImagePairs):
        return ImageTask(data)
    if isinstance(data, LabelledImages):
        return LabelTask(data)
    raise TypeError(
        f"training data must be ImagePairs or LabelledImages, not {type(data).__name__}"
    )


def _augmentation(settings: TrainingSettings) -> Augmentation:
    return Augmentation(
        flips=settings.flips, rotations=settings.rotations, colour_jitter=settings.colour_jitter
    )


def _buffer(network: nn.Module, name: str) -> torch.Tensor:
    buffer = getattr(network, name)
    assert isinstance(buffer, torch.Tensor), name
    return buffer


def _pixel_loss(prediction: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "l2":
        return F.mse_loss(prediction, target)
    return F.l1_loss(prediction, target)


def _batches(inputs: torch.Tensor, targets: torch.Tensor, size: int) -> list[Batch]:
    return [(inputs[i : i + size], targets[i : i + size]) for i in range(0, len(inputs), size)]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
