"""What the dashboard's pages show, read from what the engine and the training queue know.

Each function returns plain JSON-ready data for one page; the event stream
(:mod:`frameserve.serve.dashboard.events`) sends it whenever it changes::

    overview(engine, device="auto", user=user, started=t)  # health, devices, queue, requests
    models(engine)                                  # every model, its knobs, state, licence
    jobs(training, user=user, history=history)      # training jobs with their loss curves

Figures come from the engine's metrics (``frameserve_*``, as ``/metrics`` shows them), its
queue depths, its models' worker states, the calls each model runs now
(:meth:`Engine.running <frameserve.engine.engine.Engine.running>`: a model is *busy* while it
runs one, *idle* while its worker is up and runs none, *stopped* while no worker of it runs)
and its ring of recent requests
(:class:`~frameserve.engine.recent.RecentRequests`). Who sent a request is shown to a ``td``
or ``admin`` only (``/metrics`` needs ``td`` for the same reason); an artist sees their own
name and ``someone`` for the others.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from typing import Any

from frameserve import __version__
from frameserve.catalogue.entries import ModelEntry
from frameserve.engine.devices import allocated_bytes, resolve_device, total_memory
from frameserve.engine.engine import Engine
from frameserve.engine.request import Priority
from frameserve.engine.workers.host import ModelMemory
from frameserve.errors import FrameServeError
from frameserve.plugin.licences import cleared_for_commercial_use, describe_weights
from frameserve.serve.auth.users import Role, User
from frameserve.training.jobs import TrainingJobs

__all__ = ["LossHistory", "jobs", "models", "overview", "read_metrics"]

#: How many recent requests the overview sends.
RECENT_SHOWN = 30
_SAMPLE = re.compile(r"^([a-z_:]+)(\{[^}]*\})? (\S+)$")


def read_metrics(text: str) -> dict[str, float]:
    """Sum the samples of each metric in Prometheus ``text`` by name and labels (as written).

    ``{"frameserve_cache_lookups_total{result=\"hit\"}": 3.0, ...}``; also each name alone,
    summed over its labels.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, number = match.groups()
        try:
            value = float(number)
        except ValueError:
            continue
        values[name + (labels or "")] = value
        if labels:
            values[name] = values.get(name, 0.0) + value
    return values


def overview(engine: Engine, *, device: str, user: User, started: float) -> dict[str, Any]:
    """The overview page: health, devices, workers, queue, cache and the recent requests.

    ``started``: when the server started (Unix seconds; the page counts the uptime itself, so
    that an idle server's overview does not change every second).
    """
    metrics = read_metrics(engine.metrics_text())
    hits = metrics.get('frameserve_cache_lookups_total{result="hit"}', 0.0)
    misses = metrics.get('frameserve_cache_lookups_total{result="miss"}', 0.0)
    activity = {(a.model, a.version): a for a in engine.running()}
    workers = []
    for entry in engine.catalogue():
        if isinstance(entry, ModelEntry):
            status = engine.status(entry)
            now = activity.get((entry.id, entry.version))
            running = now.running if now is not None else 0
            up = now.worker_up if now is not None else False
            workers.append(
                {"model": entry.id, "version": entry.version, "state": status.state.value}
                | {"worker": status.worker, "running": running, "up": up}
                | {"activity": "busy" if running else "idle" if up else "stopped"}
            )
    sees_users = user.may(Role.TD)
    recent = [
        r.to_dict() | {"user": r.user if sees_users or r.user == user.name else "someone"}
        for r in engine.recent.latest(RECENT_SHOWN)
    ]
    return {
        "health": {
            "ready": engine.is_ready() and engine.can_serve(),
            "live": True,
            "version": __version__,
            "started": started,
        },
        "devices": _devices(device),
        "workers": workers,
        "queue": {p.name.lower(): engine.queue_depth(p) for p in Priority},
        "models_loaded": int(metrics.get("frameserve_models_loaded", 0)),
        "model_memory_bytes": int(metrics.get("frameserve_model_memory_bytes", 0)),
        "cache": {
            "hits": int(hits),
            "misses": int(misses),
            "hit_rate": hits / (hits + misses) if hits + misses else None,
            "bytes": int(metrics.get("frameserve_cache_bytes", 0)),
            "entries": int(metrics.get("frameserve_cache_entries", 0)),
        },
        "minutes": engine.recent.per_minute(),
        "recent": recent,
        "sequence": engine.recent.sequence,
    }


