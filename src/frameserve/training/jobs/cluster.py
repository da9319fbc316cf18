"""A training job's run on a Ray cluster: a Ray task on a node with the resources it asks for.

With ``frameserve serve --ray ADDRESS`` each run of a job goes to the cluster instead of a
child process of the server; :class:`ClusterRun` follows it with the interface of
:class:`~frameserve.training.jobs.process.JobProcess`, so the queue's runs
(:mod:`frameserve.training.jobs.runs`) treat both alike::

    cluster = ClusterTraining(plan.training)   # the deployment file's [training] table
    run = cluster.run(RunOrder(name="degrain", folder=folder, settings=settings, frames=frames))
    run.start()                                # the task waits in Ray for its resources
    run.follow(stopping=cancelled, busy=interactive_waits, on_progress=report)
    run.close()
    cluster.close()                            # at the server's close

**What runs where.** The task (:func:`train_on_node`) reserves what ``[training]`` asks for
(:class:`~frameserve.engine.cluster.deployments.TrainingResources`: ``num_cpus``,
``num_gpus``, custom ``resources``) and runs in a Ray worker of its own (``max_calls=1``: the
worker ends with the run, so a GPU's memory goes back at once). It is not retried: a run that
crashed its worker would crash the next one too; the job fails and ``resume`` goes on.

**Frames** go once per run through Ray's object store: the server puts the job's decoded
frames (``ray.put``: one copy of each distinct array, no pixel pickled) and the task gets
them on its node (zero-copy there; once over the network from another machine), then copies
them into memory of its own, once, as the trainer needs arrays it may write.

**Files.** The task writes the checkpoints, contact sheets and ``job.json`` into the job's
folder itself, atomically (:mod:`frameserve.media.atomic`), and the server writes
``losses.jsonl`` and ``queue.json`` into the same folder, so the jobs folder
(``--jobs-folder``) must be on storage every node shares, at the same path. A task that does
not find the job's folder fails the run with a message saying so.

**Reports and flags** go through a *hub*: one small Ray actor per server (no CPU reserved,
placed on the node the server's Ray driver joined when it can be), made at the first run.
The task sends its reports to it — ``hello`` (its process id, node id and host),
``started`` (the trainer is built; its step), ``progress`` after every step, ``log``
records — and every 20 ms the server exchanges them for its two flags, *stop* (cancel, or
the server closing) and *busy* (interactive work waits on the server: after each step the
task naps while it is set, at most
:data:`~frameserve.training.jobs.process.MAX_YIELD_SECONDS`). A progress report waits for its
answer, so the flags are at most one step old. Why a task and not an actor: a task holds its
resources only while it runs, waits in Ray's own queue until a node has them, and a worker
that dies fails its result with an error naming how (:meth:`ClusterRun.outcome`); the hub only
relays a few small messages, so it needs no resources of its own and outlives every run.

**Ends.** The task returns ``("ended", last progress)`` or ``("failed", message)``; a worker
killed (``kill -9``, the out-of-memory killer, a lost node) is ``("crashed", message)``
naming its process, node and Ray's error. A run that does not stop within
:data:`~frameserve.training.jobs.process.STOP_GRACE_SECONDS` of being asked, or whose trainer
is not built yet, is cancelled in Ray (its worker killed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frameserve.engine.cluster.connect import import_ray
from frameserve.engine.cluster.deployments import TrainingResources
from frameserve.training import Trainer, TrainingProgress, TrainingSettings, list_checkpoints
from frameserve.training.checkpoints import JOB_FILE
from frameserve.training.jobs.process import (
    MAX_YIELD_SECONDS,
    STOP_GRACE_SECONDS,
    RunOrder,
    handle_log,
)
from frameserve.training.jobs.shared import SharedFrames

__all__ = ["HUB_TIMEOUT", "ClusterRun", "ClusterTraining", "train_on_node"]

logger = logging.getLogger(__name__)

#: The longest the server waits for the hub's answer before it takes the run as lost.
HUB_TIMEOUT = 60.0
_NAP = 0.02
_NO_FLAGS = (False, False)  # stop, busy


class ClusterTraining:
    """Runs training jobs as Ray tasks on the cluster the server has joined.

    Args:
        resources: what each job's task reserves (the deployment file's ``[training]``).
    """

    def __init__(self, resources: TrainingResources | None = None) -> None:
        self.resources = resources or TrainingResources()
        self._lock = threading.Lock()
        self._hub: Any = None
        self._task: Any = None

    def run(self, order: RunOrder) -> ClusterRun:
        """Return a run of ``order``'s job on the cluster (started by :meth:`ClusterRun.start`)."""
        return ClusterRun(order, self)

    def parts(self) -> tuple[Any, Any]:
        """The hub (made at the first call) and the task's remote function."""
        ray, _ = import_ray()
        with self._lock:
            if self._hub is None:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                here = NodeAffinitySchedulingStrategy(
                    node_id=ray.get_runtime_context().get_node_id(), soft=True
                )
                hub = ray.remote(_hub_class())
                self._hub = hub.options(
                    num_cpus=0, scheduling_strategy=here, name=None, max_restarts=0
                ).remote()
                self._task = ray.remote(max_calls=1, max_retries=0)(train_on_node)
            return self._hub, self._task

    def close(self) -> None:
        """End the hub (every run has ended: the server's runs are closed first)."""
        with self._lock:
            hub, self._hub = self._hub, None
        if hub is not None:
            ray, _ = import_ray()
            with contextlib.suppress(Exception):
                ray.kill(hub)


