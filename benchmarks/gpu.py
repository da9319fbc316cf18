"""Benchmark models on a CUDA GPU: frames per second in float32 and float16, in one run.

Through :meth:`frameserve.engine.runner.Runner.run`, as the server runs them (the frame goes from
the CPU to the GPU and back, float32 on both ends), at 1920x1080 and 3840x2160 RGB:

- ``blur`` (the built-in Gaussian blur, size 5) and ``blur_half`` (the same, declared safe in
  float16: ``benchmarks/models/conv32``);
- ``conv32`` (7 convolutions of 3x3, 32 channels), one request at a time and in batches of 4
  (``Runner.run_batch``);

each with the runner's float16 switch off and on, next to the limit measured in the same run:
copying the frame to the GPU and back (frames per second of the copy alone). On a machine
without CUDA it prints why it skips and exits 0.

Usage::

    python benchmarks/gpu.py [--seconds 2] [--sizes 1080p,4k]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

from frameserve.catalogue.registry import ModelRegistry  # noqa: E402
from frameserve.engine.request import InferenceRequest, build_request  # noqa: E402
from frameserve.engine.runner import Runner  # noqa: E402

MODELS = Path(__file__).resolve().parent / "models"
SIZES = {"1080p": (1920, 1080), "4k": (3840, 2160)}
BATCH = 4


def rate(call: Callable[[], object], frames: int, seconds: float) -> float:
    """Return frames per second of ``call`` (which handles ``frames`` frames), after warm-up."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    runs, started = 0, time.perf_counter()
    while runs < 5 or time.perf_counter() - started < seconds:
        call()
        runs += 1
    torch.cuda.synchronize()
    return runs * frames / (time.perf_counter() - started)


def request_for(runner: Runner, model_id: str, frame: torch.Tensor) -> InferenceRequest:
    spec = runner.registry.get(model_id).spec
    assert spec is not None
    knobs = {"size": 5.0} if spec.knob("size") else {}
    return build_request(spec, [frame], knobs)


def main() -> int:
    """Measure every model, size and precision; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent per figure")
    parser.add_argument("--sizes", default="1080p,4k")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"skipped: PyTorch {torch.__version__} sees no CUDA GPU on this machine")
        return 0
    registry = ModelRegistry([MODELS])
    runners = {
        "float32": Runner(registry, device="cuda", half_precision=False),
        "float16": Runner(registry, device="cuda", half_precision=True),
    }
    device = runners["float32"].device
    print(
        f"{torch.cuda.get_device_name(device)}, PyTorch {torch.__version__}, cuDNN TF32 "
        f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}; frames per second, "
        "CPU float32 in and out"
    )
    print(f"{'model':>14} {'size':>6} {'float32':>9} {'float16':>9} {'copy only':>10}")
    for name in args.sizes.split(","):
        width, height = SIZES[name.strip().lower()]
        frame = torch.rand(3, height, width)
        copy = rate(lambda f=frame: f.to(device).to("cpu"), 1, args.seconds)
        for model_id, batch in (("blur", 1), ("blur_half", 1), ("conv32", 1), ("conv32", BATCH)):
            figures = []
            for runner in runners.values():
                if batch == 1:
                    one = request_for(runner, model_id, frame)
                    figures.append(rate(lambda r=runner, q=one: r.run(q), 1, args.seconds))
                else:
                    many = [request_for(runner, model_id, frame.clone()) for _ in range(batch)]
                    figures.append(
                        rate(lambda r=runner, q=many: r.run_batch(q), batch, args.seconds)
                    )
            label = model_id if batch == 1 else f"{model_id} x{batch}"
            print(f"{label:>14} {name:>6} {figures[0]:9.1f} {figures[1]:9.1f} {copy:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
