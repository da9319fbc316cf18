"""Training settings: one validated, keyword-only object, stored in every checkpoint.

::

    settings = TrainingSettings(network="small", crop_size=128, steps=3000, seed=7)
    settings.to_dict()                      # plain data, for checkpoints and JSON
    TrainingSettings.from_dict({"steps": 500, "schedule": "constant"})
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from frameserve.engine.devices import check_device_name
from frameserve.errors import ConfigError
from frameserve.training.networks import NETWORK_SIZES, size_multiple

__all__ = ["LOSSES", "SCHEDULES", "TrainingSettings"]

logger = logging.getLogger(__name__)

#: Learning-rate schedules: ``constant``; ``cosine`` (down to 1% of the rate at the last
#: step); ``step`` (x0.1 after 60% of the steps and again after 85%).
SCHEDULES = ("constant", "cosine", "step")
#: Losses for image and number jobs (label jobs always use cross-entropy).
LOSSES = ("l1", "l2")

_MAX_STEPS = 10_000_000


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """How a network is trained: its size, the crops it sees, for how long, how often to save.

    The defaults train a small network that beats doing nothing by more than 10 dB on a
    held-out sharpen-and-grade task within 30 seconds on a 2-core CPU, and by 16 dB after five
    minutes (``benchmarks/training_quality.py``); one step takes tens of milliseconds there,
    so a cancel takes effect at once.

    Attributes:
        network: network size, ``"small"``, ``"medium"`` or ``"large"``
            (:mod:`frameserve.training.networks` lists channels, depth and parameters).
        crop_size: side of the square random crops the network learns from (image jobs), a
            multiple of the network's size multiple (8 for small and medium, 16 for large);
            for label and number jobs, the square size images are resized to.
        batch_size: crops per step.
        steps: steps of the whole job (the schedule spans them).
        learning_rate: Adam's learning rate at the start.
        schedule: ``"constant"``, ``"cosine"`` or ``"step"`` (see :data:`SCHEDULES`).
        flips: augment with random horizontal and vertical flips (turn off for effects with
            a direction, such as a motion blur or a light wrap from one side).
        rotations: augment with random 90° rotations (turn off for direction-bound effects).
        colour_jitter: multiply input and target by the same random gain (0.8-1.25); right
            only for effects that scale with exposure (blurs, sharpening, defocus, denoising
            of gain-independent grain), wrong for grades with an offset or a gamma. Label and
            number jobs apply it to the image alone (labels are assumed not to depend on it).
        loss: ``"l1"`` (default) or ``"l2"`` for image and number jobs.
        gradient_clip: scale each step's gradients down so their norm (over every weight)
            is at most this; ``None`` (default): never. Keeps deep networks without
            normalisation from diverging on a rare batch at higher learning rates.
        residual: image jobs: predict the difference to the input; ``None`` means yes when
            input and output have the same channels.
        seed: seeds the weights, the crops and the augmentation; the same seed and data give
            the same weights, bit for bit, on the CPU.
        checkpoint_interval: steps between checkpoints (also saved when a run ends); 0: only
            at the end.
        keep_checkpoints: how many checkpoints to keep, newest first (``None``: all).
        validation_interval: steps between two validation losses; 0: never.
        validation_crops: validate on this many fixed crops of the validation pairs
            (``None``: on the whole validation frames).
        contact_sheet_interval: steps between two contact sheets (image jobs); 0: never.
        contact_sheet_samples: rows of a contact sheet.
        device: ``"cpu"`` (default; reproducible), ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    """

    network: str = "small"
    crop_size: int = 64
    batch_size: int = 4
    steps: int = 2000
    learning_rate: float = 2e-3
    schedule: str = "cosine"
    flips: bool = True
    rotations: bool = True
    colour_jitter: bool = False
    loss: str = "l1"
    gradient_clip: float | None = None
    residual: bool | None = None
    seed: int = 0
    checkpoint_interval: int = 500
    keep_checkpoints: int | None = None
    validation_interval: int = 100
    validation_crops: int | None = 8
    contact_sheet_interval: int = 500
    contact_sheet_samples: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        _choice("network", self.network, NETWORK_SIZES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("loss", self.loss, LOSSES)
        _whole("crop_size", self.crop_size, 8, 4096)
        multiple = size_multiple(self.network)
        if self.crop_size % multiple:
            raise ConfigError(
                f"training setting 'crop_size': {self.crop_size} is not a multiple of "
                f"{multiple}, the size multiple of the {self.network!r} network"
            )
        _whole("batch_size", self.batch_size, 1, 4096)
        _whole("steps", self.steps, 1, _MAX_STEPS)
        _whole("seed", self.seed, 0, 2**63 - 1)
        for name in ("checkpoint_interval", "validation_interval", "contact_sheet_interval"):
            _whole(name, getattr(self, name), 0, _MAX_STEPS)
        _whole("contact_sheet_samples", self.contact_sheet_samples, 1, 64)
        if self.keep_checkpoints is not None:
            _whole("keep_checkpoints", self.keep_checkpoints, 1, _MAX_STEPS)
        if self.validation_crops is not None:
            _whole("validation_crops", self.validation_crops, 1, 4096)
        for name in ("flips", "rotations", "colour_jitter"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"training setting {name!r}: {getattr(self, name)!r} is not allowed; "
                    "expected true or false"
                )
        if self.residual is not None and not isinstance(self.residual, bool):
            raise ConfigError(
                f"training setting 'residual': {self.residual!r} is not allowed; "
                "expected true, false or None (automatic)"
            )
        rate = self.learning_rate
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or not 0 < rate <= 1
        ):
            raise ConfigError(
                f"training setting 'learning_rate': {rate!r} is not allowed; "
                "expected a number above 0 and at most 1"
            )
        object.__setattr__(self, "learning_rate", float(rate))
        clip = self.gradient_clip
        if clip is not None:
            if (
                isinstance(clip, bool)
                or not isinstance(clip, int | float)
                or not math.isfinite(clip)
                or clip <= 0
            ):
                raise ConfigError(
                    f"training setting 'gradient_clip': {clip!r} is not allowed; expected a "
                    "number above 0, or None (no clipping)"
                )
            object.__setattr__(self, "gradient_clip", float(clip))
        if not isinstance(self.device, str):
            raise ConfigError(f"training setting 'device': {self.device!r} is not a device name")
        check_device_name(self.device)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain data (JSON-friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSettings:
        """Return settings from plain data; missing names take their defaults.

        Raises:
            ConfigError: an unknown name, or a value that is not allowed.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown training setting(s) {', '.join(repr(n) for n in unknown)}; "
                f"known are {', '.join(sorted(known))}"
            )
        return cls(**data)

    def learning_rate_at(self, step: int) -> float:
        """Return the learning rate for ``step`` (counted from 0) under the schedule."""
        progress = min(max(step / self.steps, 0.0), 1.0)
        if self.schedule == "cosine":
            floor = 0.01
            return self.learning_rate * (
                floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
            )
        if self.schedule == "step":
            return self.learning_rate * (0.1 ** ((progress >= 0.6) + (progress >= 0.85)))
        return self.learning_rate


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"training setting {name!r}: {value!r} is not allowed; choose one of "
            f"{', '.join(repr(a) for a in allowed)}"
        )


def _whole(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"training setting {name!r}: {value!r} is not allowed; expected a whole number"
        )
    if value < low:
        raise ConfigError(f"training setting {name!r}: {value} is below the minimum {low}")
    if value > high:
        raise ConfigError(f"training setting {name!r}: {value} is above the maximum {high}")