class ClusterRun:
    """One run of a job as a Ray task, followed from the server; see the module doc."""

    def __init__(self, order: RunOrder, cluster: ClusterTraining) -> None:
        self.name = order.name
        self._order: RunOrder | None = order  # until the frames are in the object store
        self._cluster = cluster
        self._lock = threading.Lock()  # start and kill
        self._killed = False
        self._run = f"{order.name}-{uuid.uuid4().hex[:12]}"
        self._hub: Any = None
        self._task: Any = None  # the task's result (an ObjectRef)
        self._frames: Any = None
        self._lost: str | None = None  # the hub did not answer
        #: Whether the trainer is built (stopping it before then loses nothing).
        self.training = False
        #: The task's process id, Ray node id and host, once it has said hello.
        self.pid: int | None = None
        self.node: str | None = None
        self.host: str | None = None

    @property
    def exited(self) -> bool:
        """Whether the task has ended, or was killed before it started."""
        if self._task is None:
            return self._killed
        ray, _ = import_ray()
        ready, _ = ray.wait([self._task], timeout=0)
        return bool(ready)

    def start(self) -> None:
        """Put the frames into the object store and submit the task (it waits in Ray for a
        node with its resources); a run killed before it started never starts."""
        with self._lock:
            order, self._order = self._order, None
            if self._killed or order is None:
                return
            ray, _ = import_ray()
            self._hub, task = self._cluster.parts()
            self._frames = ray.put(order.frames.data())
            options = self._cluster.resources.task_options(str(order.settings.get("device", "cpu")))
            if not _fits(options, ray.nodes()):
                logger.warning(
                    "training job %r asks for %s, which no node of the Ray cluster has: it "
                    "waits until such a node joins (or it is cancelled)",
                    self.name,
                    _asked(options),
                )
            self._task = task.options(**options, name=f"frameserve-training-{order.name}").remote(
                order.name,
                str(order.folder),
                order.settings,
                self._frames,
                self._hub,
                self._run,
                order.log_level,
            )

    def kill(self) -> None:
        """Cancel the task at once (its worker is killed): the steps since its checkpoint
        are lost."""
        with self._lock:
            self._killed = True
            if self._task is not None:
                ray, _ = import_ray()
                with contextlib.suppress(Exception):
                    ray.cancel(self._task, force=True)

    def follow(
        self,
        *,
        stopping: Callable[[], bool],
        busy: Callable[[], bool],
        on_progress: Callable[[TrainingProgress], None],
    ) -> tuple[str, Any]:
        """Follow the run until the task has ended; return its :meth:`outcome` (as
        :meth:`~frameserve.training.jobs.process.JobProcess.follow`)."""
        if self._task is None:
            return self.outcome()
        ray, _ = import_ray()
        asked: float | None = None
        while True:
            ready, _ = ray.wait([self._task], timeout=_NAP)
            stop = stopping()
            now = time.monotonic()
            if stop and asked is None:
                asked = now
            for kind, value in self._exchange(stop, busy()):  # all, once it ended
                if kind == "progress":
                    on_progress(value)
                elif kind == "log":
                    handle_log(value)
            if ready:
                return self.outcome()
            late = asked is not None and (not self.training or now - asked > STOP_GRACE_SECONDS)
            if late or self._lost is not None:  # nothing to save yet, or it does not stop
                self.kill()

    def _exchange(self, stop: bool, busy: bool) -> list[tuple[str, Any]]:
        """Hand the hub the flags; return the reports the task sent since the last time."""
        if self._lost is not None:
            return []
        ray, _ = import_ray()
        try:
            payloads = ray.get(
                self._hub.exchange.remote(self._run, stop, busy), timeout=HUB_TIMEOUT
            )
        except Exception as exc:  # the hub died, or does not answer: the run cannot go on
            self._lost = f"the Ray actor relaying its reports was lost ({type(exc).__name__})"
            logger.error("training job %r: %s", self.name, self._lost)
            return []
        reports: list[tuple[str, Any]] = [pickle.loads(payload) for payload in payloads]
        for kind, value in reports:
            if kind == "hello":
                self.pid, self.node, self.host = value["pid"], value["node"], value["host"]
                logger.info(
                    "training job %r runs on Ray node %s (%s), pid %d",
                    self.name,
                    self.node,
                    self.host,
                    self.pid,
                )
            elif kind == "started":
                self.training = True
        return reports

    def outcome(self) -> tuple[str, Any]:
        """Return how the run ended: ``("ended", last progress)``, ``("failed", message)``
        (an error in the trainer) or ``("crashed", message)`` (the task's worker died)."""
        if self._task is None:
            return "ended", None  # killed before it started: it did nothing
        ray, _ = import_ray()
        exceptions: Any = ray.exceptions
        try:
            result: tuple[str, Any] = ray.get(self._task, timeout=HUB_TIMEOUT)
        except exceptions.TaskCancelledError:
            if not self.training:
                return "ended", None  # cancelled before its trainer was built
            return "crashed", f"{self._where()} was killed when told to stop"
        except exceptions.RayTaskError as exc:  # an error outside the trainer's own handling
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return "failed", _first_line(cause)
        except exceptions.WorkerCrashedError:
            return "crashed", (
                f"{self._where()} died: its worker process ended unexpectedly (killed by a "
                "signal, the out-of-memory killer, or a crash; Ray's WorkerCrashedError, the "
                "node's python-core-worker-*.log and raylet.out say more)"
            )
        except Exception as exc:  # its node was lost, the hub did not answer, ...
            if self._lost is not None:
                return "crashed", f"{self._where()} was stopped: {self._lost}"
            return "crashed", f"{self._where()} died: {_first_line(exc)}"
        return result

    def _where(self) -> str:
        if self.pid is None:
            return "its Ray training task (before it reported its process)"
        return f"its Ray training task (pid {self.pid} on node {self.node}, host {self.host})"

    def close(self) -> None:
        """Cancel the task if it still runs and let the run's objects go."""
        if not self.exited:
            self.kill()
        hub = self._hub
        if hub is not None:
            with contextlib.suppress(Exception):
                hub.drop.remote(self._run)
        self._frames = self._hub = None


