"""Train the built-in ``denoise`` model's weights, and score them on held-out photos.

Reproduces ``src/frameserve/weights/denoise/denoise.pth`` (see ``docs/models/restoration.md``):
frameserve's trainer teaches a restoration U-Net (kind ``"restoration"``, size ``"medium"``)
to remove noise that :class:`~frameserve.training.degradations.SensorNoise` adds afresh to
every crop of clean scikit-image photos: Gaussian noise on sRGB values of 0 to 50/255 (70% of
crops) or Poisson-Gaussian sensor noise in linear light (30%). Seeded: the same seed, steps and
number of torch threads give the same weights, bit for bit, on the CPU.

At the end it prints the PSNR of the held-out photos (``astronaut``, ``camera``; never trained
on) with Gaussian noise of sigma 25/255 on sRGB values (clipped to 0-1, noise seed 0), and with
sensor noise (gain 0.01, read noise 0.005 in linear light), before and after denoising.

Usage::

    python scripts/train_denoise.py [--steps 6000] [--seed 0] [--job /tmp/denoise-job]
        [--out src/frameserve/weights/denoise/denoise.pth]

A job folder that holds checkpoints is resumed (delete it to start again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from restoration_training import (
    HELD_OUT_PHOTOS,
    REPO_ROOT,
    TRAIN_PHOTOS,
    evaluate,
    linear_to_srgb,
    photo,
    run_network,
    save_weights,
    srgb_to_linear,
    train,
)

from frameserve.training import NetworkSpec, TrainingSettings
from frameserve.training.degradations import SensorNoise

#: The Gaussian noise level the held-out score (and the tests) use, on sRGB values.
TEST_SIGMA = 25.0 / 255.0


def held_out_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The held-out photos with sigma 25/255 Gaussian noise, and with sensor noise."""
    cases = []
    generator = torch.Generator().manual_seed(0)
    for name in HELD_OUT_PHOTOS:
        clean = torch.from_numpy(photo(name))[None]
        noise = torch.randn(clean.shape, generator=generator)
        cases.append((f"{name}, sigma 25/255", (clean + TEST_SIGMA * noise).clamp(0, 1), clean))
        linear = srgb_to_linear(clean)
        deviation = (0.01 * linear + 0.005**2).sqrt()
        noise = torch.randn(clean.shape, generator=generator)
        cases.append((f"{name}, sensor noise", linear_to_srgb(linear + deviation * noise), clean))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--size", default="medium")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--job", type=Path, default=Path("/tmp/frameserve-train-denoise"))
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "src/frameserve/weights/denoise/denoise.pth"
    )
    args = parser.parse_args()
    network = NetworkSpec(kind="restoration", size=args.size, in_channels=3, out_channels=3)
    settings = TrainingSettings(
        crop_size=args.crop,
        batch_size=args.batch,
        steps=args.steps,
        learning_rate=args.lr,
        schedule="cosine",
        loss="l1",
        seed=args.seed,
        checkpoint_interval=500,
        keep_checkpoints=2,
        validation_interval=500,
        validation_crops=16,
        contact_sheet_interval=0,
    )
    degradation = SensorNoise()
    trainer = train(
        name="denoise",
        network=network,
        settings=settings,
        degradation=degradation,
        job_dir=args.job,
        train_photos=(*TRAIN_PHOTOS, "clock"),
    )
    scores = evaluate(lambda frames: run_network(trainer.network, frames), held_out_cases())
    save_weights(
        trainer.network,
        args.out,
        {
            "network": network.to_dict(),
            "settings": settings.to_dict(),
            "degradation": degradation.describe(),
            "train_photos": [*TRAIN_PHOTOS, "clock"],
            "held_out_psnr": scores,
            "torch": str(torch.__version__),
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
