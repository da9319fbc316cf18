"""Joining a Ray cluster and starting Ray Serve on it, and mapping Ray's errors onto ours.

Ray is an optional dependency (``pip install 'frameserve[ray]'``): it is imported here, when a
:class:`~frameserve.engine.cluster.host.RayHost` is made, never when frameserve is imported.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from frameserve.engine.cluster.deployments import Resources
from frameserve.errors import (
    ConfigError,
    FrameServeError,
    ModelCrashedError,
    ModelRunError,
    ModelTimeoutError,
)

__all__ = [
    "APP_PREFIX",
    "app_name",
    "connect",
    "deploy_application",
    "first_line",
    "import_ray",
    "ray_error",
]

log = logging.getLogger(__name__)

#: Ray Serve applications of frameserve are named ``frameserve.<model>.v<version>``.
APP_PREFIX = "frameserve."
#: The Ray namespace the gateway's driver joins.
NAMESPACE = "frameserve"


def import_ray() -> tuple[ModuleType, ModuleType]:
    """``ray`` and ``ray.serve``, or a :class:`ConfigError` saying how to install them."""
    try:
        with warnings.catch_warnings():  # Ray's own use of old pydantic APIs is not our news
            warnings.simplefilter("ignore", DeprecationWarning)
            import ray
            from ray import serve
    except ImportError as exc:
        raise ConfigError(
            "serving on a Ray cluster needs Ray Serve: pip install 'frameserve[ray]' "
            f"(or 'ray[serve]>=2.40,<3'); importing it failed: {exc}"
        ) from exc
    return ray, serve


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the local one, started if none runs).

    A driver that is already connected (``ray.init`` called before) is used as it is. Ray Serve
    is started without its HTTP proxy: the front doors stay on the gateway. Returns whether
    this call started or joined Ray (then closing the host disconnects).
    """
    ray, serve = import_ray()
    joined = False
    if not ray.is_initialized():
        target = None if address in ("", "auto", "local") else address
        try:
            ray.init(
                address=target,
                namespace=NAMESPACE,
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"cannot join the Ray cluster at {address!r}: {exc}; give the head node's "
                "address (host:6379 or ray://host:10001) or 'auto' for a local Ray"
            ) from exc
        joined = True
    serve.start(proxy_location="Disabled")
    return joined


def app_name(model_id: str, version: str) -> str:
    """The Ray Serve application of ``model_id`` version ``version``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_id)
    return f"{APP_PREFIX}{safe}.v{version}"


def deploy_application(
    name: str,
    replica_class: type,
    config: object,
    resources: Resources,
    *,
    lock: threading.Lock,
    wait_s: float = 60.0,
) -> tuple[Any, Mapping[str, Any]]:
    """Deploy ``replica_class(config)`` as the application ``name`` and wait until it runs.

    Returns its handle and its first replica's ``info()``. ``lock`` is held while Ray pickles
    the application (which is not thread-safe).
    """
    _, serve = import_ray()
    with lock:
        app = (
            serve.deployment(replica_class)
            .options(name="model", **resources.deployment_options())
            .bind(config)
        )
        handle = serve.run(app, name=name, route_prefix=None)
    info = handle.info.remote().result(timeout_s=wait_s)
    return handle, info


def ray_error(exc: BaseException, model_id: str, seconds: float | None = None) -> FrameServeError:
    """Ray's ``exc`` from a call of ``model_id``'s deployment, as the engine's error."""
    ray, _ = import_ray()
    exceptions: Any = ray.exceptions
    if isinstance(exc, FrameServeError):
        return exc
    if isinstance(exc, TimeoutError | exceptions.GetTimeoutError):
        return ModelTimeoutError(
            f"model {model_id!r} ran past its timeout ({seconds or 0:g} s) on the cluster; "
            "its call was cancelled"
        )
    if isinstance(exc, exceptions.RayActorError | exceptions.ActorUnavailableError):
        return ModelCrashedError(
            f"the Ray Serve replica running model {model_id!r} died while running this request "
            f"({type(exc).__name__}); Ray Serve starts a new one"
        )
    if isinstance(exc, exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if isinstance(cause, FrameServeError):
            return cause
        return ModelRunError(f"model {model_id!r} failed on the cluster: {first_line(cause)}")
    return ModelRunError(f"model {model_id!r} failed on the cluster: {first_line(exc)}")


def first_line(exc: BaseException) -> str:
    """``exc`` as its type's name and the first line of its message (Ray's run long)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
