"""Server metrics in the Prometheus text format (``GET /metrics`` on the HTTP port).

Counters and histograms are recorded as requests go by; gauges (queue depth, memory, models
loaded, cache size) are read when the metrics are scraped. Every metric is named
``frameserve_*``; the list is in :meth:`Metrics.render`.

``frameserve_requests_total`` carries a ``user`` label for requests of an authenticated user
(HTTP with tokens); requests without one (no tokens, the MLClient door) have no ``user`` label,
which Prometheus reads as empty. At most :data:`MAX_USER_LABELS` names get their own label;
later ones are counted as ``other``, so the label set, and memory, stay bounded whatever
the token file holds.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

__all__ = ["MAX_USER_LABELS", "OTHER_USERS", "Metrics"]

#: Latency buckets in seconds: from a cache hit to a slow 8K frame.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: Users counted under their own name in ``frameserve_requests_total``; later ones are ``other``.
MAX_USER_LABELS = 50
#: The ``user`` label of requests of users beyond :data:`MAX_USER_LABELS`.
OTHER_USERS = "other"
#: Who a request is without authentication: no ``user`` label.
NO_USER = "-"

Labels = tuple[tuple[str, str], ...]


class _Histogram:
    """Cumulative buckets, a sum and a count, per label set."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts: dict[Labels, list[int]] = defaultdict(lambda: [0] * len(self.buckets))
        self.sums: dict[Labels, float] = defaultdict(float)
        self.totals: dict[Labels, int] = defaultdict(int)

    def observe(self, labels: Labels, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        counts = self.counts[labels]
        for position in range(index, len(counts)):
            counts[position] += 1
        self.sums[labels] += value
        self.totals[labels] += 1

    def lines(self, name: str) -> list[str]:
        lines = []
        for labels, counts in sorted(self.counts.items()):
            for bound, count in zip(self.buckets, counts, strict=True):
                lines.append(f"{name}_bucket{_format((*labels, ('le', f'{bound:g}')))} {count}")
            lines.append(f"{name}_bucket{_format((*labels, ('le', '+Inf')))} {self.totals[labels]}")
            lines.append(f"{name}_sum{_format(labels)} {self.sums[labels]:.6f}")
            lines.append(f"{name}_count{_format(labels)} {self.totals[labels]}")
        return lines


def _number(value: float) -> str:
    """Whole numbers exactly (byte counts), others in full precision."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    """Escape a label value as the text format requires: backslash, quote, line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels) + "}"


class Metrics:
    """Thread-safe counters and histograms of one server, and gauges read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[Labels, int] = defaultdict(int)
        self._dropped: dict[Labels, int] = defaultdict(int)
        self._cache: dict[Labels, int] = defaultdict(int)
        self._latency = _Histogram(LATENCY_BUCKETS)
        self._queue_wait = _Histogram(LATENCY_BUCKETS)
        self._batches = _Histogram(BATCH_BUCKETS)
        self._restarts: dict[Labels, int] = defaultdict(int)
        self._crashes: dict[Labels, int] = defaultdict(int)
        self._timeouts: dict[Labels, int] = defaultdict(int)
        self._gauges: dict[str, tuple[str, Callable[[], Iterable[tuple[Labels, float]]]]] = {}
        self._users: set[str] = set()

    def request(
        self, *, model: str, protocol: str, outcome: str, seconds: float, user: str = NO_USER
    ) -> None:
        """Count one answered request (``outcome``: ``ok`` or an error class) and its latency.

        ``user``: who sent it (``-``: nobody authenticated, no ``user`` label).
        """
        labels: Labels = (("model", model), ("protocol", protocol), ("outcome", outcome))
        with self._lock:
            if user != NO_USER:
                labels = (*labels, ("user", self._user_label(user)))
            self._requests[labels] += 1
            self._latency.observe((("model", model),), seconds)

    def _user_label(self, user: str) -> str:
        """``user``, or :data:`OTHER_USERS` once :data:`MAX_USER_LABELS` names are counted."""
        if user in self._users:
            return user
        if len(self._users) < MAX_USER_LABELS:
            self._users.add(user)
            return user
        return OTHER_USERS

    def cache_lookup(self, *, hit: bool) -> None:
        """Count a result cache hit or miss."""
        with self._lock:
            self._cache[(("result", "hit" if hit else "miss"),)] += 1

    def dropped(self, reason: str) -> None:
        """Count a request dropped unrun (``cancelled`` or ``deadline``)."""
        with self._lock:
            self._dropped[(("reason", reason),)] += 1

    def queue_wait(self, model: str, seconds: float) -> None:
        """Record how long a request waited in the queue."""
        with self._lock:
            self._queue_wait.observe((("model", model),), seconds)

    def batch(self, model: str, size: int) -> None:
        """Record the size of a batch that ran."""
        with self._lock:
            self._batches.observe((("model", model),), size)

    def worker_restart(self, model: str, reason: str) -> None:
        """Count a model's worker started again after it ended (``reason``: why it ended)."""
        with self._lock:
            self._restarts[(("model", model), ("reason", reason))] += 1

    def worker_crash(self, model: str, reason: str) -> None:
        """Count a model's worker dying (``exit``, ``signal`` or ``memory``)."""
        with self._lock:
            self._crashes[(("model", model), ("reason", reason))] += 1

    def model_timeout(self, model: str) -> None:
        """Count a call of a model that ran past its timeout or its requests' deadline."""
        with self._lock:
            self._timeouts[(("model", model),)] += 1

    def gauge(
        self, name: str, help_text: str, read: Callable[[], Iterable[tuple[Labels, float]]]
    ) -> None:
        """Register a gauge read at scrape time: ``read()`` yields ``(labels, value)``."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        """Return every metric in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            blocks = [
                _counter(
                    "frameserve_requests_total",
                    "Requests answered, by model, protocol, outcome and user.",
                    self._requests,
                ),
                _counter(
                    "frameserve_requests_dropped_total",
                    "Requests dropped before they ran, by reason.",
                    self._dropped,
                ),
                _counter(
                    "frameserve_cache_lookups_total",
                    "Result cache lookups, by result (hit or miss).",
                    self._cache,
                ),
                _histogram(
                    "frameserve_request_duration_seconds",
                    "Time from a request's arrival to its answer, by model.",
                    self._latency,
                ),
                _histogram(
                    "frameserve_queue_wait_seconds",
                    "Time requests waited in the queue, by model.",
                    self._queue_wait,
                ),
                _histogram(
                    "frameserve_batch_size", "Requests run together in one batch.", self._batches
                ),
                _counter(
                    "frameserve_worker_restarts_total",
                    "Model worker processes started again after one ended, by model and why it "
                    "ended (exit, signal, memory, timeout).",
                    self._restarts,
                ),
                _counter(
                    "frameserve_worker_crashes_total",
                    "Model worker processes that died, by model and cause (exit, signal, memory).",
                    self._crashes,
                ),
                _counter(
                    "frameserve_model_timeouts_total",
                    "Calls that ran past their model's timeout or their deadline, by model.",
                    self._timeouts,
                ),
            ]
        for name, (help_text, read) in sorted(self._gauges.items()):
            lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f"{name}{_format(labels)} {_number(value)}" for labels, value in read()]
            blocks.append("\n".join(lines))
        return "\n".join(blocks) + "\n"


def _counter(name: str, help_text: str, values: dict[Labels, int]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    lines += [f"{name}{_format(labels)} {count}" for labels, count in sorted(values.items())]
    return "\n".join(lines)


def _histogram(name: str, help_text: str, histogram: _Histogram) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.lines(name)]
    return "\n".join(lines)
