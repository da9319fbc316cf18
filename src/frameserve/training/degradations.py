"""Synthetic degradations: training a restoration network on clean photographs alone.

Give the trainer clean frames (input = target) and a degradation; at every step each crop's
input is degraded afresh, with parameters drawn from the trainer's seeded generator, so the
network never sees the same blur or grain twice and a seeded run is reproducible::

    photos = ImagePairs([FramePair(input=p, target=p) for p in clean], colourspace="srgb")
    trainer = Trainer(photos, settings, job_dir="jobs/deblur",
                      network=NetworkSpec(kind="restoration", size="medium",
                                          in_channels=3, out_channels=3),
                      degradation=MotionBlur(lengths=(5.0, 15.0)))

A degradation takes float32 ``(N, C, H, W)`` sRGB-encoded frames in 0-1 and returns degraded
frames of ``(N, C, H - 2m, W - 2m)``, ``m`` being its :attr:`~Degradation.margin` (a blur reads
that far past each pixel). :class:`DegradedTask` crops ``crop_size + 2m`` pixels, degrades the
inputs and cuts ``m`` pixels off the targets, so no pixel the network learns from was made up
by padding.

==================  ===========================================================================
:class:`MotionBlur`  camera shake and object motion: random straight and curved trajectories
                     of 5-15 pixels (by default), uneven speed along them, applied in linear
                     light (the sRGB frames are decoded, blurred and encoded again); told to
                     the network or not (``tell_path``)
:class:`SensorNoise` Gaussian noise on sRGB values (the common benchmark setting), or
                     Poisson-Gaussian noise in linear light (photon shot noise and read noise,
                     as a sensor makes it) encoded to sRGB, where it is strongest in the shadows
==================  ===========================================================================

Degraded values are clipped to 0-1, as a camera's output is (restoration models clamp their
input to that range and pass what lies outside through; see
:func:`frameserve.networks.restoration.restore_in_range`).

A degradation may also tell the network what it did (:attr:`Degradation.extra_channels`
constant channels after the image's, such as a motion blur's path): the network then learns a
non-blind restoration, which trains far faster than a blind one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from frameserve.errors import ConfigError
from frameserve.networks.motion_blur import (
    PATH_CODE_CHANNELS,
    blur,
    linear_to_srgb,
    motion_kernel,
    path_code,
    srgb_to_linear,
)
from frameserve.training.kinds import JobKind
from frameserve.training.networks import NetworkSpec, size_multiple
from frameserve.training.settings import TrainingSettings
from frameserve.training.tasks import Batch, TrainingTask

__all__ = ["Degradation", "DegradedTask", "MotionBlur", "SensorNoise"]

logger = logging.getLogger(__name__)


class Degradation(Protocol):
    """What the trainer needs of a degradation."""

    @property
    def margin(self) -> int:
        """Pixels the degradation reads past each output pixel (cut off each side)."""
        ...

    @property
    def extra_channels(self) -> int:
        """Channels the degraded inputs carry after the image's (what the network is told)."""
        ...

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Return degraded ``frames`` (``(N, C, H, W)`` in 0-1), ``margin`` pixels smaller on
        each side, with ``extra_channels`` more channels; parameters and noise are drawn from
        ``rng``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Return the degradation's settings as plain data (stored in checkpoints)."""
        ...


