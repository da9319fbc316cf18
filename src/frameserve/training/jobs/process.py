"""A training job's run in its own process: started with ``spawn``, followed, stopped or killed.

Whatever happens to a job's process — an error in the trainer, ``os.abort``, a segfault in a
native library, a CUDA error, ``kill -9``, the out-of-memory killer — ends that process only:
the server follows it from a thread of its own and records what happened::

    process = JobProcess(RunOrder(name="degrain", folder=folder, settings=settings,
                                  frames=SharedFrames.share(data)))
    process.start()
    while not process.exited:
        for kind, value in process.reports(timeout=0.02):   # started, progress, log...
            ...
        process.set_busy(interactive_work_waits())
    process.outcome()          # "ended", "failed: <message>" or how the process died

**What crosses the process boundary.** To the child, once, as it starts: the
:class:`RunOrder` (the job's name, folder and settings, the server's log level) and its frames
as :class:`~frameserve.training.jobs.shared.SharedFrames` (shared memory: no pixel is pickled,
and the child reads no file but its job folder). Two shared flags the server sets: *stop*
(cancel, or the server closing: the child stops before its next step and writes a checkpoint)
and *busy* (interactive inference is waiting: after each step the child naps while it is set,
at most :data:`MAX_YIELD_SECONDS`). From the child, through a pipe, as ``(kind, value)``
pairs: ``started`` (the trainer is built; its step), ``progress`` (a
:class:`~frameserve.training.TrainingProgress` after every step), ``log`` (its log records,
handled by the server's loggers), then ``ended`` (the last progress, or ``None``) or
``failed`` (the error's message). A process that exits without either crashed; its exit
status or signal says how (:func:`describe_exit`).

The child ignores ``SIGINT`` (a Ctrl-C in the server's terminal reaches the whole process
group; the server stops its jobs itself), and ends soon after the server is gone: its next
report finds the pipe closed. Any other signal ends it as it would any process, and is
reported as what ended it. As with every ``spawn`` start, the child imports the main module
of the program that started the server (not ``frameserve``'s own, nor one run with
``python -m``): a script that starts a server must do so under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from frameserve.training import Trainer, TrainingProgress, TrainingSettings, list_checkpoints
from frameserve.training.jobs.shared import SharedFrames

__all__ = [
    "EXIT_GRACE_SECONDS",
    "MAX_YIELD_SECONDS",
    "STOP_GRACE_SECONDS",
    "JobProcess",
    "JobRun",
    "RunOrder",
    "describe_exit",
    "handle_log",
    "run_child",
]

logger = logging.getLogger(__name__)

#: The longest a training step waits for interactive work to drain.
MAX_YIELD_SECONDS = 1.0
#: How long a process asked to stop may take (its step, then a checkpoint) before it is killed.
STOP_GRACE_SECONDS = 30.0
#: How long a process that has sent its last report may take to exit before it is killed.
EXIT_GRACE_SECONDS = 5.0
_NAP = 0.02
_STOP, _BUSY = 0, 1  # the shared flags


@dataclass(frozen=True)
class RunOrder:
    """What a job's process is told as it starts (picklable only while it is spawned).

    Attributes:
        name / folder: the job, and its folder (checkpoints, contact sheets, ``job.json``).
        settings: its :class:`~frameserve.training.TrainingSettings`, as plain data.
        frames: what it learns from, in shared memory.
        log_level: the level of the records it sends the server.
    """

    name: str
    folder: Path
    settings: dict[str, Any]
    frames: SharedFrames
    log_level: int = logging.INFO


class JobRun(Protocol):
    """One run of a job, as the queue's runs drive it: a :class:`JobProcess` on this machine,
    or a :class:`~frameserve.training.jobs.cluster.ClusterRun` on a Ray cluster."""

    name: str
    training: bool

    @property
    def pid(self) -> int | None:
        """The id of the process that trains (``None``: not known yet)."""

    def start(self) -> None:
        """Start the run (one killed before it started never starts)."""

    def kill(self) -> None:
        """End the run at once: the steps since its checkpoint are lost."""

    def follow(
        self,
        *,
        stopping: Callable[[], bool],
        busy: Callable[[], bool],
        on_progress: Callable[[TrainingProgress], None],
    ) -> tuple[str, Any]:
        """Follow the run until it has ended; return ``("ended", last progress)``,
        ``("failed", message)`` or ``("crashed", message)``."""

    def close(self) -> None:
        """End the run if it still goes on, and let its resources go."""


class JobProcess:
    """One run of a job in a child process (``spawn``); see the module doc."""

    def __init__(self, order: RunOrder) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = order.name
        self._lock = threading.Lock()  # start and kill
        self._killed = False
        self._flags = context.RawArray(ctypes.c_bool, 2)
        self._reports, sender = context.Pipe(duplex=False)
        self._sender: Connection | None = sender
        self._process = context.Process(
            target=run_child,
            args=(order, sender, self._flags),
            name=f"frameserve-training-{order.name}",
            daemon=True,
        )
        self._open = True  # the pipe has not reached its end
        self._last: tuple[str, Any] | None = None  # the "ended" or "failed" report
        #: Whether the trainer is built (stopping it before then loses nothing).
        self.training = False

    def start(self) -> None:
        """Start the process (it maps the frames and builds its trainer); a process killed
        before it started never starts."""
        with self._lock:
            if not self._killed:
                self._process.start()
            if self._sender is not None:
                self._sender.close()  # the child's end: the pipe ends when the child does
                self._sender = None

    @property
    def pid(self) -> int | None:
        """The process's id (``None`` before it starts)."""
        return self._process.pid

    @property
    def exited(self) -> bool:
        """Whether the process has ended, or was killed before it started (its reports may
        still wait to be read)."""
        with self._lock:
            if self._process.pid is None:
                return self._killed
        return self._process.exitcode is not None

    def stop(self) -> None:
        """Ask the process to stop before its next step (it writes a checkpoint first)."""
        self._flags[_STOP] = True

    def set_busy(self, busy: bool) -> None:
        """Say whether interactive inference is waiting (the process then naps)."""
        self._flags[_BUSY] = busy

    def kill(self) -> None:
        """Kill the process at once (``SIGKILL``): the steps since its checkpoint are lost."""
        with self._lock:
            self._killed = True
            if self._process.pid is not None and self._process.exitcode is None:
                with contextlib.suppress(OSError):
                    self._process.kill()

    def follow(
        self,
        *,
        stopping: Callable[[], bool],
        busy: Callable[[], bool],
        on_progress: Callable[[TrainingProgress], None],
    ) -> tuple[str, Any]:
        """Follow the run until the process has ended; return its :meth:`outcome`.

        ``on_progress`` gets each step's progress; ``busy()`` is passed on to the process
        every :data:`_NAP` seconds; once ``stopping()`` says so, the process is asked to stop,
        and killed if it does not within :data:`STOP_GRACE_SECONDS` (at once if its trainer
        is not built yet: it has nothing to save). One that has said its last but does not
        end is killed after :data:`EXIT_GRACE_SECONDS`.
        """
        asked: float | None = None
        said: float | None = None
        while True:
            exited = self.exited
            for kind, value in self.reports(0.0 if exited else _NAP):  # all, once it ended
                if kind == "progress":
                    on_progress(value)
                elif kind == "log":
                    handle_log(value)
            if exited:
                return self.outcome()
            now = time.monotonic()
            self.set_busy(busy())
            if stopping():
                if asked is None:
                    self.stop()
                    asked = now
                if not self.training or now - asked > STOP_GRACE_SECONDS:
                    self.kill()
            if said is None and (self._last is not None or not self._open):
                said = now
            if said is not None and now - said > EXIT_GRACE_SECONDS:
                self.kill()

    def reports(self, timeout: float) -> list[tuple[str, Any]]:
        """Return the reports that came within ``timeout`` seconds (waits for the first)."""
        if self._process.pid is None:  # killed before it started
            return []
        waited: list[Any] = [self._process.sentinel]
        if self._open:
            waited.append(self._reports.fileno())
        got: list[tuple[str, Any]] = []
        if not wait(waited, timeout):
            return got
        while self._open:
            try:
                if not self._reports.poll():
                    break
                report = self._reports.recv()
            except (EOFError, OSError):
                self._open = False
                break
            if report[0] == "started":
                self.training = True
            elif report[0] in ("ended", "failed"):
                self._last = report
            got.append(report)
        return got

    def outcome(self) -> tuple[str, Any]:
        """Return how the run ended: ``("ended", last progress)``, ``("failed", message)``
        (an error in the trainer) or ``("crashed", message)`` (the process died)."""
        if self._last is not None:
            return self._last
        if self._process.pid is None:
            return "ended", None  # killed before it started: it did nothing
        code = self._process.exitcode
        what = describe_exit(code) if code is not None else "was lost"
        return "crashed", f"its training process (pid {self.pid}) {what}"

    def close(self) -> None:
        """Kill the process if it still runs, wait for it, and let its resources go."""
        self.kill()
        if self._process.pid is not None:
            self._process.join()
            self._process.close()
        self._reports.close()


