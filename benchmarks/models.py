"""Time per frame of every built-in model at 1080p and 4K, printed as a table.

Each model runs through :meth:`frameserve.engine.runner.Runner.run`, exactly as the server runs it:
colour conversion to and from the model's colourspace, padding, tiling of big frames, output
checks. The frames are a real photograph (scikit-image's astronaut) resized to the frame size;
a temporal model gets the same photo shifted by a few pixels for its neighbour frames, and a
model with several inputs (``retime``'s ``a`` and ``b``) a shifted copy for each. Knobs
keep their defaults. The first run of each model (its setup: loading weights) is timed apart
and not counted.

Models whose weights the TD provides (``motion_vectors_spynet``) run only when their weights
variable is set; the table says why one was skipped. The figures are for the device named
(``--device cuda`` on a GPU machine); on a 2-core CPU, a 4K frame through a large network takes
minutes, so ``--sizes 1080p`` or ``--models`` narrow the run.

Usage::

    python benchmarks/models.py [--device cpu|cuda] [--sizes 1080p,4k] [--models a,b]
                                [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

from frameserve.catalogue.registry import ModelRegistry  # noqa: E402
from frameserve.engine.request import build_request  # noqa: E402
from frameserve.engine.runner import Runner  # noqa: E402
from frameserve.errors import FrameServeError  # noqa: E402
from frameserve.plugin.model import ModelSpec  # noqa: E402

SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160)}
#: Pixels a neighbouring frame is shifted by, per frame of distance (a slow pan).
PAN = 3


def plate(width: int, height: int, shift: int = 0) -> torch.Tensor:
    """The astronaut as a (3, height, width) float32 frame in 0-1, panned ``shift`` pixels."""
    photo = torch.from_numpy(skimage.data.astronaut().astype(np.float32) / 255.0)
    frame = F.interpolate(
        photo.permute(2, 0, 1)[None], size=(height, width), mode="bilinear", align_corners=False
    )[0]
    return torch.roll(frame, shifts=shift, dims=2).contiguous()


def frames_for(spec: ModelSpec, width: int, height: int) -> dict[str, torch.Tensor]:
    """One frame per required input: the plate, or a panned copy for a neighbour frame."""
    frames = {}
    for index, image in enumerate(spec.required_inputs):
        _, offset = spec.input_source(image.name)
        # A neighbour frame is panned by its distance, a later input by its place (retime's b).
        frame = plate(width, height, PAN * (offset or index))
        if image.channels != 3:
            frame = frame.mean(0, keepdim=True).expand(image.channels, -1, -1).contiguous()
        frames[image.name] = frame
    return frames


def time_model(runner: Runner, spec: ModelSpec, size: str, repeats: int) -> tuple[float, float]:
    """Return (first run, median of ``repeats`` later runs) in seconds for one frame size."""
    width, height = SIZES[size]
    request = build_request(spec, frames_for(spec, width, height), {})
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        runner.run(request)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times[0], float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1080p,4k")
    parser.add_argument("--models", default="", help="comma-separated ids (default: all)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}; choose from {', '.join(SIZES)}")
    registry = ModelRegistry(builtins=True)
    runner = Runner(registry, device=args.device)
    wanted = [m for m in args.models.split(",") if m]
    entries = [e for e in registry.available() if e.builtin and (not wanted or e.id in wanted)]
    print(f"device: {runner.device}; torch threads: {torch.get_num_threads()}")
    print("| model | " + " | ".join(f"{s} (s/frame)" for s in sizes) + " | first run incl. setup |")
    print("| --- |" + " --- |" * (len(sizes) + 1))
    for entry in sorted(entries, key=lambda e: e.id):
        spec = entry.spec
        assert spec is not None
        cells, first_runs = [], []
        for size in sizes:
            try:
                first, median = time_model(runner, spec, size, args.repeats)
            except FrameServeError as exc:
                cells.append(f"skipped: {str(exc)[:70]}")
                continue
            cells.append(f"{median:.3f}")
            first_runs.append(f"{first:.2f}")
        print(f"| `{spec.id}` | " + " | ".join(cells) + f" | {', '.join(first_runs)} |", flush=True)
        runner.unload(spec.id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
