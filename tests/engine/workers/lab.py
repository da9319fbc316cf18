"""The test plug-in of the worker tests, and a process host serving it.

One model folder (``lab/model.py``, written by :func:`write_lab`) declares small models that
each show one thing about where models run: ``double`` (a result computed in the worker),
``echo`` (an output that *is* its input; ``mirror`` is the same, but cacheable), ``stash``
(keeps a reference to its first input frame, and returns that frame every time),
``batcher`` (runs batches in one call and says how big), ``sleeper`` (sleeps; declares a
1-second timeout), ``pause`` (sleeps, then copies its input; cacheable), ``hold`` (waits until the
file its ``until`` knob names exists, after creating ``<until>.started``), ``slowsetup`` (its setup
takes 1.5 s), ``crash`` (dies as its ``how`` knob says) and ``hog`` (allocates past its declared 300
MiB). Every model but ``mirror`` and ``pause`` reports the process id that ran it, and none but
those two is cacheable.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import InferenceRequest, build_request
from frameserve.engine.runner import Runner
from frameserve.engine.workers.processes import ProcessHost
from frameserve.engine.workers.supervisor import WorkerSettings

#: Upper bound on any wait in these tests: a guard against hanging, never a speed target.
HANG_GUARD = 20.0

LAB_SOURCE = textwrap.dedent(
    '''
    """Models of the worker tests (tests/engine/workers/lab.py)."""

    import ctypes
    import os
    import sys
    import time

    import torch

    from frameserve import (
        ChoiceKnob,
        FloatKnob,
        ImageSpec,
        Model,
        Prediction,
        ResultObject,
        StringKnob,
    )


    def answer(frame, **fields):
        fields["pid"] = os.getpid()
        return Prediction(frames={"image": frame}, objects=[ResultObject("ran", fields)])


    class _Lab(Model):
        cacheable = False
        inputs = (ImageSpec("image", 3),)
        outputs = (ImageSpec("image", 3),)


    class Double(_Lab):
        id = "double"

        def predict(self, frames, knobs):
            return answer(frames["image"] * 2.0)


    class Echo(_Lab):
        id = "echo"

        def predict(self, frames, knobs):
            return answer(frames["image"])


    class Mirror(_Lab):
        id = "mirror"
        cacheable = True

        def predict(self, frames, knobs):
            return frames["image"]


    class Stash(_Lab):
        id = "stash"
        kept = []

        def predict(self, frames, knobs):
            if not self.kept:
                self.kept.append(frames["image"])
            return answer(self.kept[0] * 1.0)


    class Batcher(_Lab):
        id = "batcher"
        max_batch_size = 4

        def predict(self, frames, knobs):
            return answer(frames["image"] * 3.0, size=1)

        def predict_batch(self, frames, knobs):
            images = frames["image"] * 3.0
            return [answer(image, size=len(images)) for image in images]


    class Sleeper(_Lab):
        id = "sleeper"
        timeout_s = 1.0
        knobs = (FloatKnob("seconds", default=0.0, min=0.0, max=60.0),)

        def predict(self, frames, knobs):
            time.sleep(knobs["seconds"])
            return answer(frames["image"] + 0.0)


    class Pause(_Lab):
        id = "pause"
        cacheable = True
        knobs = (FloatKnob("seconds", default=0.0, min=0.0, max=60.0),)

        def predict(self, frames, knobs):
            time.sleep(knobs["seconds"])
            return frames["image"] + 0.0


    class Hold(_Lab):
        id = "hold"
        knobs = (StringKnob("until", default=""),)

        def predict(self, frames, knobs):
            open(knobs["until"] + ".started", "w").close()
            end = time.monotonic() + 20
            while not os.path.exists(knobs["until"]) and time.monotonic() < end:
                time.sleep(0.01)
            return answer(frames["image"] + 0.0)


    class SlowSetup(_Lab):
        id = "slowsetup"

        def setup(self, device):
            time.sleep(1.5)

        def predict(self, frames, knobs):
            return answer(frames["image"] + 0.0)


    class Crash(_Lab):
        id = "crash"
        knobs = (ChoiceKnob("how", default="none", choices=("none", "exit", "segv", "abort")),)

        def predict(self, frames, knobs):
            if knobs["how"] == "exit":
                sys.exit(3)
            if knobs["how"] == "segv":
                ctypes.string_at(0)
            if knobs["how"] == "abort":
                os.abort()
            return answer(frames["image"] + 0.0)


    class Hog(_Lab):
        id = "hog"
        memory_limit_mb = 300

        def predict(self, frames, knobs):
            hoard = []
            while len(hoard) < 40:
                hoard.append(b"x" * (50 << 20))
                time.sleep(0.01)
            time.sleep(30)
    '''
)


def write_lab(root: Path) -> Path:
    """Write the lab plug-in under ``root``; return the models folder."""
    folder = root / "lab"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(LAB_SOURCE)
    return root


def open_host(root: Path, **settings: object) -> tuple[ModelRegistry, ProcessHost, Metrics]:
    """A registry of the lab models (no built-ins) and a process host running them."""
    registry = ModelRegistry([write_lab(root)], builtins=False)
    metrics = Metrics()
    options: dict[str, object] = {"model_timeout": 10.0, "max_crashes": 2, "crash_window": 60.0}
    options.update(settings)
    host = ProcessHost(Runner(registry), settings=WorkerSettings(**options), metrics=metrics)  # type: ignore[arg-type]
    return registry, host, metrics


def constant(value: float, *, height: int = 8, width: int = 8) -> torch.Tensor:
    """A plain ``(3, H, W)`` frame of ``value`` (not from the host's allocator)."""
    return torch.full((3, height, width), float(value))


def shared(host: ProcessHost, value: float, *, height: int = 8, width: int = 8) -> torch.Tensor:
    """A ``(3, H, W)`` frame of ``value`` in the host's shared memory, as the doors make them."""
    array = host.allocate_frame((3, height, width))
    array[...] = value
    return torch.from_numpy(array)


def request(
    registry: ModelRegistry, model: str, frame: torch.Tensor, **knobs: object
) -> InferenceRequest:
    """A checked request for ``model`` on ``frame``."""
    return build_request(registry.get(model), [frame], knobs, **_deadline(knobs))


def _deadline(knobs: dict[str, object]) -> dict[str, object]:
    deadline = knobs.pop("deadline", None)
    return {} if deadline is None else {"deadline": deadline}


def ran_in(result: object) -> int:
    """The process id the lab model reported it ran in."""
    objects = result.objects  # type: ignore[attr-defined]
    return int(objects[0].records[0]["pid"])


def wait_until(condition: Callable[[], object], *, what: str, timeout: float = HANG_GUARD) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (and been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def worker_children() -> list[int]:
    """The process ids of this process's children that are worker processes (spares too)."""
    found = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"frameserve.engine.workers.process" in command:
                found.append(int(pid))
    return found


def frame_mappings() -> int:
    """How many shared-memory frame segments this process has mapped now."""
    with open("/proc/self/maps") as maps:
        return sum("frameserve-frames" in line for line in maps)


def values(result: object, name: str = "image") -> np.ndarray:
    """An output frame of a result as a numpy array (a copy)."""
    return result.frames[name].numpy().copy()  # type: ignore[attr-defined]