def _devices(device: str) -> list[dict[str, Any]]:
    """The device models run on, with its memory where it can be told, and the host's."""
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    found: list[dict[str, Any]] = [
        {
            "name": "host",
            "kind": "cpu",
            "cores": os.cpu_count() or 0,
            "memory_total_bytes": pages * os.sysconf("SC_PAGE_SIZE") if pages else None,
        }
    ]
    try:
        resolved = resolve_device(device)
    except FrameServeError as exc:
        return [*found, {"name": device, "kind": "unknown", "error": str(exc)}]
    if resolved.type != "cpu":
        found.append(
            {
                "name": str(resolved),
                "kind": resolved.type,
                "memory_total_bytes": total_memory(resolved),
                "memory_used_bytes": allocated_bytes(resolved),
            }
        )
    else:
        found[0]["models_run_here"] = True
    return found


def models(engine: Engine) -> list[dict[str, Any]]:
    """The models page: every model version, loaded or failed, with all it declares.

    Also whether it is set up now (``loaded``) and the memory it holds (``memory_bytes``: its
    worker process's private memory with isolation on, to the MiB so that the page is not
    sent again for every page the worker touches; in-process, its measured size) and its
    parameters' and buffers' share of that (``model_bytes``); both ``None`` when not loaded
    (:meth:`Engine.model_memory <frameserve.engine.engine.Engine.model_memory>`).
    """
    described: list[dict[str, Any]] = []
    for entry in engine.catalogue():
        if not isinstance(entry, ModelEntry):
            described.append(
                {
                    "name": entry.id,
                    "version": entry.version,
                    "state": "failed",
                    "error": entry.error,
                    "builtin": entry.builtin,
                    "source": str(entry.source),
                    "loaded": False,
                    "memory_bytes": None,
                    "model_bytes": None,
                }
            )
            continue
        status = engine.status(entry)
        memory = engine.model_memory(entry)
        spec = entry.spec
        data = spec.describe()
        data.update(
            name=entry.id,
            version=entry.version,
            state=status.state.value,
            error=status.error,
            worker=status.worker,
            builtin=entry.builtin,
            source=str(entry.source),
            weights=describe_weights(spec.weights),
            commercial_use=cleared_for_commercial_use(spec.weights),
            loaded=memory.loaded,
            memory_bytes=_held(memory),
            model_bytes=memory.model_bytes if memory.loaded else None,
        )
        described.append(data)
    return described


def _held(memory: ModelMemory) -> int | None:
    """The memory a model holds as the page shows it: a worker's to the MiB (at least 1 MiB),
    a model's own measured size exactly; ``None`` when it is not loaded."""
    if not memory.loaded:
        return None
    if memory.process_bytes is None:
        return memory.model_bytes
    mib = 1 << 20
    return max(round(memory.process_bytes / mib), 1) * mib


class LossHistory:
    """The loss curve of each training job, sampled whenever a dashboard looks (bounded).

    Job statuses carry the newest losses only; this keeps ``(step, loss, validation_loss)``
    points as they are seen, at most ``points`` per job and ``max_jobs`` jobs, for the live
    stream. The whole curve is the job's own (``GET /v2/training/jobs/{name}/losses``, from
    :mod:`frameserve.training.jobs.losses`): the page loads it when a job is selected and
    extends it with these points.
    """

    def __init__(self, *, points: int = 2000, max_jobs: int = 64) -> None:
        self._lock = threading.Lock()
        self._points = points
        self._max_jobs = max_jobs
        self._curves: dict[str, deque[tuple[int, float | None, float | None]]] = {}

    def note(self, status: dict[str, Any]) -> list[tuple[int, float | None, float | None]]:
        """Add the point ``status`` (a job status dict) shows; return the job's curve."""
        name, step = status["name"], int(status["step"])
        point = (step, status["loss"], status["validation_loss"])
        with self._lock:
            curve = self._curves.get(name)
            if curve is None:
                if len(self._curves) >= self._max_jobs:
                    self._curves.pop(next(iter(self._curves)))
                curve = self._curves[name] = deque(maxlen=self._points)
            if point[1] is not None and (not curve or curve[-1][0] < step):
                curve.append(point)
            elif curve and curve[-1][0] == step and curve[-1] != point:
                curve[-1] = point
            return list(curve)


def jobs(training: TrainingJobs, *, user: User, history: LossHistory) -> list[dict[str, Any]]:
    """The training page: the jobs ``user`` may see (a td sees all), with loss curves."""
    shown = []
    for status in training.jobs():
        data = status.to_dict()
        if not user.may(Role.TD) and data["owner"] != user.name:
            continue
        data["curve"] = history.note(data)
        data["has_contact_sheet"] = training.contact_sheet(data["name"]) is not None
        shown.append(data)
    return shown
