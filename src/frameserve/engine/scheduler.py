"""Deciding when requests run: priorities, fairness, batching, cancellation and the cache.

Front doors ``submit`` a checked :class:`InferenceRequest` and wait on the returned future;
they never call the runner themselves. The rules, in order:

1. **Cache**: a request identical to one answered before (model, version and token, knob
   values, colourspace, frame bytes) is answered at once from the :class:`ResultCache`. A
   request that names no exact model version is given the registry's newest when it arrives
   (:attr:`InferenceRequest.entry`), so it runs on the version its cache key names even if the
   model is reloaded while it waits.
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

Requests run on ``workers`` interactive and ``batch_workers`` batch threads (inference releases
the GIL, so the front doors keep answering while models compute).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from frameserve.engine.cache import ResultCache, internal_key
from frameserve.engine.metrics import Metrics
from frameserve.engine.request import InferenceRequest, InferenceResult, Priority
from frameserve.engine.runner import Runner
from frameserve.errors import DeadlineExceededError, FrameServeError, RequestCancelledError

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

#: How much lower (in ``nice`` steps) batch workers run than interactive ones.
BATCH_NICENESS = 10


@dataclass(eq=False)  # tickets are compared by identity, never by their frames
class _Ticket:
    """A queued request, its future and when it arrived."""

    request: InferenceRequest
    future: Future[InferenceResult]
    cache_key: bytes | None
    queued_at: float = field(default_factory=time.monotonic)


class _PriorityQueue:
    """The queued tickets of one priority: a FIFO per group, groups served in turn."""

    def __init__(self) -> None:
        self.groups: OrderedDict[str, deque[_Ticket]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(tickets) for tickets in self.groups.values())

    def push(self, ticket: _Ticket) -> None:
        self.groups.setdefault(ticket.request.group, deque()).append(ticket)

    def pop(self) -> _Ticket | None:
        """Take the oldest ticket of the next group in turn; that group goes to the back."""
        while self.groups:
            group, tickets = next(iter(self.groups.items()))
            self.groups.move_to_end(group)
            if tickets:
                ticket = tickets.popleft()
                if not tickets:
                    del self.groups[group]
                return ticket
            del self.groups[group]
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


class Scheduler:
    """Queues requests by priority and group, batches them, and runs them on worker threads."""

    def __init__(
        self,
        runner: Runner,
        *,
        workers: int = 2,
        batch_workers: int = 1,
        cache: ResultCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.runner = runner
        self.cache = cache
        self.metrics = metrics or Metrics()
        self._queues = {priority: _PriorityQueue() for priority in Priority}
        self._condition = threading.Condition()
        self._closing = False
        pools = [(Priority.INTERACTIVE, workers), (Priority.BATCH, batch_workers)]
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(priority,),
                name=f"frameserve-{priority.name.lower()}-{index}",
                daemon=True,
            )
            for priority, count in pools
            for index in range(count)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def caching(self) -> bool:
        """Whether results are cached."""
        return self.cache is not None

    def cached(self, key: bytes) -> InferenceResult | None:
        """Look ``key`` up in the result cache (front doors that key requests themselves)."""
        if self.cache is None:
            return None
        result = self.cache.get(key)
        self.metrics.cache_lookup(hit=result is not None)
        return result

    def queue_depth(self, priority: Priority) -> int:
        """How many requests of ``priority`` wait to run."""
        with self._condition:
            return len(self._queues[priority])

    def submit(self, request: InferenceRequest) -> Future[InferenceResult]:
        """Queue ``request``; the future holds its result or the error it raised.

        Cancel the future to drop the request while it is still queued. A request that carries
        its own ``cache_key`` was looked up by its front door already (:meth:`cached`); its
        result is stored under that key. Others are keyed and looked up here.
        """
        future: Future[InferenceResult] = Future()
        request = self._pinned(request)
        key = request.cache_key
        entry = request.entry
        if key is None and self.cache is not None and entry is not None and entry.spec.cacheable:
            key = internal_key(request, entry.version, token=entry.token)
            cached = self.cached(key)
            if cached is not None:
                future.set_running_or_notify_cancel()
                future.set_result(cached)
                return future
        with self._condition:
            if self._closing:
                raise RequestCancelledError("the server is shutting down")
            self._queues[request.priority].push(_Ticket(request, future, key))
            # Every worker waits on this condition: wake all, so the right pool sees the work
            # and a worker waiting out a batch window gets its match.
            self._condition.notify_all()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers; queued requests fail with :class:`RequestCancelledError`.

        Waits up to ``timeout`` seconds for running requests to finish, so that no worker is
        still inside a model while the interpreter shuts down (a daemon thread stopped inside
        native code can abort the whole process).
        """
        with self._condition:
            self._closing = True
            dropped: list[_Ticket] = []
            for queue in self._queues.values():
                while (ticket := queue.pop()) is not None:
                    dropped.append(ticket)
            self._condition.notify_all()
        for ticket in dropped:
            _fail(ticket, RequestCancelledError("the server is shutting down"))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- workers -------------------------------------------------------------------------------

    def _work(self, priority: Priority) -> None:
        if priority is Priority.BATCH:
            _lower_thread_priority()
        while True:
            batch = self._next_batch(priority)
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self, priority: Priority) -> list[_Ticket] | None:
        """Wait for work of ``priority``; return the tickets to run together (live ones)."""
        queue = self._queues[priority]
        with self._condition:
            while True:
                ticket = self._pop_live(queue)
                if ticket is not None:
                    break
                if self._closing:
                    return None
                self._condition.wait()
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
                    self._condition.wait(remaining)
        return batch

    def _pop_live(self, queue: _PriorityQueue) -> _Ticket | None:
        """Take the next ticket in fairness order, dropping dead ones."""
        while (ticket := queue.pop()) is not None:
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
            entry = self.runner.registry.get(request.model_id)
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
        try:
            if len(batch) == 1:
                outcomes: list[InferenceResult | FrameServeError] = [
                    self.runner.run(batch[0].request)
                ]
            else:
                outcomes = self.runner.run_batch([t.request for t in batch])
        except FrameServeError as exc:
            outcomes = [exc] * len(batch)
        except Exception as exc:  # a worker must survive anything a model does
            log.exception("running %s failed unexpectedly", model)
            outcomes = [exc] * len(batch)  # type: ignore[list-item]
        for ticket, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                _fail(ticket, outcome)
                continue
            if ticket.cache_key is not None and self.cache is not None:
                self.cache.put(ticket.cache_key, outcome)
            ticket.future.set_result(outcome)


def _lower_thread_priority() -> None:
    """Give the calling thread (and threads it starts, such as torch's) a lower CPU priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BATCH_NICENESS)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run at normal priority
        log.debug("batch worker keeps normal priority: %s", exc)


def _fail(ticket: _Ticket, error: BaseException) -> None:
    if ticket.future.running() or ticket.future.set_running_or_notify_cancel():
        ticket.future.set_exception(error)