def describe_exit(code: int) -> str:
    """Say how a process with exit status ``code`` ended (negative: killed by that signal)."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "an unknown signal"
    return f"was killed by signal {-code} ({name})"


# -- in the child ------------------------------------------------------------------------------


def run_child(order: RunOrder, reports: Connection, flags: Any) -> None:
    """Train the job of ``order``, reporting through ``reports`` (runs in the child)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock = threading.Lock()

    def send(kind: str, value: object) -> None:
        with lock:
            reports.send((kind, value))

    root = logging.getLogger()
    root.handlers[:] = [_PipeHandler(send)]
    root.setLevel(order.log_level)

    def report(progress: TrainingProgress) -> None:
        send("progress", progress)  # BrokenPipeError once the server is gone: the run ends
        waited = 0.0
        while waited < MAX_YIELD_SECONDS and not flags[_STOP] and flags[_BUSY]:
            time.sleep(_NAP)
            waited += _NAP

    try:
        data = order.frames.data()
        settings = TrainingSettings.from_dict(order.settings)
        if list_checkpoints(order.folder):
            trainer = Trainer.resume(order.folder, data, on_progress=report, steps=settings.steps)
        else:
            trainer = Trainer(
                data, settings, job_dir=order.folder, name=order.name, on_progress=report
            )
        del data
        send("started", trainer.step_count)
        last = trainer.run(should_stop=lambda: bool(flags[_STOP]))
        send("ended", last)
    except Exception as exc:  # reported; the server decides what becomes of the job
        logger.exception("training job %r failed", order.name)
        with contextlib.suppress(OSError):
            send("failed", str(exc) or type(exc).__name__)
    finally:
        reports.close()


class _PipeHandler(logging.Handler):
    """Sends the child's log records to the server, which hands them to its own loggers."""

    def __init__(self, send: Callable[[str, object], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields.update(msg=record.getMessage(), args=None, exc_info=None)
            self._send("log", fields)
        except OSError:
            pass  # the server is gone
        except Exception:
            self.handleError(record)


def handle_log(fields: dict[str, Any]) -> None:
    """Hand a log record the child sent to the server's logger of its name (if that logger
    takes records of its level)."""
    record = logging.makeLogRecord(fields)
    named = logging.getLogger(record.name)
    if named.isEnabledFor(record.levelno):
        named.handle(record)
