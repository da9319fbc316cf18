"""Benchmark training: held-out quality against training time on this machine, and speed.

The task: learn a fixed, non-trivial look from three example frames, the way an artist uses a
CopyCat-style node. The look is an unsharp-mask sharpen (Gaussian sigma 1.5, amount 1.0)
followed by a colour grade (per-channel gains 1.08 / 1.0 / 0.88, a 0.85 gamma on values above
0, saturation x1.25 about Rec.709 luma), applied to scikit-image photos as they are (sRGB
values, 0-1). The network trains on ``astronaut``, ``coffee`` and ``chelsea`` and is tested on
photos it never saw: ``rocket``, ``camera`` (grey, made RGB) and the left view of
``stereo_motorcycle``.

Every ``--every`` seconds of training time (evaluation excluded) it prints the held-out PSNR
(peak 1.0, over all held-out pixels) of the network next to the PSNR of doing nothing (the
input against the target), with the gain in dB; **target: at least 10 dB better than doing
nothing within 5 minutes on a CPU**. The job's steps are fitted to the time budget from the
speed of a few warm-up steps (the cosine schedule then ends near the budget), as an artist who
says "train for five minutes" would get. Settings are the :class:`TrainingSettings` defaults
unless overridden. At the end it prints steps/s on the CPU and, when there is one, on a CUDA
GPU (same settings, 30 steps after a warm-up).

Usage::

    python benchmarks/training_quality.py [--minutes 5] [--every 30] [--network small]
        [--crop 96] [--batch 8] [--lr 0.002] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from frameserve.training import FramePair, ImagePairs, Trainer, TrainingSettings  # noqa: E402

TRAIN_PHOTOS = ("astronaut", "coffee", "chelsea")
TEST_PHOTOS = ("rocket", "camera", "stereo_motorcycle")
LUMA = torch.tensor([0.2126, 0.7152, 0.0722]).view(3, 1, 1)


def photo(name: str) -> torch.Tensor:
    """A scikit-image photo as a float32 (3, H, W) tensor, values 0-1."""
    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
        image = image[0]
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array[..., :3].transpose(2, 0, 1)))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) image with mirrored edges."""
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    channels = image.shape[0]
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    blurred = F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)
    return blurred[0]


def the_look(image: torch.Tensor) -> torch.Tensor:
    """The transform to learn: unsharp-mask sharpen, then a colour grade (not clipped above)."""
    sharp = image + 1.0 * (image - gaussian_blur(image, 1.5))
    graded = sharp * torch.tensor([1.08, 1.0, 0.88]).view(3, 1, 1)
    graded = graded.clamp(min=0.0) ** 0.85
    luma = (graded * LUMA).sum(dim=0, keepdim=True)
    return luma + 1.25 * (graded - luma)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB with a peak of 1.0."""
    mse = float(torch.mean((prediction - target) ** 2))
    return 10 * math.log10(1.0 / mse) if mse > 0 else math.inf


def held_out_psnr(trainer: Trainer, tests: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """PSNR over every held-out pixel (the mean squared error pooled over the images)."""
    squared, count = 0.0, 0
    for image, target in tests:
        prediction = trainer.predict(image[None])[0]
        squared += float(torch.sum((prediction - target) ** 2))
        count += target.numel()
    return 10 * math.log10(count / squared)


def steps_per_second(pairs: ImagePairs, settings: TrainingSettings, steps: int) -> float:
    """Speed of ``steps`` steps after two warm-up steps, in a throwaway job."""
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(pairs, settings, job_dir=folder)
        trainer.step()
        trainer.step()
        started = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        if settings.device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps / (time.perf_counter() - started)


def main() -> None:
    defaults = TrainingSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between reports")
    parser.add_argument("--network", default=defaults.network)
    parser.add_argument("--crop", type=int, default=defaults.crop_size)
    parser.add_argument("--batch", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--schedule", default=defaults.schedule)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train = [photo(name) for name in TRAIN_PHOTOS]
    tests = [(image, the_look(image)) for image in (photo(name) for name in TEST_PHOTOS)]
    pairs = ImagePairs(
        [
            FramePair(input=image.numpy(), target=the_look(image).numpy(), name=name)
            for name, image in zip(TRAIN_PHOTOS, train, strict=True)
        ],
        colourspace="srgb",
    )
    base = TrainingSettings(
        network=args.network,
        crop_size=args.crop,
        batch_size=args.batch,
        learning_rate=args.lr,
        schedule=args.schedule,
        checkpoint_interval=0,
        validation_interval=0,
        contact_sheet_interval=0,
    )
    nothing = 10 * math.log10(
        sum(t.numel() for _, t in tests) / sum(float(torch.sum((i - t) ** 2)) for i, t in tests)
    )
    print(
        f"task: sharpen + grade; train on {', '.join(TRAIN_PHOTOS)}; "
        f"test on {', '.join(TEST_PHOTOS)}"
    )
    print(
        f"CPU: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}"
    )
    print(
        f"settings: network={base.network} crop={base.crop_size} batch={base.batch_size} "
        f"lr={base.learning_rate} schedule={base.schedule} flips={base.flips} "
        f"rotations={base.rotations}"
    )
    warmup = steps_per_second(pairs, base, 5)
    budget = args.minutes * 60
    steps = max(10, int(warmup * budget))
    settings = TrainingSettings.from_dict({**base.to_dict(), "steps": steps})
    print(f"warm-up speed {warmup:.2f} steps/s: the job is {steps} steps\n")
    print(f"{'time':>6}  {'steps':>6}  {'loss':>8}  {'PSNR':>7}  {'nothing':>7}  {'gain':>7}")

    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(pairs, settings, job_dir=folder, name="sharpen_grade")
        trained = 0.0
        next_report = args.every
        progress = None
        while trained < budget and not trainer.finished:
            started = time.perf_counter()
            progress = trainer.step()
            trained += time.perf_counter() - started
            if trained >= next_report or trained >= budget or trainer.finished:
                quality = held_out_psnr(trainer, tests)
                print(
                    f"{trained:5.0f}s  {progress.step:6d}  {progress.train_loss:8.4f}  "
                    f"{quality:6.2f}  {nothing:6.2f}  {quality - nothing:+6.2f} dB",
                    flush=True,
                )
                next_report += args.every
        cpu_speed = trainer.step_count / trained
    print(f"\nCPU: {cpu_speed:.2f} steps/s over the run", end=" ")
    print(f"({trainer.step_count} steps in {trained:.0f} s)")
    if torch.cuda.is_available():
        cuda = TrainingSettings.from_dict({**base.to_dict(), "device": "cuda", "steps": 100})
        speed = steps_per_second(pairs, cuda, 30)
        print(f"CUDA ({torch.cuda.get_device_name()}): {speed:.1f} steps/s")
    else:
        print("CUDA: no GPU here")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
