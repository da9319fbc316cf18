"""Benchmark the gateway's overhead on Ray Serve against the single-machine engine.

One run starts two servers in this process over the same ``identity`` model folder, with the
result cache off so every request reaches its model:

- **single machine**: ``--isolation on`` (the model in a worker process, frames in shared
  memory);
- **Ray**: ``--ray`` (the model as a Ray Serve deployment on a local Ray of 2 CPUs started
  here, or the cluster at ``--ray ADDRESS``; frames through Ray's object store).

For each, a 1920x1080 RGB float frame makes the round trip ``--repeats`` times two ways: through
the MLClient door (what an artist's node waits for), and through the engine alone
(``scheduler.submit`` to result: what the model host adds). An identity model computes nothing,
so each time is overhead. Medians are printed with the Ray / single-machine ratio; the target
is at most 2x (issue 18).

Usage::

    python benchmarks/cluster.py                     # local Ray, 1080p, 20 repeats
    python benchmarks/cluster.py --size 3840x2160 --repeats 10 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "src", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from tests.support.node_client import NodeClient, decode_image  # noqa: E402

from frameserve.engine.request import build_request  # noqa: E402
from frameserve.serve.server import FrameServer  # noqa: E402
from frameserve.serve.settings import ServerSettings  # noqa: E402

TARGET = 2.0
IDENTITY = textwrap.dedent(
    '''
    """Returns its input."""

    from frameserve import ImageSpec, Model


    class Identity(Model):
        id = "identity"
        inputs = (ImageSpec("image", channels=3),)
        outputs = (ImageSpec("image", channels=3),)

        def predict(self, frames, knobs):
            return frames["image"]
    '''
)


def measure(server: FrameServer, image: np.ndarray, repeats: int) -> dict[str, float]:
    """Median milliseconds of a door round trip and an engine round trip of ``image``."""
    host, port = server.mlclient_address
    node = NodeClient(host, port, timeout=120.0)
    model = node.model("identity")
    entry = server.registry.get("identity")
    tensor = torch.from_numpy(image)
    for _ in range(3):  # deploy / start the worker, warm the buffers
        reply = node.infer(model, [image])
        assert not reply.HasField("error"), reply.error.msg
    door, engine = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        reply = node.infer(model, [image])
        door.append(time.perf_counter() - start)
        assert not reply.HasField("error"), reply.error.msg
        start = time.perf_counter()
        result = server.scheduler.submit(build_request(entry, [tensor], {})).result(120.0)
        engine.append(time.perf_counter() - start)
        assert result.frames["image"].shape == tensor.shape
    np.testing.assert_array_equal(decode_image(reply.r2.images[0]), image)
    return {
        "door_ms": 1000 * statistics.median(door),
        "engine_ms": 1000 * statistics.median(engine),
    }


def main() -> int:
    """Run the benchmark; print the figures (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", default="auto", metavar="ADDRESS")
    parser.add_argument("--size", default="1920x1080", metavar="WxH")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    width, height = (int(part) for part in args.size.lower().split("x"))
    image = np.random.default_rng(0).uniform(0, 1, (3, height, width)).astype(np.float32)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        (models / "identity").mkdir(parents=True)
        (models / "identity" / "model.py").write_text(IDENTITY)
        common: dict[str, object] = {
            "port": 0,
            "http_port": None,
            "model_folders": (models,),
            "builtin_models": False,
            "cache_bytes": 0,
            "reload_interval": None,
            "device": "cpu",
        }
        runs = {"single machine (isolation on)": {}, f"Ray ({args.ray})": {"ray_address": args.ray}}
        for name, extra in runs.items():
            if extra.get("ray_address") == "auto":
                import ray

                ray.init(num_cpus=2, include_dashboard=False, namespace="frameserve-bench")
            server = FrameServer(ServerSettings(**{**common, **extra})).start()  # type: ignore[arg-type]
            try:
                results[name] = measure(server, image, args.repeats)
            finally:
                server.close()
    single, ray_run = results.values()
    ratios = {key: ray_run[key] / single[key] for key in single}
    print(f"{width}x{height} identity round trip, median of {args.repeats} (ms):")
    for name, figures in results.items():
        print(f"  {name:34s} door {figures['door_ms']:7.1f}   engine {figures['engine_ms']:7.1f}")
    print(
        f"  ratio Ray / single machine:        door {ratios['door_ms']:7.2f}x  "
        f"engine {ratios['engine_ms']:7.2f}x   (target: door <= {TARGET:g}x)"
    )
    if args.json:
        print(json.dumps({"size": [width, height], "results": results, "ratios": ratios}))
    return 0 if ratios["door_ms"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
