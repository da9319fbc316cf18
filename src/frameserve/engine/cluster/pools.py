"""The gateway's side of pools: one Ray Serve application per pool, and what its replicas hold.

A pool (``[pools.NAME]`` in the deployment file) is deployed as the application
``frameserve.pool:NAME`` at the first request of one of its models; its replicas
(:class:`~frameserve.engine.cluster.pooled.PoolReplica`) load models on demand. Every answer of
a pool replica lists the models it holds, so :class:`PoolApps` knows which replica holds which
model version (for ``/metrics``, the dashboard's "loaded" and memory) without asking Ray; when
a call of the pool's replicas crashed, what they held is forgotten until they answer again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from frameserve.engine.cluster.connect import APP_PREFIX, first_line
from frameserve.engine.cluster.deployments import Pool
from frameserve.engine.cluster.pooled import PoolConfig, PoolReplica, multiplexed_id
from frameserve.engine.cluster.replica import ReplicaSettings
from frameserve.engine.metrics import Metrics
from frameserve.engine.workers.host import ModelState
from frameserve.errors import ModelLoadError

__all__ = ["PoolApp", "PoolApps", "pool_app_name"]

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]


def pool_app_name(pool: str) -> str:
    """The Ray Serve application of pool ``pool`` (never a model's: those have no ``:``)."""
    return f"{APP_PREFIX}pool:{pool}"


@dataclass
class _Holding:
    """What one replica of a pool said it holds in its last answer."""

    node: str
    held: dict[str, tuple[str, int]]
    loads: int = 0
    unloads: int = 0


@dataclass
class PoolApp:
    """One pool's Ray Serve application as the gateway knows it."""

    pool: Pool
    app: str
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    handle: Any = None
    state: ModelState = ModelState.IDLE
    error: str | None = None
    replicas: dict[str, int] = dataclasses.field(default_factory=dict)
    holdings: dict[str, _Holding] = dataclasses.field(default_factory=dict)


class PoolApps:
    """The pools' applications: deployed on demand, and the models their replicas hold.

    Args:
        deploy: deploys an application (name, replica class, its config, resources) and
            returns its handle and the first replica's ``info()``.
        metrics: where the models each replica holds are shown.
    """

    def __init__(
        self,
        deploy: Callable[[str, type, object, Any], tuple[Any, Mapping[str, Any]]],
        metrics: Metrics,
    ) -> None:
        self._deploy = deploy
        self._lock = threading.Lock()
        self.apps: dict[str, PoolApp] = {}
        metrics.gauge(
            "frameserve_ray_replica_models",
            "Model versions each Ray Serve replica of a pool holds (1 each), by pool, replica, "
            "node, model and version.",
            self._held_rows,
        )
        metrics.gauge(
            "frameserve_ray_replica_unloads",
            "Models each Ray Serve replica of a pool unloaded (least recently used or replaced).",
            self._unload_rows,
        )

    def handle(self, pool: Pool, settings: ReplicaSettings) -> Any:
        """The handle of ``pool``'s application, deploying it first if needed."""
        with self._lock:
            app = self.apps.get(pool.name)
            if app is None:
                app = self.apps[pool.name] = PoolApp(pool, pool_app_name(pool.name))
        with app.lock:
            if app.handle is not None:
                return app.handle
            if app.state is ModelState.FAILED:
                raise ModelLoadError(f"pool {pool.name!r} cannot be deployed: {app.error}")
            app.state = ModelState.LOADING
            config = PoolConfig(pool.name, pool.max_models_per_replica, settings)
            log.info("deploying pool %s on Ray Serve (%s)", pool.name, pool.resources)
            started = time.monotonic()
            try:
                handle, info = self._deploy(app.app, PoolReplica, config, pool.resources)
            except Exception as exc:
                app.state = ModelState.FAILED
                app.error = first_line(exc)
                raise ModelLoadError(
                    f"pool {pool.name!r} cannot be deployed on Ray Serve: {app.error}"
                ) from exc
            app.handle, app.state = handle, ModelState.READY
            self.record(pool.name, info)
            log.info(
                "pool %s deployed on Ray Serve in %.1f s (replica %s, at most %d models each)",
                pool.name,
                time.monotonic() - started,
                info.get("replica"),
                pool.max_models_per_replica,
            )
            return handle

    def record(self, pool: str, figures: Mapping[str, Any]) -> None:
        """Note what a replica of ``pool`` holds, from its answer's figures."""
        app = self.apps.get(pool)
        if app is None or "held" not in figures:
            return
        replica = str(figures["replica"])
        before = app.holdings.get(replica)
        gone = sorted(set(before.held) - set(figures["held"])) if before is not None else []
        for key in gone:
            log.info(
                "replica %s of pool %s unloaded model %s; it holds %s",
                replica,
                pool,
                key,
                ", ".join(sorted(figures["held"])) or "none",
            )
        app.holdings[replica] = _Holding(
            str(figures.get("node", "")),
            dict(figures["held"]),
            int(figures.get("loads", 0)),
            int(figures.get("unloads", 0)),
        )

    def reset(self, pool: str) -> bool:
        """Clear ``pool``'s failed state (deployed again on demand); whether it had failed."""
        app = self.apps.get(pool)
        if app is None or app.state is not ModelState.FAILED:
            return False
        with app.lock:
            app.state, app.error = ModelState.IDLE, None
        return True

    def forget_holdings(self, pool: str) -> None:
        """Forget what ``pool``'s replicas hold (one died; the others say it again)."""
        app = self.apps.get(pool)
        if app is not None:
            app.holdings = {}

    def held(self, pool: str, model_id: str, version: str, token: str) -> list[int]:
        """The bytes each replica of ``pool`` holding that model version (that token) uses."""
        app = self.apps.get(pool)
        if app is None:
            return []
        key = multiplexed_id(model_id, version)
        return [
            size
            for holding in list(app.holdings.values())
            for held_token, size in [holding.held.get(key, ("", 0))]
            if held_token == token
        ]

    def held_models(self) -> list[tuple[str, str]]:
        """Every model version held by some replica of some pool (id, version)."""
        found = {
            tuple(key.rsplit("@", 1))
            for app in list(self.apps.values())
            for holding in list(app.holdings.values())
            for key in holding.held
        }
        return sorted((k[0], k[1]) for k in found if len(k) == 2)

    def bytes_in_use(self) -> int:
        """What the models held by every pool replica use."""
        return sum(
            size
            for app in list(self.apps.values())
            for holding in list(app.holdings.values())
            for _, size in holding.held.values()
        )

    def _held_rows(self) -> list[tuple[Labels, float]]:
        rows: list[tuple[Labels, float]] = []
        for app in list(self.apps.values()):
            for replica, holding in list(app.holdings.items()):
                for key in sorted(holding.held):
                    model, _, version = key.rpartition("@")
                    labels = (
                        ("pool", app.pool.name),
                        ("replica", replica),
                        ("node", holding.node),
                        ("model", model),
                        ("version", version),
                    )
                    rows.append((labels, 1.0))
        return rows

    def _unload_rows(self) -> list[tuple[Labels, float]]:
        return [
            ((("pool", app.pool.name), ("replica", replica)), float(holding.unloads))
            for app in list(self.apps.values())
            for replica, holding in list(app.holdings.items())
        ]
