"""Helpers for the scheduler, cache and metrics tests: recording models and a metrics parser.

The test models are a real plug-in (:data:`PLUGIN_SOURCE`) written to a temporary folder and
found by a real :class:`~frameserve.catalogue.registry.ModelRegistry`. Every class of the plug-in
shares one ``state`` object (a class attribute), which a test reaches in-process through
``registry.get("gate").model_class.state``:

- ``runs``: ``(model id, tag knob, time.monotonic(), niceness of the running thread)`` for
  every request a model ran;
- ``batches``: ``(batch size, gain knob, frame shape, time.monotonic())`` for every call of
  the batching model's ``predict`` (size 1) or ``predict_batch``;
- ``started`` / ``release``: the ``gate`` model sets ``started`` when it begins and waits for
  ``release``, so a test holds a worker busy for exactly as long as it needs.

Models: ``gate`` (blocks), ``recorder`` (cacheable, output = input x gain),
``recorder_uncached`` (the same, ``cacheable = False``) and ``batcher`` (``max_batch_size`` 4,
``batch_window_ms`` 200, output = input x gain).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.cache import ResultCache
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import InferenceRequest, Priority, build_request
from frameserve.engine.runner import Runner
from frameserve.engine.scheduler import Scheduler

__all__ = [
    "GATE_TIMEOUT",
    "HANG_GUARD",
    "PLUGIN_SOURCE",
    "Samples",
    "SchedulerRig",
    "constant_frame",
    "http_infer",
    "infer_body",
    "open_rig",
    "parse_metrics",
    "wait_for_sample",
    "wait_until",
    "watch_log",
    "write_plugin",
]

#: Upper bound on any wait in these tests: a guard against hanging, never a speed target.
HANG_GUARD = 10.0

#: Longest a gate waits for its release: a guard against hanging tests, never reached on purpose.
GATE_TIMEOUT = 10.0

PLUGIN_SOURCE = f'''
"""Recording test models (written by tests/support/scheduling.py)."""

import os
import threading
import time

from frameserve import FloatKnob, ImageSpec, IntKnob, Model


def _niceness():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class State:
    """What the models of this plug-in ran, shared by all of them."""

    def __init__(self):
        self.runs = []
        self.batches = []
        self.started = threading.Event()
        self.release = threading.Event()


class _Recording(Model):
    state = State()
    inputs = (ImageSpec("image", 3),)
    outputs = (ImageSpec("image", 3),)
    knobs = (
        IntKnob("tag", default=0, min=0, max=1_000_000),
        FloatKnob("gain", default=1.0, min=0.0, max=100.0),
    )

    def predict(self, frames, knobs):
        self.state.runs.append((self.id, knobs["tag"], time.monotonic(), _niceness()))
        return frames["image"] * float(knobs["gain"])


class Gate(_Recording):
    id = "gate"
    cacheable = False

    def predict(self, frames, knobs):
        self.state.runs.append((self.id, knobs["tag"], time.monotonic(), _niceness()))
        self.state.started.set()
        self.state.release.wait({GATE_TIMEOUT})
        return frames["image"]


class Recorder(_Recording):
    id = "recorder"


class RecorderUncached(_Recording):
    id = "recorder_uncached"
    cacheable = False


class Batcher(_Recording):
    id = "batcher"
    max_batch_size = 4
    batch_window_ms = 200

    def predict(self, frames, knobs):
        image = frames["image"]
        self.state.batches.append((1, knobs["gain"], tuple(image.shape), time.monotonic()))
        return image * float(knobs["gain"])

    def predict_batch(self, frames, knobs):
        batch = frames["image"]
        count = batch.shape[0]
        self.state.batches.append(
            (count, knobs["gain"], tuple(batch.shape[1:]), time.monotonic())
        )
        return [batch[index] * float(knobs["gain"]) for index in range(count)]
'''


def write_plugin(folder: Path) -> Path:
    """Write the recording plug-in into ``folder/recording/model.py``; return ``folder``."""
    plugin = folder / "recording"
    plugin.mkdir(parents=True, exist_ok=True)
    (plugin / "model.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    return folder


def constant_frame(value: float, *, height: int = 8, width: int = 8) -> torch.Tensor:
    """Return a float32 ``(3, H, W)`` frame holding ``value`` plus a small ramp (no two alike)."""
    ramp = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width) / 1000.0
    return (torch.full((3, height, width), float(value)) + ramp).contiguous()


def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` every millisecond until it holds; fail the test after ``timeout``."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(0.001)


# -- Prometheus text format ----------------------------------------------------------------------

_SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^\n]*)\})? (?P<value>[^ \n]+)\Z"
)
_LABEL = re.compile(r'\s*(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\\n]|\\.)*)"\s*(,|\Z)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class Samples:
    """The samples of one scrape: ``value(name, **labels)`` and the ``# TYPE`` of each name."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}

    def value(self, name: str, /, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels``; 0 when it is absent."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def matching(self, name: str, /, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample called ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return {
            found: value
            for (sample, found), value in self.values.items()
            if sample == name and wanted <= found
        }

    def buckets(self, name: str, /, **labels: str) -> list[tuple[float, float]]:
        """The ``(le, count)`` pairs of histogram ``name`` with ``labels``, in bound order."""
        pairs = []
        for found, value in self.matching(f"{name}_bucket", **labels).items():
            rest = dict(found)
            le = rest.pop("le")
            if rest == labels:
                pairs.append((math.inf if le == "+Inf" else float(le), value))
        return sorted(pairs)


