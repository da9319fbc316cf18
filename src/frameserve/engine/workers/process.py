"""Inside a worker process: load one model from its source and run requests on it.

The server starts a worker as a fresh interpreter (``python -c`` calling :func:`main`, given
one end of a socket pair) — a *spawn*, never a fork, so CUDA initialises cleanly in it, and
unlike ``multiprocessing``'s spawn it never imports the server's ``__main__`` module again
(a script that starts a server without an ``if __name__ == "__main__":`` guard still works).
The first message is its :class:`WorkerConfig`. The worker:

1. ties its life to the server's (``PR_SET_PDEATHSIG`` on Linux, and the socket: when the
   server goes, so does the worker), ignores Ctrl-C (the server stops it), and sends its log
   records to the server, which logs them under their own logger names;
2. imports its model folder again (:func:`~frameserve.catalogue.folders.load_folder`: model
   classes from plug-in modules cannot be pickled, and a fresh import is what isolation
   means), finds its model version, and serves it alone through a
   :class:`~frameserve.engine.runner.Runner` over a one-model registry — so padding, tiling,
   colour, batching and out-of-memory fallbacks are exactly those of the server process;
3. sets the model up at once and tells the server it is ready (or why it cannot be);
4. runs each ``run`` message on a thread (interactive and batch requests on threads of their
   own, batch ones at a lower CPU priority), its input frames mapped from the server's shared
   memory, and answers with its outputs copied once into its own shared memory — or, for an
   output that *is* an input (an identity), a reference to that input.

A model that calls ``sys.exit`` (or raises another ``BaseException`` that is not an
``Exception``) ends the worker: it says why, then exits with that code, and the server treats
it as a crash. A request whose input frames the model kept a reference to is reported, so the
server never reuses that memory under it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from frameserve.catalogue.folders import ModelSource, load_model_version
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.colour import ColourManager
from frameserve.engine.failures import crossable, describe_error
from frameserve.engine.memory import tune_allocator
from frameserve.engine.niceness import lower_thread_priority, start_native_pools
from frameserve.engine.request import InferenceRequest, InferenceResult, Priority
from frameserve.engine.runner import Runner
from frameserve.engine.workers.channel import MAX_FDS, Channel, ChannelClosed
from frameserve.engine.workers.transport import FrameRef, PeerSegments, SegmentPool
from frameserve.errors import FrameServeError, ModelRunError
from frameserve.plugin.knobs import KnobValues

__all__ = ["WorkerConfig", "main", "worker_main"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: Segment ids of worker-made segments start here (server-made ones at 1), for clearer logs.
OUTPUT_IDS = 1 << 40
#: Free output segments a worker keeps for reuse, in bytes.
OUTPUT_IDLE_BYTES = 128 << 20


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """What a worker is told when it starts: which model, where it runs, how many at once."""

    source: ModelSource
    model_id: str
    version: str
    device: str = "cpu"
    half_precision: bool | None = None
    ocio: str | None = None
    interactive_threads: int = 2
    batch_threads: int = 1
    log_level: int = logging.INFO
    tune_allocator: bool = False


def main() -> None:
    """Entry point of a worker process: ``sys.argv[1]`` is its end of the socket pair,
    ``sys.argv[2]`` the server's process id. It waits (as a spare, maybe) for its config."""
    _tie_to_parent(int(sys.argv[2]))
    sock = socket.socket(fileno=int(sys.argv[1]))
    channel = Channel(sock)
    try:
        message, _ = channel.recv()
    except (ChannelClosed, OSError):
        os._exit(1)
    config = message[1] if isinstance(message, tuple) and message[0] == "config" else None
    if not isinstance(config, WorkerConfig):
        os._exit(1)
    worker_main(channel, config)


def worker_main(channel: Channel, config: WorkerConfig) -> None:
    """The worker process: serve ``config``'s model over ``channel`` until told to stop."""
    _forward_logs(channel, config.log_level)
    if config.tune_allocator:  # as the server's: freed frame buffers are kept for reuse
        tune_allocator()
    start_native_pools()  # before the batch thread can start them at its lower priority
    try:
        worker = _Worker(channel, config)
    except BaseException as exc:  # nothing to serve: say why and go
        _send_quietly(channel, ("load_failed", describe_error(exc)))
        os._exit(0)
    worker.serve()
    os._exit(0)


