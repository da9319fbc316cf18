"""The server's handle on one worker process: start it, send it requests, see it die.

A :class:`WorkerProcess` starts a fresh interpreter running
:func:`~frameserve.engine.workers.process.main` (a spawn, never a fork: CUDA-safe; and the
server's ``__main__`` is never imported again, as ``multiprocessing``'s spawn would) with the
server's ``sys.path``, and talks to it over a socket pair
(:class:`~frameserve.engine.workers.channel.Channel`). :meth:`WorkerProcess.call` sends one
request or batch — frame references into the server's shared memory, never pixels — and waits
for the answer; a reader thread takes the answers in, turns output references into frames
that hold their shared memory while the server uses them, and notices when the process ends:
every call still waiting then fails with the cause (:class:`Death`: an exit code, a signal,
or what the server stopped it for), and the owner is told (``on_exit``).

The process is started from the host's long-lived spawner thread (``spawn``), because on
Linux the worker asks to be killed when the *thread* that started it ends
(``PR_SET_PDEATHSIG``): the server's death then takes its workers with it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from frameserve.engine.request import InferenceRequest, InferenceResult, Priority
from frameserve.engine.workers.channel import MAX_FDS, Channel, ChannelClosed
from frameserve.engine.workers.process import WorkerConfig
from frameserve.engine.workers.transport import FrameRef, PeerSegments, SegmentPool
from frameserve.errors import FrameServeError, ModelRunError

__all__ = ["CallTimedOut", "Death", "Launched", "WorkerDied", "WorkerProcess", "launch"]

log = logging.getLogger(__name__)

_MAIN = "from frameserve.engine.workers.process import main; main()"
_peer_ids = itertools.count(1)
_call_ids = itertools.count(1)


@dataclass(frozen=True)
class Death:
    """Why a worker process ended.

    Attributes:
        reason: ``"exit"``, ``"signal"``, ``"memory"``, ``"timeout"`` (the server stopped it
            for one of those two), ``"stopped"`` (on purpose: the model went, the server
            closes) or ``"load"`` (it could not load its model).
        cause: the words after "its worker", e.g. ``"was killed by signal 11 (SIGSEGV)"``.
    """

    reason: str
    cause: str

    @property
    def is_crash(self) -> bool:
        """Whether the worker died of its own doing (not stopped, not a failed load)."""
        return self.reason in ("exit", "signal", "memory")


class WorkerDied(Exception):
    """The worker process ended while a call waited (internal: the supervisor words it)."""

    def __init__(self, death: Death) -> None:
        super().__init__(death.cause)
        self.death = death


class CallTimedOut(Exception):
    """A call did not finish in time (internal: the supervisor stops the worker)."""


class _Call:
    __slots__ = ("death", "done", "outcomes")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcomes: list[InferenceResult | FrameServeError] | None = None
        self.death: Death | None = None


#: A started worker interpreter waiting for its config, and the server's end of its socket.
Launched = tuple["subprocess.Popen[bytes]", socket.socket]


def launch(spawn: Callable[[Callable[[], None]], None]) -> Launched:
    """Start a worker interpreter on the spawner thread; it waits for its :class:`WorkerConfig`.

    It imports torch and the engine before it is told which model to serve, so a started
    one can be kept as a spare (see :mod:`frameserve.engine.workers.processes`).
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    started: list[subprocess.Popen[bytes]] = []
    command = [sys.executable, "-c", _MAIN, str(child.fileno()), str(os.getpid())]

    def start() -> None:
        started.append(
            subprocess.Popen(
                command, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=environment
            )
        )

    try:
        spawn(start)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return started[0], parent