def _asked(options: dict[str, Any]) -> dict[str, float]:
    """What a task with ``options`` reserves, by Ray's resource names."""
    asked = {"CPU": float(options["num_cpus"]), "GPU": float(options["num_gpus"])}
    asked.update(options.get("resources", {}))
    return {name: amount for name, amount in asked.items() if amount > 0}


def _fits(options: dict[str, Any], nodes: list[dict[str, Any]]) -> bool:
    """Whether a live node of ``nodes`` (``ray.nodes()``) has all that ``options`` asks for."""
    asked = _asked(options)
    return any(
        node.get("Alive")
        and all(
            node.get("Resources", {}).get(name, 0.0) >= amount for name, amount in asked.items()
        )
        for node in nodes
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{text[0] if text else ''} ({type(exc).__name__})"


def _hub_class() -> type:
    """The hub's class, made here so that Ray sends it by value: its worker imports nothing
    of frameserve (nor torch), and the reports it keeps are bytes it never reads."""

    class TrainingHub:
        """Relays the reports and flags of a server's training runs on the cluster."""

        def __init__(self) -> None:
            self.mail: dict[str, list[bytes]] = {}
            self.flags: dict[str, tuple[bool, bool]] = {}
            self.dropped: set[str] = set()

        def send(self, run: str, payload: bytes) -> tuple[bool, bool]:
            if payload and run not in self.dropped:
                self.mail.setdefault(run, []).append(payload)
            return self.flags.get(run, (False, False))

        def flags_of(self, run: str) -> tuple[bool, bool]:
            return self.flags.get(run, (False, False))

        def exchange(self, run: str, stop: bool, busy: bool) -> list[bytes]:
            self.flags[run] = (stop, busy)
            return self.mail.pop(run, [])

        def drop(self, run: str) -> None:
            self.mail.pop(run, None)
            self.flags.pop(run, None)
            self.dropped.add(run)

    return TrainingHub


# -- on the node -------------------------------------------------------------------------------


def train_on_node(
    name: str,
    folder: str,
    settings: dict[str, Any],
    data: Any,
    hub: Any,
    run: str,
    log_level: int,
) -> tuple[str, Any]:
    """Train job ``name`` on this node, reporting through ``hub`` (the Ray task's body)."""
    ray, _ = import_ray()
    flags = list(_NO_FLAGS)

    def send(kind: str, value: object, *, answer: bool = False) -> None:
        reply = hub.send.remote(run, pickle.dumps((kind, value)))
        if answer:
            flags[:] = ray.get(reply)

    handler = _HubHandler(send)
    ours = logging.getLogger("frameserve")
    saved = ours.handlers[:], ours.level, ours.propagate
    ours.handlers[:] = [handler]
    ours.setLevel(log_level)
    ours.propagate = False  # the server logs them; Ray would print them to its console too

    def report(progress: TrainingProgress) -> None:
        send("progress", progress, answer=True)
        waited = 0.0
        while waited < MAX_YIELD_SECONDS and not flags[0] and flags[1]:
            time.sleep(_NAP)
            waited += _NAP
            flags[:] = ray.get(hub.flags_of.remote(run))

    here = ray.get_runtime_context()
    try:
        hello = {"pid": os.getpid(), "node": here.get_node_id(), "host": socket.gethostname()}
        send("hello", hello, answer=True)
        job = Path(folder)
        if not (job / JOB_FILE).is_file():
            raise FileNotFoundError(
                f"the job folder {folder!r} is not on node {hello['node']} "
                f"({hello['host']}): with --ray, the jobs folder (--jobs-folder) must be on "
                "storage every node of the cluster shares, at the same path"
            )
        frames = SharedFrames.share(data)  # memory of its own: the trainer may write it
        del data
        own = frames.data()
        options = TrainingSettings.from_dict(
            {**settings, "device": _node_device(str(settings.get("device", "cpu")), ray)}
        )
        if list_checkpoints(job):
            trainer = Trainer.resume(job, own, on_progress=report, steps=options.steps)
        else:
            trainer = Trainer(own, options, job_dir=job, name=name, on_progress=report)
        del own
        send("started", trainer.step_count, answer=True)
        last = trainer.run(should_stop=lambda: bool(flags[0]))
        return "ended", last
    except Exception as exc:  # reported; the server decides what becomes of the job
        logger.exception("training job %r failed", name)
        return "failed", str(exc) or type(exc).__name__
    finally:
        with contextlib.suppress(Exception):
            ray.get(hub.send.remote(run, b""))  # every report sent has arrived
        ours.handlers[:], ours.level, ours.propagate = saved


def _node_device(device: str, ray: Any) -> str:
    """The device a job asking for ``device`` trains on here: the GPU Ray gave the task
    (``"cuda"``; its index is Ray's choice), or for ``"auto"`` the CPU if it gave none."""
    if device.startswith("cuda"):
        return "cuda"
    if device == "auto":
        return "cuda" if ray.get_gpu_ids() else "cpu"
    return device


class _HubHandler(logging.Handler):
    """Sends the task's log records to the server, which hands them to its own loggers."""

    def __init__(self, send: Callable[..., None]) -> None:
        super().__init__()
        self._send = send
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._inside, "sending", False):
            return  # a record logged while one is sent
        self._inside.sending = True
        try:
            fields = dict(record.__dict__)
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields.update(msg=record.getMessage(), args=None, exc_info=None)
            self._send("log", fields)
        except Exception:
            self.handleError(record)
        finally:
            self._inside.sending = False
