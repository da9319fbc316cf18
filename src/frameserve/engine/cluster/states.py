"""What the gateway knows of its Ray Serve applications: following their state, deleting them.

:class:`Deployment` is what the host knows of each model version's application (or its place
in a pool). Every few seconds the host reads Ray Serve's status, and :func:`follow_states`
turns it into each application's replicas by state and the engine's
:class:`~frameserve.engine.workers.host.ModelState` (``RESTARTING`` while no replica runs), for a
model's own application and a pool's alike.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from frameserve.catalogue.entries import ModelEntry
from frameserve.engine.cluster.replica import ModelRef
from frameserve.engine.workers.host import ModelState

__all__ = ["Deployment", "Followed", "delete_applications", "follow_states"]

log = logging.getLogger(__name__)


class Followed(Protocol):
    """An application the gateway deployed (a model version's, or a pool's)."""

    app: str
    handle: Any
    lock: threading.Lock
    state: ModelState
    replicas: dict[str, int]


@dataclass
class Deployment:
    """One model version's Ray Serve application (or place in a pool) as the gateway knows it."""

    app: str
    entry: ModelEntry
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    handle: Any = None
    state: ModelState = ModelState.IDLE
    error: str | None = None
    model_bytes: int = 0
    replicas: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The pool whose application runs it (``""``: an application of its own), and the
    #: model version its calls name there.
    pool: str = ""
    ref: ModelRef | None = None


def follow_states(applications: Mapping[str, Any], followed: Iterable[Followed]) -> None:
    """Set each application's replica counts and state from Ray Serve's ``applications``."""
    for deployment in followed:
        app = applications.get(deployment.app)
        if app is None or deployment.handle is None:
            continue
        overview = next(iter(app.deployments.values()), None)
        if overview is None:
            continue
        deployment.replicas = {str(k): int(v) for k, v in overview.replica_states.items()}
        health = str(getattr(overview.status, "value", overview.status))
        if deployment.lock.locked():
            continue  # being deployed: the deployer sets the state
        if health == "HEALTHY":
            deployment.state = ModelState.READY
        elif deployment.replicas.get("RUNNING", 0) == 0:
            deployment.state = ModelState.RESTARTING


def delete_applications(serve: ModuleType, apps: list[str], wait_s: float) -> None:
    """Delete ``apps`` all at once; wait up to ``wait_s`` for their replicas to stop."""
    for app in apps:  # each waits for its replicas' graceful shutdown
        try:
            serve.delete(app, _blocking=False)
        except Exception:
            log.warning("cannot delete the Ray Serve application %s", app)
    deadline = time.monotonic() + wait_s
    while apps and time.monotonic() < deadline:
        try:
            running = serve.status().applications
        except Exception:
            break
        apps = [app for app in apps if app in running]
        time.sleep(0.2)