def _tie_to_parent(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the
    # server stops its workers itself.
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if parent_pid and os.getppid() != parent_pid:  # the server died before prctl took hold
        os._exit(1)


class _Forwarder(logging.Handler):
    """Sends each log record to the server, which logs it under the same logger name."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel
        self.setFormatter(logging.Formatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            exc_text = None
            if record.exc_info and self.formatter is not None:
                exc_text = self.formatter.formatException(record.exc_info)
            self._channel.send(("log", record.levelno, record.name, text, exc_text))
        except Exception:  # the server is gone: nothing to tell
            pass


def _forward_logs(channel: Channel, level: int) -> None:
    logging.raiseExceptions = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Forwarder(channel))
    root.setLevel(level)
    # The worker's one-model registry would announce its model as "added": not news.
    logging.getLogger("frameserve.catalogue.registry").setLevel(max(level, logging.WARNING))


def _send_quietly(channel: Channel, message: object) -> None:
    with contextlib.suppress(OSError):
        channel.send(message)


class _Worker:
    """The model, its runner, the shared memory, and the threads requests run on."""

    def __init__(self, channel: Channel, config: WorkerConfig) -> None:
        self.channel = channel
        self.config = config
        self.entry = load_model_version(config.source, config.model_id, config.version)
        registry = ModelRegistry((), builtins=False)
        registry.add_provider("worker", lambda: [self.entry])
        colour = ColourManager(config.ocio) if config.ocio else None
        self.runner = Runner(
            registry,
            device=config.device,
            colour=colour,
            memory_budget_bytes=None,  # one model: the server keeps the budget across workers
            half_precision=config.half_precision,
        )
        self.inputs = PeerSegments()
        self.outputs = SegmentPool(idle_bytes=OUTPUT_IDLE_BYTES, first_id=OUTPUT_IDS)
        self._lent: dict[int, np.ndarray] = {}  # output segments the server holds, by id
        self._lent_lock = threading.Lock()
        self._pools = {
            Priority.INTERACTIVE: ThreadPoolExecutor(
                config.interactive_threads, thread_name_prefix="worker-interactive"
            ),
            Priority.BATCH: ThreadPoolExecutor(
                config.batch_threads,
                thread_name_prefix="worker-batch",
                initializer=lower_thread_priority,
            ),
        }

    def serve(self) -> None:
        setup_error = None
        size = 0
        try:
            size = self.runner.set_up(self.entry)
        except FrameServeError as exc:  # requests will say so (and try the setup again)
            setup_error = str(exc)
        except BaseException as exc:  # sys.exit in setup
            self._die(exc)
        self.channel.send(("ready", {"model_bytes": size, "setup_error": setup_error}))
        handlers: dict[str, Callable[..., None]] = {
            "run": self._submit,
            "free": self._free,
            "forget": self.inputs.forget,
        }
        while True:
            try:
                message, fds = self.channel.recv()
            except (ChannelClosed, OSError):
                return  # the server is gone
            kind: str = message[0]  # type: ignore[index]
            args: tuple[Any, ...] = message[1:]  # type: ignore[index]
            if kind == "stop":
                break
            if kind == "map":
                self._map(args[0], fds)
            else:
                handlers[kind](*args)
        for pool in self._pools.values():
            pool.shutdown(wait=True)

    # -- messages ------------------------------------------------------------------------------

    def _map(self, segments: list[tuple[int, int]], fds: list[int]) -> None:
        for (segment_id, size), fd in zip(segments, fds, strict=True):
            self.inputs.add(segment_id, size, fd)

    def _free(self, segment_ids: list[int]) -> None:
        with self._lent_lock:
            for segment_id in segment_ids:
                self._lent.pop(segment_id, None)

    def _submit(self, call_id: int, priority: int, items: list[dict[str, Any]]) -> None:
        self._pools[Priority(priority)].submit(self._run_call, call_id, Priority(priority), items)

    # -- one call ------------------------------------------------------------------------------

    def _run_call(self, call_id: int, priority: Priority, items: list[dict[str, Any]]) -> None:
        try:
            replies, retained = self._run_items(priority, items)
        except BaseException as exc:  # sys.exit and its kind end the worker, as it asked
            self._die(exc)
            return
        new = self.outputs.descriptors("server", [seg for seg in _output_segments(replies)])
        for start in range(0, len(new), MAX_FDS):
            chunk = new[start : start + MAX_FDS]
            self.channel.send(
                ("map", [(i, size) for i, size, _ in chunk]), [fd for *_, fd in chunk]
            )
        forgotten = self.outputs.forgotten("server")
        self.channel.send(("done", call_id, replies, retained, forgotten))

    def _run_items(
        self, priority: Priority, items: list[dict[str, Any]]
    ) -> tuple[list[tuple[str, Any]], list[int]]:
        requests, roots = self._requests(priority, items)
        outcomes = self._run(requests)
        del requests
        bases = {segment: ref() for segment, ref in roots}
        replies = [self._reply(outcome, bases) for outcome in outcomes]
        del outcomes, bases
        return replies, _retained(roots)

    def _requests(
        self, priority: Priority, items: list[dict[str, Any]]
    ) -> tuple[list[InferenceRequest], list[tuple[int, weakref.ref[np.ndarray]]]]:
        """The requests of a ``run`` message, their frames mapped from the server's memory."""
        roots: list[tuple[int, weakref.ref[np.ndarray]]] = []
        requests = []
        for item in items:
            frames = {}
            for name, ref in item["frames"]:
                array = self.inputs.array(ref)
                roots.append((ref.segment, weakref.ref(array.base)))  # type: ignore[arg-type]
                frames[name] = torch.from_numpy(array)
            requests.append(
                InferenceRequest(
                    model_id=self.entry.id,
                    frames=frames,
                    knobs=KnobValues(item["knobs"]),
                    colourspace=item["colourspace"],
                    priority=priority,
                    entry=self.entry,
                )
            )
        return requests, roots

    def _run(self, requests: list[InferenceRequest]) -> list[InferenceResult | FrameServeError]:
        try:
            if len(requests) == 1:
                return [self.runner.run(requests[0])]
            return list(self.runner.run_batch(requests))
        except FrameServeError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # the runner wraps model errors; anything else lands here
            log.exception("model %s failed unexpectedly", self.entry.id)
            error = ModelRunError(f"model {self.entry.id!r} failed: {type(exc).__name__}: {exc}")
            return [error] * len(requests)

    def _reply(
        self, outcome: InferenceResult | FrameServeError, bases: dict[int, np.ndarray | None]
    ) -> tuple[str, Any]:
        if isinstance(outcome, FrameServeError):
            return ("error", crossable(outcome))
        frames = [(name, self._output(frame, bases)) for name, frame in outcome.frames.items()]
        return ("ok", (frames, tuple(outcome.objects)))

    def _output(
        self, frame: torch.Tensor, bases: dict[int, np.ndarray | None]
    ) -> tuple[str, FrameRef]:
        """Where the server finds ``frame``: in an input (no copy) or copied to an output."""
        frame = frame.detach()
        if frame.device.type == "cpu" and frame.dtype == torch.float32:
            start = frame.data_ptr()
            shape = tuple(int(size) for size in frame.shape)
            strides = tuple(int(stride) * 4 for stride in frame.stride())
            for segment, base in bases.items():
                if base is None or min(strides, default=0) < 0:
                    continue
                offset = start - int(base.ctypes.data)
                ref = FrameRef(segment, offset, shape, strides)
                if offset >= 0 and offset + ref.extent <= base.nbytes:
                    return ("input", ref)
        target = self.outputs.frame(tuple(frame.shape))
        torch.from_numpy(target).copy_(frame)
        copied = self.outputs.locate(torch.from_numpy(target))
        assert copied is not None
        with self._lent_lock:
            self._lent[copied.segment] = target  # held until the server frees it
        return ("output", copied)

    def _die(self, exc: BaseException) -> None:
        code = exc.code if isinstance(exc, SystemExit) else 1
        if not isinstance(code, int):
            code = 0 if code is None else 1
        what = f"{type(exc).__name__}({exc})" if str(exc) else type(exc).__name__
        _send_quietly(self.channel, ("fatal", f"the model raised {what}"))
        os._exit(code)


def _output_segments(replies: list[tuple[str, Any]]) -> list[int]:
    return [
        ref.segment
        for kind, value in replies
        if kind == "ok"
        for _, (where, ref) in value[0]
        if where == "output"
    ]


def _retained(roots: list[tuple[int, weakref.ref[np.ndarray]]]) -> list[int]:
    """The input segments the model kept views of (after this call's own are dropped)."""
    alive = [segment for segment, ref in roots if ref() is not None]
    if alive:
        gc.collect()  # a traceback or a cycle may hold them a moment longer
        alive = [segment for segment, ref in roots if ref() is not None]
        if alive:
            log.warning(
                "the model kept a reference to %d input frame(s); their memory is not reused",
                len(alive),
            )
    return sorted(set(alive))
