"""Deciding when requests run: priorities, fairness, batching, cancellation and the cache.

Front doors ``submit`` a checked :class:`InferenceRequest` and wait on the returned future;
they never call the model host themselves. The rules, in order:

1. **Cache**: a request identical to one answered before (model, version and token, knob
   values, colourspace, frame bytes) is answered at once from the :class:`ResultCache`. A
   request that names no exact model version is given the registry's newest when it arrives
   (:attr:`InferenceRequest.entry`), so it runs on the version its cache key names even if the
   model is reloaded while it waits. A result is cached the moment it is answered; where it
   lies in a model host's reusable buffers (worker processes' shared memory), a thread at a
   lower CPU priority then swaps in a copy of its own, so the buffers are reused — unless the
   model computed it faster than that copy takes (:mod:`frameserve.engine.keeping`).
2. **Priority**: interactive requests (an artist in the viewer) and batch requests (farm and
   sequence jobs) have workers of their own, so interactive work never queues behind batch
   work. Batch workers run at a lower operating-system priority (``nice``), so while both
   compute, the CPU goes to the artist; alone, a batch job has the whole machine.
3. **Fairness**: within a priority, requests are taken from their groups (a client id, or the
   client's host) in turn, so one client's 1,000-frame job does not starve another's.
4. **Batching**: for a model that declares ``max_batch_size`` above 1, queued requests with the
   same batch key (model, knobs, frame sizes, colourspace) join the chosen one, and the worker
   waits up to ``batch_window_ms`` for more to arrive before running them as one batch.
5. **Cancellation**: a cancelled future (its client went away) and a request past its deadline
   are dropped before they reach a model.

Requests run on ``workers`` interactive and ``batch_workers`` batch threads per *lane*. The
model host (:mod:`frameserve.engine.workers.host`) says which requests share a lane
(:meth:`~frameserve.engine.workers.host.ModelHost.concurrency_key`): in-process, every model
shares one lane per priority, whose threads run from the start (inference releases the GIL,
so the front doors keep answering while models compute); with worker processes, each model
version has lanes of its own, whose threads start with its first request and end after
:data:`LANE_IDLE_SECONDS` without work — so a model that hangs holds its own turns only, and
every other model keeps its full share. A plug-in that raises ``SystemExit`` (or any other
``BaseException``) in-process fails its request, never the thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from frameserve.engine.cache import ResultCache, internal_key
from frameserve.engine.keeping import ResultKeeper
from frameserve.engine.metrics import Metrics
from frameserve.engine.niceness import lower_thread_priority, start_native_pools
from frameserve.engine.request import InferenceRequest, InferenceResult, Priority, RequestFuture
from frameserve.engine.runner import Runner
from frameserve.engine.workers.host import InProcessHost, ModelHost
from frameserve.errors import (
    DeadlineExceededError,
    FrameServeError,
    ModelRunError,
    RequestCancelledError,
)

__all__ = ["LANE_IDLE_SECONDS", "Scheduler"]

log = logging.getLogger(__name__)

#: Seconds the threads of a model's own lane wait for work before they end.
LANE_IDLE_SECONDS = 60.0


@dataclass(eq=False)  # tickets are compared by identity, never by their frames
class _Ticket:
    """A queued request, its future, its lane and when it arrived."""

    request: InferenceRequest
    future: Future[InferenceResult]
    cache_key: bytes | None
    lane: Hashable = None
    queued_at: float = field(default_factory=time.monotonic)


class _PriorityQueue:
    """The queued tickets of one priority: a FIFO per group, groups served in turn."""

    def __init__(self) -> None:
        self.groups: OrderedDict[str, deque[_Ticket]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(tickets) for tickets in self.groups.values())

    def push(self, ticket: _Ticket) -> None:
        self.groups.setdefault(ticket.request.group, deque()).append(ticket)

    def pop(self, lane: Hashable) -> _Ticket | None:
        """Take the oldest ticket of ``lane`` from the next group in turn that has one; that
        group goes to the back."""
        for group in list(self.groups):
            tickets = self.groups[group]
            for ticket in tickets:
                if ticket.lane == lane:
                    tickets.remove(ticket)
                    if tickets:
                        self.groups.move_to_end(group)
                    else:
                        del self.groups[group]
                    return ticket
        return None

    def take_matching(self, batch_key: tuple[object, ...], limit: int) -> list[_Ticket]:
        """Remove and return up to ``limit`` queued tickets with this batch key, oldest first."""
        taken: list[_Ticket] = []
        for group in list(self.groups):
            tickets = self.groups[group]
            for ticket in list(tickets):
                if len(taken) >= limit:
                    return taken
                if ticket.request.batch_key == batch_key:
                    tickets.remove(ticket)
                    taken.append(ticket)
            if not tickets:
                del self.groups[group]
        return taken


class _Lane:
    """The threads that run one priority's requests of one concurrency key."""

    def __init__(self, priority: Priority, key: Hashable, limit: int, lock: threading.Lock):
        self.priority = priority
        self.key = key
        self.limit = limit
        self.threads = 0
        self.idle = 0
        self.condition = threading.Condition(lock)
        self.lasting = key is None  # the shared lane keeps its threads


