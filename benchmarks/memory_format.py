"""Benchmark channels-last against contiguous frames for a conv net on the CPU, in one run.

The runner hands channels-last frames to models holding a ``Conv2d``, on the CPU too, because
this measurement says it is faster (``frameserve.engine.runner.CHANNELS_LAST_ON_CPU``). The network
is ``conv32`` from ``benchmarks/models/conv32`` (7 convolutions of 3x3, 32 channels) on a
1920x1080 RGB float32 frame, run directly (no runner), in four arrangements:

- contiguous frame, contiguous weights (PyTorch's default);
- channels-last frame only (what the runner does);
- channels-last weights only; both channels-last.

Each line gives the median seconds per frame and the speed-up over the default, and the largest
difference of its output from the default's.

Usage::

    python benchmarks/memory_format.py [--repeats 3] [--width 1920 --height 1080]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE / "models" / "conv32")]
from model import conv32_net  # noqa: E402


def seconds_per_frame(net: torch.nn.Module, frame: torch.Tensor, repeats: int) -> float:
    """Return the median seconds ``net`` takes on ``frame`` (after one warm-up run)."""
    samples = []
    with torch.inference_mode():
        net(frame)
        for _ in range(repeats):
            started = time.perf_counter()
            net(frame)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    """Measure the four arrangements and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args()
    frame = torch.rand(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(1))
    last = frame.contiguous(memory_format=torch.channels_last)
    plain_net = conv32_net()
    last_net = conv32_net().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = plain_net(frame)
    print(f"conv32 at {args.width}x{args.height} on the CPU, {torch.get_num_threads()} threads")
    baseline = 0.0
    for name, net, x in (
        ("contiguous (default)", plain_net, frame),
        ("channels-last frame", plain_net, last),
        ("channels-last weights", last_net, frame),
        ("both channels-last", last_net, last),
    ):
        seconds = seconds_per_frame(net, x, args.repeats)
        baseline = baseline or seconds
        with torch.inference_mode():
            diff = float((net(x) - reference).abs().max())
        print(f"{name:>22}: {seconds:6.2f} s/frame  x{baseline / seconds:4.2f}  diff {diff:.1e}")


if __name__ == "__main__":
    main()
