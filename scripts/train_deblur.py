"""Train the built-in ``deblur`` model's weights, and score them on held-out photos.

Reproduces ``src/frameserve/weights/deblur/deblur.pth`` (see ``docs/models/restoration.md``):
frameserve's trainer teaches a restoration U-Net (kind ``"restoration"``, size ``"large"``) to
undo the motion blur that :class:`~frameserve.training.degradations.MotionBlur` applies afresh
to every crop of clean scikit-image photos, *being told the blur's path* (its length,
direction and turn, as constant channels beside the image; the ``deblur`` model's knobs): paths
of 2 to 16 pixels, half straight and half curved (turning up to 2 radians), speed varying up to
1.3x along them (which it is not told), blurred in linear light, then up to 2/255 of Gaussian
noise. Seeded: the same seed, steps and number of torch threads give the same weights, bit for
bit, on the CPU.

At the end it prints the PSNR of the held-out photos (``astronaut``, ``camera``; never trained
on) blurred along a straight 11-pixel path at 30 degrees and along a curved 13-pixel path
(heading 100 degrees at its middle, turning 1.5 radians), image coordinates (y down), in linear
light, no noise, before and after deblurring with that path (pixels the blur could not reach,
near the edges, are left out).

Usage::

    python scripts/train_deblur.py [--steps 16000] [--seed 0] [--job /tmp/deblur-job]
        [--out src/frameserve/weights/deblur/deblur.pth]

A job folder that holds checkpoints is resumed (delete it to start again).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from restoration_training import (
    HELD_OUT_PHOTOS,
    REPO_ROOT,
    TRAIN_PHOTOS,
    photo,
    psnr,
    run_network,
    save_weights,
    train,
)

from frameserve.networks.motion_blur import PATH_CODE_CHANNELS, blur, motion_kernel, path_code
from frameserve.training import NetworkSpec, TrainingSettings
from frameserve.training.degradations import MotionBlur

#: Grass and gravel are left out: blurred, their fine grain is gone for good, and learning to
#: guess it back only adds noise to the gradients.
DEBLUR_PHOTOS = tuple(name for name in TRAIN_PHOTOS if name not in ("grass", "gravel"))

#: The held-out blurs: (label, length in pixels, angle at the middle in degrees (image
#: coordinates, y down), turn in radians).
TEST_BLURS = (("straight 11 px at 30 deg", 11.0, 30.0, 0.0), ("curved 13 px", 13.0, 100.0, 1.5))


def held_out_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The held-out photos under each test blur: (label, blurred, sharp, the path's code);
    the edges the blur could not reach are cut."""
    cases = []
    for name in HELD_OUT_PHOTOS:
        clean = torch.from_numpy(photo(name))[None]
        for label, length, degrees, turn in TEST_BLURS:
            angle = math.radians(degrees)
            kernel = motion_kernel(length, angle=angle, turn=turn)
            blurred = blur(clean, torch.from_numpy(kernel)[None])
            margin = (kernel.shape[0] - 1) // 2
            sharp = clean[..., margin:-margin, margin:-margin]
            cases.append((f"{name}, {label}", blurred, sharp, path_code(length, angle, turn)))
    return cases


def score(network: torch.nn.Module) -> list[dict[str, object]]:
    """Print and return the held-out PSNR before and after deblurring."""
    rows = []
    for label, blurred, sharp, code in held_out_cases():
        restored = run_network(network, blurred, code)
        before, after = psnr(blurred, sharp), psnr(restored, sharp)
        rows.append({"case": label, "input_psnr": before, "output_psnr": after})
        print(f"{label}: input {before:.2f} dB -> output {after:.2f} dB ({after - before:+.2f} dB)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--size", default="large")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss", default="l1")
    parser.add_argument("--job", type=Path, default=Path("/tmp/frameserve-train-deblur"))
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "src/frameserve/weights/deblur/deblur.pth"
    )
    args = parser.parse_args()
    network = NetworkSpec(
        kind="restoration", size=args.size, in_channels=3 + PATH_CODE_CHANNELS, out_channels=3
    )
    settings = TrainingSettings(
        crop_size=args.crop,
        batch_size=args.batch,
        steps=args.steps,
        learning_rate=args.lr,
        gradient_clip=args.clip,
        schedule="cosine",
        loss=args.loss,
        seed=args.seed,
        checkpoint_interval=500,
        keep_checkpoints=2,
        validation_interval=500,
        validation_crops=16,
        contact_sheet_interval=0,
    )
    degradation = MotionBlur(lengths=(2.0, 16.0), max_speed_warp=1.3, tell_path=True)
    trainer = train(
        name="deblur",
        network=network,
        settings=settings,
        degradation=degradation,
        job_dir=args.job,
        train_photos=DEBLUR_PHOTOS,
    )
    scores = score(trainer.network)
    save_weights(
        trainer.network,
        args.out,
        {
            "network": network.to_dict(),
            "settings": settings.to_dict(),
            "degradation": degradation.describe(),
            "train_photos": list(DEBLUR_PHOTOS),
            "held_out_psnr": scores,
            "torch": str(torch.__version__),
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
