"""Benchmark the ``blur`` model next to ``cv2.GaussianBlur`` on the same 1080p float frame.

For each size (the Gaussian's standard deviation in pixels; 2, 5 and 20 by default) one run
times, on the same 1920x1080 RGB float32 frame (scikit-image's astronaut, resized):

- **cv2 default**: ``cv2.GaussianBlur(frame, (0, 0), size)`` on an interleaved ``(H, W, 3)``
  frame, OpenCV's own kernel size (``2 * round(4 * size) + 1`` taps for float frames);
- **cv2 same kernel**: the same call with frameserve's kernel (``2 * ceil(3 * size) + 1``
  taps) and its default edges (``BORDER_REPLICATE``);
- **predict**: the model's ``predict`` on the ``(3, H, W)`` tensor, as a worker calls it;
- **runner**: :meth:`frameserve.engine.runner.Runner.run` with a request built for it (knob
  checks, colour handling, output checks: the server's path without the sockets);
- **torch** (with ``--torch``): the PyTorch implementation, which frames on a GPU take.

The timings are interleaved (one of each per round) so that load from other processes falls
on all of them alike, and the best of ``--repeats`` rounds is reported (as ``timeit`` does:
on a shared machine the minimum is the reproducible figure; the median is printed beside
it). **ratio** is predict (or runner) over the faster of the two OpenCV calls (best times);
the target is at most 1.5.
It also prints the largest difference between predict and the OpenCV call with the same
kernel. With ``--device cuda`` the model's frame is on the GPU (synchronised before the
clock stops); OpenCV still runs on the CPU.

Usage::

    python benchmarks/blur.py [--sizes 2,5,20] [--repeats 7] [--device cpu|cuda] [--torch]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

from frameserve.builtin_models.blur.model import gaussian_blur, kernel_radius  # noqa: E402
from frameserve.catalogue.registry import ModelRegistry  # noqa: E402
from frameserve.engine.request import InferenceResult, build_request  # noqa: E402
from frameserve.engine.runner import Runner  # noqa: E402
from frameserve.plugin.model import ModelSpec  # noqa: E402

WIDTH, HEIGHT = 1920, 1080
TARGET = 1.5


def plate() -> torch.Tensor:
    """The astronaut as a ``(3, 1080, 1920)`` float32 frame in 0-1."""
    photo = torch.from_numpy(skimage.data.astronaut().astype(np.float32) / 255.0)
    frame = F.interpolate(
        photo.permute(2, 0, 1)[None], size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False
    )[0]
    return frame.contiguous()


def interleaved_times(
    timed: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Run each callable once per round (after one warm-up round); times in milliseconds."""
    times: dict[str, list[float]] = {name: [] for name in timed}
    for round_number in range(repeats + 1):
        for name, call in timed.items():
            started = time.perf_counter()
            call()
            sync()
            if round_number:
                times[name].append((time.perf_counter() - started) * 1000.0)
    return times


def run_request(
    runner: Runner, spec: ModelSpec, frame: torch.Tensor, knobs: dict[str, object]
) -> InferenceResult:
    """Build a request for ``frame`` and run it, as the server does for each request."""
    return runner.run(build_request(spec, {"image": frame}, knobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,5,20", help="comma-separated sizes (sigma)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch path")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    frame = plate()
    interleaved = np.ascontiguousarray(frame.permute(1, 2, 0).numpy())  # (H, W, 3) for OpenCV
    model_frame = frame.to(device)
    runner = Runner(ModelRegistry(builtins=True), device=device)
    spec = runner.registry.get("blur").spec
    print(
        f"blur at {WIDTH}x{HEIGHT} RGB float32; device {device}; torch threads "
        f"{torch.get_num_threads()}, OpenCV {cv2.__version__} threads {cv2.getNumThreads()}"
    )
    print(
        "| size | cv2 default, ms best (median) | cv2 same kernel | predict | runner | "
        + ("torch | " if args.torch else "")
        + "ratio predict | ratio runner | max diff | verdict |"
    )
    print("| --- " * (10 if args.torch else 9) + "|")
    all_met = True
    for size in sizes:
        taps = 2 * kernel_radius(size) + 1
        knobs: dict[str, object] = {"size": size}
        request = build_request(spec, {"image": model_frame}, knobs)
        runner.run(request)  # sets the model up
        timed: dict[str, Callable[[], object]] = {
            "cv2 default": partial(cv2.GaussianBlur, interleaved, (0, 0), size),
            "cv2 same": partial(
                cv2.GaussianBlur,
                interleaved,
                (taps, taps),
                size,
                borderType=cv2.BORDER_REPLICATE,
            ),
            "predict": partial(gaussian_blur, model_frame, size, "extend"),
            "runner": partial(run_request, runner, spec, model_frame, knobs),
        }
        if args.torch:
            timed["torch"] = partial(gaussian_blur, model_frame, size, "extend", backend="torch")
        times = interleaved_times(timed, args.repeats, sync)
        ms = {name: min(values) for name, values in times.items()}
        median = {name: statistics.median(values) for name, values in times.items()}
        opencv = min(ms["cv2 default"], ms["cv2 same"])
        ratio_predict, ratio_runner = ms["predict"] / opencv, ms["runner"] / opencv
        same = cv2.GaussianBlur(interleaved, (taps, taps), size, borderType=cv2.BORDER_REPLICATE)
        ours = gaussian_blur(model_frame, size, "extend").permute(1, 2, 0).cpu().numpy()
        diff = float(np.abs(ours - same).max())
        met = ratio_predict <= TARGET and ratio_runner <= TARGET
        all_met &= met
        cells = [
            f"{size:g}",
            f"{ms['cv2 default']:.1f} ({median['cv2 default']:.1f})",
            f"{ms['cv2 same']:.1f} ({median['cv2 same']:.1f})",
            f"{ms['predict']:.1f} ({median['predict']:.1f})",
            f"{ms['runner']:.1f} ({median['runner']:.1f})",
            *([f"{ms['torch']:.1f} ({median['torch']:.1f})"] if args.torch else []),
            f"{ratio_predict:.2f}",
            f"{ratio_runner:.2f}",
            f"{diff:.1e}",
            "met" if met else f"MISSED (target {TARGET}x)",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(
        f"target: predict and runner within {TARGET}x of the faster OpenCV call: "
        + ("met for every size" if all_met else "MISSED for some size")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
