"""Benchmark tiling on the CPU: 4K and 8K frames through a conv net, tiled and untiled, one run.

The model is ``conv32`` (``benchmarks/models/conv32``): 7 convolutions of 3x3 with 32 channels,
receptive field radius 7, overlap 8. ``conv32`` runs a frame in one piece; ``conv32_tiled`` is
the same network in tiles of at most 1024 pixels, blended back by the runner. Each variant runs
in a process of its own, through :class:`frameserve.engine.runner.Runner` on a random RGB float32
frame, and reports:

- **s/frame**: the median wall time of ``Runner.run`` (padding, tiling, blending included);
- **peak RSS**: the process's high-water mark (``VmHWM`` in ``/proc/self/status``), and how far
  it rose above the process after the model was set up (torch and weights excluded), next to
  the size of one frame, the floor (input plus output: two frames);
- **max diff**: the largest difference between the tiled and untiled outputs over a sample grid
  of pixels (the tiled result must match: the overlap covers the receptive field).

Usage::

    python benchmarks/tiling.py [--sizes 4k,8k] [--repeats 1] [--tile 1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).resolve().parent / "models"
SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160), "8k": (7680, 4320)}
#: Every SAMPLE-th row and column of the output is compared between variants.
SAMPLE = 61


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(model_id: str, width: int, height: int, repeats: int) -> dict[str, object]:
    """Run ``model_id`` on one frame ``repeats`` times in this process; return measurements."""
    sys.path.insert(0, str(REPO_ROOT / "src"))
    import torch

    from frameserve.catalogue.registry import ModelRegistry
    from frameserve.engine.request import build_request
    from frameserve.engine.runner import Runner
    from frameserve.engine.tiling import TileGrid

    registry = ModelRegistry([MODELS], builtins=False)
    spec = registry.get(model_id).spec
    assert spec is not None
    runner = Runner(registry, device="cpu")
    runner.run(build_request(spec, [torch.rand(3, 64, 64)], {}))  # setup, warm-up
    baseline = _status_bytes("VmRSS")
    generator = torch.Generator().manual_seed(7)
    frame = torch.rand(3, height, width, generator=generator)
    request = build_request(spec, [frame], {})
    seconds = []
    output = frame
    for _ in range(repeats):
        started = time.perf_counter()
        output = runner.run(request).frames["image"]
        seconds.append(time.perf_counter() - started)
    needs = spec.spatial
    grid = TileGrid(
        height,
        width,
        multiple=needs.size_multiple,
        overlap=needs.overlap,
        max_tile=needs.max_size,
    )
    return {
        "seconds": statistics.median(seconds),
        "tiles": len(grid),
        "tile": f"{grid.tile_width}x{grid.tile_height}",
        "peak": _status_bytes("VmHWM"),
        "baseline": baseline,
        "threads": torch.get_num_threads(),
        "sample": output[:, ::SAMPLE, ::SAMPLE].flatten().tolist(),
    }


@dataclass(frozen=True)
class Measured:
    """What one variant's process reported."""

    seconds: float
    tiles: int
    tile: str
    peak: int
    baseline: int
    threads: int
    sample: list[float]


def measure(model_id: str, width: int, height: int, repeats: int) -> Measured:
    """Run :func:`child` in a fresh process and return what it printed."""
    command = [sys.executable, __file__, "--child", model_id, str(width), str(height)]
    done = subprocess.run(
        [*command, str(repeats)], check=True, capture_output=True, text=True, cwd=REPO_ROOT
    )
    return Measured(**json.loads(done.stdout.splitlines()[-1]))


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


def main() -> None:
    """Measure every size and variant; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4k,8k", help="comma-separated: 1080p, 4k, 8k")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_id, width, height, repeats = args.child
        print(json.dumps(child(model_id, int(width), int(height), int(repeats))))
        return
    header = ("size", "variant", "tiles", "s/frame", "peak RSS", "rise", "frame", "max diff")
    print("{:>6} {:>8} {:>14} {:>8} {:>9} {:>9} {:>9} {:>9}".format(*header))
    threads = 0
    for name in args.sizes.split(","):
        width, height = SIZES[name.strip().lower()]
        frame_bytes = 3 * width * height * 4
        untiled = measure("conv32", width, height, args.repeats)
        tiled = measure("conv32_tiled", width, height, args.repeats)
        for variant, result in (("untiled", untiled), ("tiled", tiled)):
            diff = max(abs(a - b) for a, b in zip(result.sample, untiled.sample, strict=True))
            tiles = f"{result.tiles} x {result.tile}"
            print(
                f"{name:>6} {variant:>8} {tiles:>14} {result.seconds:8.2f} {_gb(result.peak):>9} "
                f"{_gb(result.peak - result.baseline):>9} {_gb(frame_bytes):>9} {diff:9.1e}"
            )
            threads = result.threads
    print(f"CPU threads: {threads}; rise: peak RSS above the process once the model was set up")


if __name__ == "__main__":
    main()
