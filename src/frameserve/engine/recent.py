"""The requests a server answered lately: a bounded ring of the newest, and per-minute figures.

The doors report each answered request to :meth:`Engine.record_request
<frameserve.engine.engine.Engine.record_request>`, which also adds it here; the dashboard
reads it back::

    recent = RecentRequests(capacity=200)
    recent.add(model="blur", protocol="http", outcome="ok", seconds=0.012, user="maya",
               size="1920x1080")
    recent.latest(20)        # newest first: [RecentRequest(model='blur', ...)]
    recent.per_minute()      # [{"minute": 1733530800, "count": 1, "p50_ms": 12.0, ...}, ...]

Memory is bounded whatever the traffic: ``capacity`` requests, and for each of the last
``window_minutes`` minutes a count and at most :data:`SAMPLES_PER_MINUTE` latencies (a uniform
reservoir sample, so the percentiles of a busy minute are estimates).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SAMPLES_PER_MINUTE", "RecentRequest", "RecentRequests"]

#: Latencies kept per minute for the percentiles.
SAMPLES_PER_MINUTE = 256


@dataclass(frozen=True)
class RecentRequest:
    """One answered request: when (Unix seconds), who, which model, its frame size, how long,
    how it ended."""

    sequence: int  #: 1, 2, 3... in the order they were added
    time: float
    model: str
    protocol: str
    outcome: str
    milliseconds: float
    user: str
    #: Its frames' width x height (``"1920x1080"``; a batch: ``"1920x1080 (4 frames)"``);
    #: ``"-"`` when the door did not get that far (an unknown model, a malformed request).
    size: str = "-"

    def to_dict(self) -> dict[str, Any]:
        """Return plain JSON-ready data."""
        return {
            "sequence": self.sequence,
            "time": self.time,
            "model": self.model,
            "protocol": self.protocol,
            "outcome": self.outcome,
            "milliseconds": round(self.milliseconds, 3),
            "user": self.user,
            "size": self.size,
        }


@dataclass
class _Minute:
    start: int
    count: int = 0
    errors: int = 0
    samples: list[float] = field(default_factory=list)


class RecentRequests:
    """A thread-safe ring of the newest ``capacity`` requests and per-minute figures.

    ``clock``: Unix time now (tests give their own).
    """

    def __init__(
        self,
        capacity: int = 200,
        *,
        window_minutes: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ring: deque[RecentRequest] = deque(maxlen=capacity)
        self._minutes: deque[_Minute] = deque(maxlen=window_minutes)
        self._window = window_minutes
        self._sequence = 0
        self._random = random.Random(0)

    @property
    def sequence(self) -> int:
        """The sequence number of the newest request (0: none yet)."""
        return self._sequence

    def add(
        self,
        *,
        model: str,
        protocol: str,
        outcome: str,
        seconds: float,
        user: str = "-",
        size: str = "-",
    ) -> None:
        """Remember one answered request (``size``: its frames', see :class:`RecentRequest`)."""
        now = self._clock()
        minute = int(now // 60) * 60
        with self._lock:
            self._sequence += 1
            self._ring.append(
                RecentRequest(
                    self._sequence, now, model, protocol, outcome, seconds * 1000, user, size
                )
            )
            if not self._minutes or self._minutes[-1].start != minute:
                self._minutes.append(_Minute(minute))
            bucket = self._minutes[-1]
            bucket.count += 1
            bucket.errors += outcome != "ok"
            if len(bucket.samples) < SAMPLES_PER_MINUTE:
                bucket.samples.append(seconds * 1000)
            else:  # reservoir sampling: every request of the minute equally likely to be kept
                slot = self._random.randrange(bucket.count)
                if slot < SAMPLES_PER_MINUTE:
                    bucket.samples[slot] = seconds * 1000

    def latest(self, count: int, *, after: int = 0) -> list[RecentRequest]:
        """The newest ``count`` requests with a sequence number above ``after``, newest first."""
        with self._lock:
            found = [r for r in reversed(self._ring) if r.sequence > after]
        return found[:count]

    def per_minute(self) -> list[dict[str, Any]]:
        """For each minute of the window with requests, oldest first: its start (Unix seconds),
        request count, errors and latency percentiles (p50, p95, in milliseconds)."""
        oldest = int(self._clock() // 60) * 60 - (self._window - 1) * 60
        with self._lock:
            minutes = [(m.start, m.count, m.errors, sorted(m.samples)) for m in self._minutes]
        return [
            {
                "minute": start,
                "count": count,
                "errors": errors,
                "p50_ms": _percentile(samples, 0.50),
                "p95_ms": _percentile(samples, 0.95),
            }
            for start, count, errors, samples in minutes
            if start >= oldest
        ]


def _percentile(ordered: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ``ordered`` (nearest rank); ``None`` for no samples."""
    if not ordered:
        return None
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return round(ordered[rank], 3)
