"""What train_deblur.py and train_denoise.py share: the photos, the split, training, the score.

**Photos.** Only scikit-image's sample photos that ship inside the pip package (no download)
and whose licences are clear (CC0, public domain or "no known copyright restrictions"; see
``src/frameserve/weights/deblur/NOTICE``). Grey photos are made RGB (R = G = B). Photos above
400 pixels also join at half size (averaged in linear light), which doubles the detail each
crop holds.

- **held out, never trained on:** ``astronaut`` and ``camera`` (the tests' photos);
- **validation (monitoring only, never trained on):** ``coffee``;
- **training:** :data:`TRAIN_PHOTOS` (``chelsea``, ``rocket``, ``hubble_deep_field``,
  ``retina``, ``immunohistochemistry``, ``coins``, ``brick``, ``grass``, ``gravel``, ``text``,
  ``cell``; and ``clock`` for denoising).

**Training** goes through frameserve's own :class:`~frameserve.training.Trainer` with a
restoration network and a synthetic degradation (:mod:`frameserve.training.degradations`); the
finished weights are written as a float16 state dict (half the file; the model loads them into
float32) with a JSON sidecar of what made them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from frameserve.engine.tiling import pad_reflect  # noqa: E402
from frameserve.networks.motion_blur import linear_to_srgb, srgb_to_linear  # noqa: E402
from frameserve.networks.restoration import restore_in_range  # noqa: E402
from frameserve.training import (  # noqa: E402
    FramePair,
    ImagePairs,
    NetworkSpec,
    Trainer,
    TrainingProgress,
    TrainingSettings,
)
from frameserve.training.degradations import Degradation  # noqa: E402

#: Held out from training and validation: the photos the tests and the final score use.
HELD_OUT_PHOTOS = ("astronaut", "camera")
#: Monitored during training, never trained on.
VALIDATION_PHOTOS = ("coffee",)
#: Trained on (``clock`` joins for denoising only: it is motion blurred itself).
TRAIN_PHOTOS = (
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "coins",
    "brick",
    "grass",
    "gravel",
    "text",
    "cell",
)


def photo(name: str) -> np.ndarray:
    """Return a scikit-image sample photo as float32 ``(3, H, W)`` sRGB values in 0-1."""
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].transpose(2, 0, 1))


def half_size(image: np.ndarray) -> np.ndarray:
    """Return ``image`` at half its size, 2x2 blocks averaged in linear light."""
    linear = srgb_to_linear(torch.from_numpy(image))[None]
    small = F.avg_pool2d(linear, 2)
    return np.ascontiguousarray(linear_to_srgb(small)[0].numpy())


def photo_pairs(names: tuple[str, ...], *, halves: bool = True) -> list[FramePair]:
    """Return clean ``(input = target)`` pairs of ``names``, with half-size copies."""
    pairs = []
    for name in names:
        image = photo(name)
        pairs.append(FramePair(input=image, target=image, name=name))
        if halves and min(image.shape[1:]) >= 400:
            small = half_size(image)
            pairs.append(FramePair(input=small, target=small, name=f"{name} (half size)"))
    return pairs


def psnr(result: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of values in 0-1 (peak 1), over every value."""
    error = float(torch.mean((result.clamp(0, 1) - target) ** 2))
    return 10.0 * math.log10(1.0 / max(error, 1e-12))


def train(
    *,
    name: str,
    network: NetworkSpec,
    settings: TrainingSettings,
    degradation: Degradation,
    job_dir: Path,
    train_photos: tuple[str, ...] = TRAIN_PHOTOS,
) -> Trainer:
    """Train ``network`` on clean training photos degraded by ``degradation``; return the
    finished trainer (resuming the job in ``job_dir`` if it holds checkpoints)."""
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "1")))  # the shipped weights: 1
    data = ImagePairs(
        photo_pairs(train_photos),
        validation=photo_pairs(VALIDATION_PHOTOS, halves=False),
        colourspace="srgb",
    )
    started = time.perf_counter()

    def report(progress: TrainingProgress) -> None:
        if progress.step % 100 == 0 or progress.step == progress.total_steps:
            validation = progress.validation_loss
            print(
                f"{name}: step {progress.step}/{progress.total_steps} loss "
                f"{progress.train_loss:.5f} validation "
                f"{'-' if validation is None else f'{validation:.5f}'} "
                f"{progress.steps_per_second:.2f} steps/s, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )

    if (job_dir / "checkpoints").is_dir():
        trainer = Trainer.resume(job_dir, data, on_progress=report, degradation=degradation)
    else:
        trainer = Trainer(
            data,
            settings,
            job_dir=job_dir,
            name=name,
            on_progress=report,
            network=network,
            degradation=degradation,
        )
    trainer.run()
    print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    return trainer


def save_weights(network: torch.nn.Module, path: Path, info: dict[str, Any]) -> None:
    """Write ``network``'s weights as float16 to ``path`` and ``info`` beside it (JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to(torch.float16) for key, value in network.state_dict().items()}
    torch.save(state, path)
    path.with_suffix(".json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def evaluate(
    restore: Callable[[torch.Tensor], torch.Tensor],
    cases: list[tuple[str, torch.Tensor, torch.Tensor]],
) -> list[dict[str, Any]]:
    """Print and return the PSNR of each ``(label, degraded, clean)`` case before and after
    ``restore`` (``(1, 3, H, W)`` in, the same out)."""
    rows = []
    for label, degraded, clean in cases:
        with torch.inference_mode():
            restored = restore(degraded)
        before, after = psnr(degraded, clean), psnr(restored, clean)
        rows.append({"case": label, "input_psnr": before, "output_psnr": after})
        print(f"{label}: input {before:.2f} dB -> output {after:.2f} dB ({after - before:+.2f} dB)")
    return rows


def run_network(
    network: torch.nn.Module, frames: torch.Tensor, code: torch.Tensor | None = None
) -> torch.Tensor:
    """Run a restoration network on ``(N, 3, H, W)`` frames of any size as the built-in models
    do: mirrored padding to its size multiple, values outside 0-1 passed through, and the
    ``code`` of what it is told (``(K,)``, e.g. a blur's path) as constant channels."""
    multiple = int(getattr(network, "multiple", 1))
    height, width = frames.shape[-2:]
    rows, cols = -(-height // multiple) * multiple, -(-width // multiple) * multiple
    padded = pad_reflect(frames, rows, cols)

    def told(image: torch.Tensor) -> torch.Tensor:
        if code is None:
            return network(image)  # type: ignore[no-any-return]
        maps = code.to(image)[None, :, None, None].expand(image.shape[0], -1, rows, cols)
        return network(torch.cat([image, maps], dim=1))  # type: ignore[no-any-return]

    network.eval()
    with torch.inference_mode():
        return restore_in_range(told, padded)[..., :height, :width]