class Scheduler:
    """Queues requests by priority and group, batches them, and runs them on lane threads.

    ``host`` is where models run (:class:`~frameserve.engine.workers.host.ModelHost`); a
    :class:`~frameserve.engine.runner.Runner` is taken as the in-process host over it.
    """

    def __init__(
        self,
        host: ModelHost | Runner,
        *,
        workers: int = 2,
        batch_workers: int = 1,
        cache: ResultCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.host: ModelHost = InProcessHost(host) if isinstance(host, Runner) else host
        self.cache = cache
        self.metrics = metrics or Metrics()
        self._queues = {priority: _PriorityQueue() for priority in Priority}
        self._lock = threading.Lock()
        self._limits = {Priority.INTERACTIVE: workers, Priority.BATCH: batch_workers}
        self._lanes: dict[tuple[Priority, Hashable], _Lane] = {}
        self._running: dict[tuple[str, str | None], int] = {}
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._keeper = ResultKeeper(self.host, self.cache)
        start_native_pools()  # at this thread's priority, before any batch thread exists
        with self._lock:
            for priority in Priority:
                lane = self._lane(priority, None)
                while lane.threads < lane.limit:
                    self._start_thread(lane)

    @property
    def caching(self) -> bool:
        """Whether results are cached."""
        return self.cache is not None

    def keeps_results_of(self, key: Hashable) -> bool:
        """Whether the last result of model version ``key`` (``ModelEntry.key``) was cached.

        A door need not digest the frames of a request whose result would not be kept
        (:mod:`frameserve.engine.keeping`): for a model quicker than copying its output out of
        its worker, hashing the 25 MB of a 1080p frame would be all the cache did.
        """
        return self._keeper.keeps_results_of(key)

    def cached(self, key: bytes) -> InferenceResult | None:
        """Look ``key`` up in the result cache (front doors that key requests themselves)."""
        if self.cache is None:
            return None
        result = self.cache.get(key)
        self.metrics.cache_lookup(hit=result is not None)
        if result is not None and result.worker is not None:
            result = dataclasses.replace(result, worker=None)  # no worker served this one
        return result

    def queue_depth(self, priority: Priority) -> int:
        """How many requests of ``priority`` wait to run."""
        with self._lock:
            return len(self._queues[priority])

    def running(self) -> dict[tuple[str, str | None], int]:
        """How many requests each model runs now, by ``(model id, version)`` (``None``: a
        request whose model was not found); models running none are left out."""
        with self._lock:
            return dict(self._running)

    def submit(self, request: InferenceRequest) -> Future[InferenceResult]:
        """Queue ``request``; the future holds its result or the error it raised.

        Cancel the future to drop the request while it is still queued. A request that carries
        its own ``cache_key`` was looked up by its front door already (:meth:`cached`); its
        result is stored under that key. Others are keyed and looked up here, unless the model's
        last result was not worth keeping (:meth:`keeps_results_of`).
        """
        future = RequestFuture()  # its cancel() also tells a running call's host
        request = dataclasses.replace(self._pinned(request), abandoned=future.abandoned)
        key = request.cache_key
        entry = request.entry
        if (
            key is None
            and entry is not None
            and entry.spec.cacheable
            and self.keeps_results_of(entry.key)
        ):
            key = internal_key(request, entry.version, token=entry.token)
            cached = self.cached(key)
            if cached is not None:
                future.set_running_or_notify_cancel()
                future.set_result(cached)
                return future
        try:
            lane_key = self.host.concurrency_key(request)
        except Exception:  # it fails with the host's error when it runs
            lane_key = None
        with self._lock:
            if self._closing:
                raise RequestCancelledError("the server is shutting down")
            self._queues[request.priority].push(_Ticket(request, future, key, lane_key))
            lane = self._lane(request.priority, lane_key)
            if lane.idle == 0 and lane.threads < lane.limit:
                self._start_thread(lane)
            # Wake the lane's threads: the right one sees the work, and one waiting out a
            # batch window gets its match.
            lane.condition.notify_all()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers; queued requests fail with :class:`RequestCancelledError`.

        Waits up to ``timeout`` seconds for running requests to finish, so that no worker is
        still inside a model while the interpreter shuts down (a daemon thread stopped inside
        native code can abort the whole process).
        """
        with self._lock:
            self._closing = True
            dropped: list[_Ticket] = []
            for queue in self._queues.values():
                for tickets in queue.groups.values():
                    dropped.extend(tickets)
                queue.groups.clear()
            for lane in self._lanes.values():
                lane.condition.notify_all()
            threads = list(self._threads)
        for ticket in dropped:
            _fail(ticket, RequestCancelledError("the server is shutting down"))
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._keeper.close()

    # -- lanes ---------------------------------------------------------------------------------

    def _lane(self, priority: Priority, key: Hashable) -> _Lane:
        """The lane of ``priority`` and ``key``, made if new (lock held)."""
        lane = self._lanes.get((priority, key))
        if lane is None:
            lane = _Lane(priority, key, self._limits[priority], self._lock)
            self._lanes[(priority, key)] = lane
        return lane

    def _start_thread(self, lane: _Lane) -> None:
        """Start one more thread for ``lane`` (lock held)."""
        lane.threads += 1
        name = f"frameserve-{lane.priority.name.lower()}-{lane.threads}"
        if lane.key is not None:
            name += f"-{_lane_name(lane.key)}"
        thread = threading.Thread(target=self._work, args=(lane,), name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    # -- workers -------------------------------------------------------------------------------

    def _work(self, lane: _Lane) -> None:
        if lane.priority is Priority.BATCH:
            lower_thread_priority()
        while True:
            batch = self._next_batch(lane)
            if batch is None:
                return
            self._run(batch)
            del batch  # its frames and results are not kept while the thread waits for work

    def _next_batch(self, lane: _Lane) -> list[_Ticket] | None:
        """Wait for work of ``lane``; return the tickets to run together (live ones).

        ``None``: the thread ends (the scheduler closes, or a model's lane has been idle for
        :data:`LANE_IDLE_SECONDS`).
        """
        queue = self._queues[lane.priority]
        with lane.condition:
            lane.idle += 1
            idle_until = time.monotonic() + LANE_IDLE_SECONDS
            try:
                while True:
                    ticket = self._pop_live(queue, lane.key)
                    if ticket is not None:
                        break
                    left = idle_until - time.monotonic()
                    if self._closing or (not lane.lasting and left <= 0):
                        lane.threads -= 1
                        if not lane.threads and self._lanes.get((lane.priority, lane.key)) is lane:
                            del self._lanes[(lane.priority, lane.key)]
                        return None
                    lane.condition.wait(None if lane.lasting else left)
            finally:
                lane.idle -= 1
            batch = [ticket]
            limit, window = self._batching(ticket.request)
            if limit > 1:
                deadline = time.monotonic() + window
                while True:
                    matching = queue.take_matching(ticket.request.batch_key, limit - len(batch))
                    batch += [t for t in matching if self._claim(t)]
                    remaining = deadline - time.monotonic()
                    if len(batch) >= limit or remaining <= 0 or self._closing:
                        break
                    lane.condition.wait(remaining)
        return batch

    def _pop_live(self, queue: _PriorityQueue, lane: Hashable) -> _Ticket | None:
        """Take the lane's next ticket in fairness order, dropping dead ones."""
        while (ticket := queue.pop(lane)) is not None:
            if self._claim(ticket):
                return ticket
        return None

    def _claim(self, ticket: _Ticket) -> bool:
        """Mark a ticket as running; ``False`` (and the ticket dropped) if it must not run."""
        deadline = ticket.request.deadline
        if deadline is not None and time.monotonic() > deadline:
            waited = (time.monotonic() - ticket.queued_at) * 1000
            _fail(
                ticket,
                DeadlineExceededError(
                    f"request dropped unrun: its deadline passed after {waited:.0f} ms in the queue"
                ),
            )
            self.metrics.dropped("deadline")
            return False
        if not ticket.future.set_running_or_notify_cancel():
            log.info(
                "dropped a cancelled request for %s from %s",
                ticket.request.model_id,
                ticket.request.client,
            )
            self.metrics.dropped("cancelled")
            return False
        return True

    def _pinned(self, request: InferenceRequest) -> InferenceRequest:
        """``request`` holding the model version it runs on (the newest, if it names none)."""
        if request.entry is not None:
            return request
        try:
            entry = self.host.registry.get(request.model_id)
        except FrameServeError:
            return request  # it fails with the registry's error when it runs
        return dataclasses.replace(request, entry=entry)

    def _batching(self, request: InferenceRequest) -> tuple[int, float]:
        if request.entry is None:
            return 1, 0.0
        spec = request.entry.spec
        return spec.max_batch_size, spec.batch_window_ms / 1000.0

    def _run(self, batch: list[_Ticket]) -> None:
        started = time.monotonic()
        model = batch[0].request.model_id
        for ticket in batch:
            self.metrics.queue_wait(model, started - ticket.queued_at)
        self.metrics.batch(model, len(batch))
        entry = batch[0].request.entry
        running = (model, None if entry is None else entry.version)
        with self._lock:
            self._running[running] = self._running.get(running, 0) + len(batch)
        outcomes: list[InferenceResult | BaseException]
        try:
            if len(batch) == 1:
                outcomes = [self.host.run(batch[0].request)]
            else:
                outcomes = list(self.host.run_batch([t.request for t in batch]))
        except FrameServeError as exc:
            outcomes = [exc] * len(batch)
        except Exception as exc:  # a worker must survive anything a model does
            log.exception("running %s failed unexpectedly", model)
            outcomes = [exc] * len(batch)
        except BaseException as exc:  # a plug-in's sys.exit: fail its requests, keep the thread
            log.error("model %s raised %s; its request fails", model, type(exc).__name__)
            error = ModelRunError(f"model {model!r} failed: it raised {type(exc).__name__}({exc})")
            outcomes = [error] * len(batch)
        finally:
            with self._lock:
                left = self._running.pop(running) - len(batch)
                if left:
                    self._running[running] = left
        seconds_each = (time.monotonic() - started) / len(batch)
        for ticket, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                _fail(ticket, outcome)
                continue
            key = ticket.cache_key
            entry = ticket.request.entry
            if (
                self.cache is not None
                and entry is not None
                and entry.spec.cacheable
                and not self._keeper.decide(entry.key, outcome, seconds_each, key)
            ):
                key = None  # not worth copying out of its worker (engine/keeping.py)
            if key is not None and self.cache is not None:
                self.cache.put(key, outcome)  # before the answer: a repeat finds it at once
            ticket.future.set_result(outcome)
            if key is not None and self.cache is not None:
                self._keeper.keep(key, outcome)


def _lane_name(key: Hashable) -> str:
    """A short name for a lane's threads: the model id of an ``(id, version, token)`` key."""
    if isinstance(key, tuple) and key and isinstance(key[0], str):
        return key[0] if len(key) < 2 or key[1] == "1" else f"{key[0]}-v{key[1]}"
    return str(key)[:24]


def _fail(ticket: _Ticket, error: BaseException) -> None:
    if ticket.future.running() or ticket.future.set_running_or_notify_cancel():
        ticket.future.set_exception(error)