class WorkerProcess:
    """One worker process serving one model version (see the module docstring).

    Args:
        config: what the process is told (its model's source, device, threads).
        launched: the process, fresh from :func:`launch` (perhaps a spare started earlier),
            and the server's end of its socket.
        frames: the server's shared-memory pool that request frames come from.
        on_exit: called (from the reader thread) once the process has ended.
        on_copy: called for each request frame that had to be copied into shared memory.
    """

    def __init__(
        self,
        config: WorkerConfig,
        launched: Launched,
        *,
        frames: SegmentPool,
        on_exit: Callable[[WorkerProcess, Death], None],
        on_copy: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.name = (
            config.model_id if config.version == "1" else f"{config.model_id} v{config.version}"
        )
        self._frames = frames
        self._on_exit = on_exit
        self._on_copy = on_copy
        self._peer = f"worker-{next(_peer_ids)}"
        self._outputs = PeerSegments()
        self._pending_free: deque[int] = deque()
        self._calls: dict[int, _Call] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.model_bytes = 0
        self.setup_error: str | None = None
        self.load_error: str | None = None
        self.death: Death | None = None
        self._fatal: str | None = None
        self._stop_reason: tuple[str, str] | None = None
        self.started_at = time.monotonic()
        self._process, parent = launched
        self._channel = Channel(parent)
        self.pid: int = self._process.pid
        with contextlib.suppress(OSError):  # it died at once: the reader sees it
            self._channel.send(("config", config))
        self._reader = threading.Thread(
            target=self._read, name=f"frameserve-worker-{self.pid}", daemon=True
        )
        self._reader.start()

    @property
    def alive(self) -> bool:
        """Whether the process has not ended (as far as the reader has seen)."""
        return self.death is None

    # -- calls ---------------------------------------------------------------------------------

    def call(
        self, requests: Sequence[InferenceRequest], priority: Priority, *, until: float
    ) -> list[InferenceResult | FrameServeError]:
        """Run ``requests`` as one call (a batch when several); wait until ``until`` at most.

        Raises:
            CallTimedOut: no answer by ``until`` (a ``time.monotonic()`` time).
            WorkerDied: the process ended first (or had already).
        """
        staged: list[Any] = []  # frames copied into shared memory for this call
        items = [self._item(request, staged) for request in requests]
        call = _Call()
        call_id = next(_call_ids)
        with self._lock:
            if self.death is not None:
                raise WorkerDied(self.death)
            self._calls[call_id] = call
        try:
            segments = [ref.segment for item in items for _, ref in item["frames"]]
            self._send_segments(segments)
            self._flush()
            self._channel.send(("run", call_id, int(priority), items))
        except OSError:
            pass  # the process is ending: the reader fails the call
        remaining = until - time.monotonic()
        finished = call.done.wait(max(0.0, remaining))
        with self._lock:
            self._calls.pop(call_id, None)
        if not finished:
            raise CallTimedOut()
        if call.death is not None:
            raise WorkerDied(call.death)
        assert call.outcomes is not None
        return call.outcomes

    def _item(self, request: InferenceRequest, staged: list[Any]) -> dict[str, Any]:
        frames = []
        for name, tensor in request.frames.items():
            ref = self._frames.locate(tensor)
            if ref is None:  # not from the doors' allocator: the one copy in
                array = self._frames.frame(tuple(int(size) for size in tensor.shape))
                torch.from_numpy(array).copy_(tensor.detach())
                self._on_copy()
                staged.append(array)
                ref = self._frames.locate(torch.from_numpy(array))
                assert ref is not None
            frames.append((name, ref))
        return {"frames": frames, "knobs": dict(request.knobs), "colourspace": request.colourspace}

    def _send_segments(self, segment_ids: list[int]) -> None:
        new = self._frames.descriptors(self._peer, segment_ids)
        for start in range(0, len(new), MAX_FDS):
            chunk = new[start : start + MAX_FDS]
            self._channel.send(("map", [(i, size) for i, size, _ in chunk]), [f for *_, f in chunk])

    def flush(self) -> None:
        """Tell the worker which of its output frames the server let go, and what to unmap."""
        with contextlib.suppress(OSError):
            self._flush()

    def _flush(self) -> None:
        if self.death is not None:
            return
        freed = []
        while self._pending_free:
            freed.append(self._pending_free.popleft())
        if freed:
            self._channel.send(("free", freed))
        forgotten = self._frames.forgotten(self._peer)
        if forgotten:
            self._channel.send(("forget", forgotten))

    # -- health --------------------------------------------------------------------------------

    def private_memory(self) -> int | None:
        """Bytes of private memory the process holds (``RssAnon``); ``None`` if unknown."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"RssAnon:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def stop(self, reason: str, cause: str, *, grace: float = 0.0) -> None:
        """End the process: ask it to stop (within ``grace`` seconds), else kill it.

        ``reason`` and ``cause`` become its :class:`Death` (unless it died already).
        """
        with self._lock:
            if self.death is not None:
                return
            if self._stop_reason is None:
                self._stop_reason = (reason, cause)
        if grace > 0:
            with contextlib.suppress(OSError):
                self._channel.send(("stop",))
            self._reader.join(grace)
        self.kill()

    def kill(self) -> None:
        """Kill the process at once (SIGKILL); the reader then sees it end."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout: float) -> bool:
        """Wait for the reader to see the process end; return whether it did."""
        self._reader.join(timeout)
        return not self._reader.is_alive()

    # -- the reader ----------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                message, fds = self._channel.recv()
                self._handle(message, fds)
        except (ChannelClosed, OSError):
            pass
        except Exception:  # a malformed message: the worker cannot be trusted any more
            log.exception(
                "worker %s (%s) sent a message the server cannot read", self.pid, self.name
            )
        self._ended()

    def _handle(self, message: Any, fds: list[int]) -> None:
        kind, *args = message
        if kind == "done":
            self._done(*args)
        elif kind == "map":
            for (segment_id, size), fd in zip(args[0], fds, strict=True):
                self._outputs.add(segment_id, size, fd)
        elif kind == "log":
            _relay_log(self.pid, *args)
        elif kind == "ready":
            self.model_bytes = int(args[0]["model_bytes"])
            self.setup_error = args[0]["setup_error"]
            self.ready.set()
        elif kind == "fatal":
            self._fatal = str(args[0])
        elif kind == "load_failed":
            self.load_error = str(args[0])
        else:
            raise ValueError(f"unknown message {kind!r}")

    def _done(
        self,
        call_id: int,
        replies: list[tuple[str, Any]],
        retained: list[int],
        forgotten: list[int],
    ) -> None:
        if retained:
            self._frames.taint(retained)
        outcomes = [self._outcome(kind, value) for kind, value in replies]
        self._outputs.forget(forgotten)
        with self._lock:
            call = self._calls.get(call_id)
        if call is not None:
            call.outcomes = outcomes
            call.done.set()

    def _outcome(self, kind: str, value: Any) -> InferenceResult | FrameServeError:
        if kind == "error":
            error = value if isinstance(value, FrameServeError) else ModelRunError(str(value))
            error.worker = self.pid
            return error
        frames_out, objects = value
        frames: dict[str, torch.Tensor] = {}
        for name, (where, ref) in frames_out:
            array = self._output_array(where, ref)
            if array is None:
                return ModelRunError(f"model {self.config.model_id!r}: output {name!r} was lost")
            frames[name] = torch.from_numpy(array)
        return InferenceResult(frames=frames, objects=tuple(objects), worker=self.pid)

    def _output_array(self, where: str, ref: FrameRef) -> Any:
        if where == "input":
            return self._frames.leased_view(ref)
        try:
            return self._outputs.array(ref, on_release=(self._pending_free, ref.segment))
        except (KeyError, ValueError):
            return None

    def _ended(self) -> None:
        try:
            code: int | None = self._process.wait(5.0)
        except subprocess.TimeoutExpired:  # its socket closed, yet it lives: end it
            self.kill()
            code = self._process.wait()
        death = self._death(code)
        with self._lock:
            self.death = death
            calls = list(self._calls.values())
        self._channel.close()
        self._outputs.clear()
        self._pending_free.clear()
        self._frames.drop_peer(self._peer)
        # The owner first (its state and counts are up to date when a caller hears of it).
        self._on_exit(self, death)
        for call in calls:
            call.death = death
            call.done.set()
        self.ready.set()  # nobody waits for a ready message that will never come

    def _death(self, code: int | None) -> Death:
        if self._stop_reason is not None:
            return Death(*self._stop_reason)
        if self.load_error is not None:
            return Death("load", self.load_error)
        if code is not None and code < 0:
            return Death("signal", f"was killed by signal {-code} ({_signal_name(-code)})")
        note = f" ({self._fatal})" if self._fatal else ""
        return Death("exit", f"exited with code {code}{note}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _relay_log(pid: int, level: int, name: str, text: str, exc_text: str | None) -> None:
    """Log a worker's record in the server, under its own logger name."""
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(name, level, f"(worker {pid})", 0, "%s", (text,), None)
    record.exc_text = exc_text
    record.worker = pid  # type: ignore[attr-defined]
    logger.handle(record)