def parse_metrics(text: str) -> Samples:
    """Parse the Prometheus text exposition format strictly enough to catch malformed output.

    Raises:
        AssertionError: a line that is neither a comment nor a well-formed sample, a sample
            given twice, or a ``# TYPE`` line of an unknown type.
    """
    samples = Samples()
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if parts[1] == "TYPE":
                assert parts[3] in {"counter", "gauge", "histogram", "summary", "untyped"}, line
                samples.types[parts[2]] = parts[3]
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"malformed sample line: {line!r}"
        labels: dict[str, str] = {}
        text_labels = match["labels"] or ""
        position = 0
        while position < len(text_labels):
            label = _LABEL.match(text_labels, position)
            assert label is not None, f"malformed labels in {line!r}"
            value = re.sub(r"\\.", lambda m: _UNESCAPE.get(m[0], m[0]), label["value"])
            labels[label["key"]] = value
            position = label.end()
        key = (match["name"], frozenset(labels.items()))
        assert key not in samples.values, f"sample given twice: {line!r}"
        samples.values[key] = float(match["value"])
    return samples


def wait_for_sample(metrics: Metrics, name: str, value: float, /, **labels: str) -> Samples:
    """Wait until sample ``name`` with ``labels`` reaches ``value``; return that scrape.

    Front doors count a request just after its reply is sent, so a client that has its reply
    may scrape a moment before the count moves.
    """
    found: list[Samples] = []

    def reached() -> bool:
        found[:] = [parse_metrics(metrics.render())]
        return found[0].value(name, **labels) == value

    wait_until(reached, timeout=HANG_GUARD, what=f"{name}{labels} to reach {value:g}")
    return found[0]


# -- a scheduler on the recording models -----------------------------------------------------


@dataclass
class SchedulerRig:
    """A real registry, runner and scheduler serving the recording plug-in."""

    registry: ModelRegistry
    runner: Runner
    scheduler: Scheduler
    metrics: Metrics
    state: Any

    def request(
        self,
        model: str = "recorder",
        frame: torch.Tensor | None = None,
        *,
        priority: Priority = Priority.INTERACTIVE,
        group: str = "",
        deadline: float | None = None,
        colourspace: str | None = None,
        **knobs: object,
    ) -> InferenceRequest:
        """Build a checked request for ``model`` (frame: a constant frame by default)."""
        spec = self.registry.get(model).spec
        assert spec is not None
        return build_request(
            spec,
            [constant_frame(0.5) if frame is None else frame],
            knobs,
            priority=priority,
            group=group,
            deadline=deadline,
            colourspace=colourspace,
        )

    def hold_worker(self, priority: Priority = Priority.INTERACTIVE) -> Any:
        """Submit a ``gate`` request of ``priority``, wait until it runs; return its future."""
        before = len(self.ran("gate"))
        future = self.scheduler.submit(self.request("gate", priority=priority))
        wait_until(lambda: len(self.ran("gate")) > before, what="the gate request to start")
        return future

    def ran(self, model: str = "recorder") -> list[int]:
        """The tags of the requests ``model`` ran, in the order it ran them."""
        return [tag for ran, tag, *_ in self.state.runs if ran == model]

    def samples(self) -> Samples:
        """Parse the scheduler's metrics now."""
        return parse_metrics(self.metrics.render())

    def close(self) -> None:
        """Release any gate and stop the workers."""
        self.state.release.set()
        self.scheduler.close()


def open_rig(
    folder: Path, *, workers: int = 1, batch_workers: int = 1, cache: ResultCache | None = None
) -> SchedulerRig:
    """Write the plug-in under ``folder`` and start a scheduler on it."""
    registry = ModelRegistry([write_plugin(folder)], builtins=False)
    runner = Runner(registry)
    metrics = Metrics()
    scheduler = Scheduler(
        runner, workers=workers, batch_workers=batch_workers, cache=cache, metrics=metrics
    )
    model_class = registry.get("gate").model_class
    return SchedulerRig(registry, runner, scheduler, metrics, model_class.state)  # type: ignore[union-attr]


# -- front doors -------------------------------------------------------------------------------


def http_infer(
    address: tuple[str, int], model: str, frame: torch.Tensor, parameters: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """POST one ``(C, H, W)`` frame as a JSON ``[H, W, C]`` tensor; return status and JSON."""
    conn = http.client.HTTPConnection(*address, timeout=HANG_GUARD)
    try:
        conn.request(
            "POST",
            f"/v2/models/{model}/infer",
            body=infer_body(frame, parameters),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def infer_body(frame: torch.Tensor, parameters: dict[str, Any]) -> bytes:
    """The JSON body of an infer request for one ``(C, H, W)`` frame (``[N, C, H, W]``: N)."""
    hwc = frame.movedim(-3, -1).numpy()
    tensor = {
        "name": "image",
        "datatype": "FP32",
        "shape": list(hwc.shape),
        "data": hwc.reshape(-1).tolist(),
    }
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


class _LogWatch(logging.Handler):
    def __init__(self, fragment: str) -> None:
        super().__init__(logging.DEBUG)
        self.fragment = fragment
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            self.seen.set()


@contextlib.contextmanager
def watch_log(logger_name: str, fragment: str) -> Iterator[threading.Event]:
    """Yield an event set when ``logger_name`` logs a message containing ``fragment``."""
    logger = logging.getLogger(logger_name)
    handler = _LogWatch(fragment)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