# -- motion blur ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class MotionBlur:
    """Random motion blur in linear light, then a little sensor noise; see the module docstring.

    Attributes:
        lengths: the shortest and longest path, in pixels (drawn uniformly).
        curved: the share of curved paths (the rest are straight lines).
        max_turn: the most a curved path turns, in radians (drawn uniformly, either way).
        max_speed_warp: speeds vary up to this factor (``t ** w``, ``w`` log-uniform in
            ``1 / max_speed_warp`` .. ``max_speed_warp``).
        noise: the largest Gaussian noise added after the blur (sRGB, 0-1 units; drawn
            uniformly from 0), so the network does not learn to sharpen grain.
        sharp: the share of crops left unblurred (noise only, path length 0): the network
            learns to leave sharp frames alone.
        tell_path: add the path's code (length, direction, turn; not its speed) after the
            image as :data:`~frameserve.networks.motion_blur.PATH_CODE_CHANNELS` constant
            channels (:func:`~frameserve.networks.motion_blur.path_code`): the network then
            learns to undo a blur it is told, not to guess it.
    """

    lengths: tuple[float, float] = (5.0, 15.0)
    curved: float = 0.5
    max_turn: float = 2.0
    max_speed_warp: float = 2.0
    noise: float = 2.0 / 255.0
    sharp: float = 0.05
    tell_path: bool = False

    def __post_init__(self) -> None:
        low, high = self.lengths
        if not 0 <= low <= high <= 64:
            raise ConfigError(
                f"motion blur lengths {self.lengths} must satisfy 0 <= low <= high <= 64"
            )
        for name in ("curved", "sharp"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"motion blur {name!r} must be a share in 0..1")
        if self.max_speed_warp < 1 or self.max_turn < 0 or self.noise < 0:
            raise ConfigError("motion blur: max_speed_warp >= 1, max_turn >= 0 and noise >= 0")

    @property
    def margin(self) -> int:
        """Half the kernel size: how far a path reaches from its centre of mass, at most.

        A straight path of length ``L`` whose speed is warped by ``w`` has its centre of mass
        ``L / (w + 1)`` from its start, so it reaches ``L * w / (w + 1)`` past it.
        """
        warp = self.max_speed_warp
        return math.ceil(self.lengths[1] * warp / (warp + 1)) + 2

    @property
    def extra_channels(self) -> int:
        """The path's code channels, when the network is told the path."""
        return PATH_CODE_CHANNELS if self.tell_path else 0

    def kernels(self, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``count`` paths: kernels of ``2 * margin + 1`` pixels ``(count, K, K)`` and
        their codes ``(count, 5)``."""
        size = 2 * self.margin + 1
        kernels = np.zeros((count, size, size), np.float32)
        codes = torch.zeros(count, PATH_CODE_CHANNELS)
        for index in range(count):
            if rng.random() < self.sharp:
                kernels[index, self.margin, self.margin] = 1.0
                continue
            length = float(rng.uniform(*self.lengths))
            angle = float(rng.uniform(0.0, 2.0 * math.pi))
            turn = (
                float(rng.uniform(-self.max_turn, self.max_turn))
                if rng.random() < self.curved
                else 0.0
            )
            warp = float(math.exp(rng.uniform(-1, 1) * math.log(self.max_speed_warp)))
            kernels[index] = motion_kernel(
                length, angle=angle, turn=turn, speed_warp=warp, size=size
            )
            codes[index] = path_code(length, angle, turn)
        return torch.from_numpy(kernels), codes

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        kernels, codes = self.kernels(rng, frames.shape[0])
        blurred = blur(frames, kernels)
        sigma = torch.from_numpy(
            rng.uniform(0, self.noise, (frames.shape[0], 1, 1, 1)).astype(np.float32)
        )
        noise = torch.from_numpy(rng.standard_normal(blurred.shape, dtype=np.float32))
        degraded = (blurred + sigma * noise).clamp(0.0, 1.0)
        if not self.tell_path:
            return degraded
        maps = codes[:, :, None, None].expand(-1, -1, *degraded.shape[-2:])
        return torch.cat([degraded, maps], dim=1)

    def describe(self) -> dict[str, Any]:
        return {"kind": "motion_blur", **dataclasses.asdict(self)}


# -- noise ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class SensorNoise:
    """Random noise, Gaussian on sRGB values or Poisson-Gaussian in linear light.

    Attributes:
        sigmas: Gaussian mode: the smallest and largest standard deviation on sRGB values
            (0-1 units; 25/255 is the usual benchmark level), drawn uniformly per crop.
        poisson: the share of crops given sensor noise in linear light instead:
            ``variance = gain * x + read ** 2`` on linear ``x``, then encoded to sRGB.
        gains: the smallest and largest shot-noise gain (log-uniform): the variance a signal
            of 1 (linear) gets from photon noise.
        reads: the smallest and largest read-noise deviation in linear units (log-uniform).
        chroma: the share of crops whose noise is the same in R, G and B (grey grain);
            the rest get independent noise per channel (colour noise).
    """

    sigmas: tuple[float, float] = (0.0, 50.0 / 255.0)
    poisson: float = 0.3
    gains: tuple[float, float] = (1e-3, 3e-2)
    reads: tuple[float, float] = (1e-3, 2e-2)
    chroma: float = 0.1

    def __post_init__(self) -> None:
        for name in ("sigmas", "gains", "reads"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ConfigError(
                    f"sensor noise {name!r} {(low, high)} must satisfy 0 <= low <= high"
                )
        for name in ("poisson", "chroma"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"sensor noise {name!r} must be a share in 0..1")

    @property
    def margin(self) -> int:
        """Noise is per pixel: no margin."""
        return 0

    @property
    def extra_channels(self) -> int:
        """The network is told nothing: no extra channels."""
        return 0

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        noisy = torch.empty_like(frames)
        for index, frame in enumerate(frames):
            poisson = rng.random() < self.poisson
            grey = rng.random() < self.chroma
            shape = (1, *frame.shape[1:]) if grey else tuple(frame.shape)
            noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
            if poisson:
                gain = _log_uniform(rng, self.gains)
                read = _log_uniform(rng, self.reads)
                linear = srgb_to_linear(frame)
                deviation = (gain * linear + read**2).sqrt()
                noisy[index] = linear_to_srgb(linear + deviation * noise)
            else:
                sigma = float(rng.uniform(*self.sigmas))
                noisy[index] = frame + sigma * noise
        return noisy.clamp(0.0, 1.0)

    def describe(self) -> dict[str, Any]:
        return {"kind": "sensor_noise", **dataclasses.asdict(self)}


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if low <= 0:
        return float(rng.uniform(low, high))
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


# -- the task --------------------------------------------------------------------------------------


class DegradedTask(TrainingTask):
    """An image task whose inputs are degraded afresh at every step; see the module docstring.

    Wraps the task of the data (an image task); everything not about crops is passed through.
    Inputs have ``degradation.extra_channels`` more channels than the data's.
    Validation and contact-sheet crops are degraded once, from their own seed, so their
    numbers stay comparable over a run.
    """

    def __init__(self, inner: TrainingTask, degradation: Degradation) -> None:
        if inner.kind is not JobKind.IMAGE:
            raise ConfigError(f"a degradation applies to image jobs, not {inner.kind} jobs")
        self.inner = inner
        self.degradation = degradation
        self.kind = inner.kind
        self.colourspace = inner.colourspace
        self.in_channels = inner.in_channels + degradation.extra_channels
        self.out_channels = inner.out_channels

    def _padded(self, settings: TrainingSettings) -> TrainingSettings:
        margin = self.degradation.margin
        if margin == 0:
            return settings
        multiple = size_multiple(settings.network)  # the crop stays a valid setting
        extra = -(-2 * margin // multiple) * multiple
        return dataclasses.replace(settings, crop_size=settings.crop_size + extra)

    def _degrade(self, batch: Batch, rng: np.random.Generator, crop: int | None) -> Batch:
        inputs, targets = batch
        degraded = self.degradation(inputs, rng)
        height, width = degraded.shape[-2:]
        top = (targets.shape[-2] - height) // 2
        left = (targets.shape[-1] - width) // 2
        targets = targets[..., top : top + height, left : left + width]
        if crop is not None and (height > crop or width > crop):
            inner_top, inner_left = (height - crop) // 2, (width - crop) // 2
            degraded = degraded[..., inner_top : inner_top + crop, inner_left : inner_left + crop]
            targets = targets[..., inner_top : inner_top + crop, inner_left : inner_left + crop]
        return degraded.contiguous(), targets.contiguous()

    def check(self, settings: TrainingSettings) -> None:
        self.inner.check(self._padded(settings))

    def network_spec(self, settings: TrainingSettings) -> NetworkSpec:
        spec = self.inner.network_spec(settings)
        if self.degradation.extra_channels:  # a U-Net that is told more: not residual
            return dataclasses.replace(spec, in_channels=self.in_channels, residual=False)
        return spec

    def prepare(self, network: nn.Module) -> None:
        self.inner.prepare(network)

    def sample(self, rng: np.random.Generator, settings: TrainingSettings) -> Batch:
        batch = self.inner.sample(rng, self._padded(settings))
        return self._degrade(batch, rng, settings.crop_size)

    def loss(
        self, network: nn.Module, prediction: torch.Tensor, target: torch.Tensor, loss: str
    ) -> torch.Tensor:
        return self.inner.loss(network, prediction, target, loss)

    def validation_set(self, settings: TrainingSettings) -> list[Batch]:
        rng = np.random.default_rng([settings.seed, 0xB1A5])
        crop = settings.crop_size if settings.validation_crops is not None else None
        return [
            self._degrade(b, rng, crop) for b in self.inner.validation_set(self._padded(settings))
        ]

    def predict(self, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return self.inner.predict(network, inputs)

    def sheet_samples(self, settings: TrainingSettings) -> Batch | None:
        batch = self.inner.sheet_samples(self._padded(settings))
        if batch is None:
            return None
        return self._degrade(
            batch, np.random.default_rng([settings.seed, 0x5EE7]), settings.crop_size
        )

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "degradation": self.degradation.describe()}
