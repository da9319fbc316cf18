"""What the gateway's ``/metrics`` shows of the replicas on a Ray cluster.

Every answer of a replica carries its name (``host:pid``), its Ray node and the seconds the
call took (:mod:`~frameserve.engine.cluster.replica`); :class:`ReplicaFigures` adds them up
per replica and shows them as gauges next to the replicas' count by state, which the host
reads from Ray Serve's status.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from frameserve.engine.metrics import Metrics

__all__ = ["ReplicaFigures"]

Labels = tuple[tuple[str, str], ...]


class ReplicaFigures:
    """Calls and busy seconds per replica, and replicas per model version by state."""

    def __init__(
        self,
        metrics: Metrics,
        replica_states: Callable[[], Iterable[tuple[str, str, Mapping[str, int]]]],
    ) -> None:
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str, str, str], list[float]] = {}
        self._states = replica_states
        metrics.gauge(
            "frameserve_ray_replica_calls",
            "Calls each Ray Serve replica answered, by model, version, replica and node.",
            lambda: self._column(0),
        )
        metrics.gauge(
            "frameserve_ray_replica_busy_seconds",
            "Seconds each Ray Serve replica spent running calls, by model, version, replica, node.",
            lambda: self._column(1),
        )
        metrics.gauge(
            "frameserve_ray_replicas",
            "Ray Serve replicas of each model version, by state.",
            self._replicas,
        )

    def record(self, model: str, version: str, figures: Mapping[str, Any]) -> None:
        """Count one call a replica answered (``figures``: its replica, node and seconds)."""
        key = (model, version, str(figures["replica"]), str(figures.get("node", "")))
        with self._lock:
            row = self._rows.setdefault(key, [0.0, 0.0])
            row[0] += 1
            row[1] += float(figures["seconds"])

    def _column(self, index: int) -> list[tuple[Labels, float]]:
        with self._lock:
            rows = list(self._rows.items())
        return [
            (
                (("model", model), ("version", version), ("replica", replica), ("node", node)),
                row[index],
            )
            for (model, version, replica, node), row in rows
        ]

    def _replicas(self) -> list[tuple[Labels, float]]:
        return [
            ((("model", model), ("version", version), ("state", state)), float(count))
            for model, version, states in self._states()
            for state, count in states.items()
        ]
