"""How each model's Ray Serve deployment is sized: resources and replicas, from a file.

A *deployment file* (``frameserve serve --ray ADDRESS --ray-deployments FILE``) is TOML or JSON
(told apart by the ``.json`` suffix). ``[default]`` applies to every model; ``[models.ID]`` to
every version of model ``ID``, ``[models."ID@VERSION"]`` to one version (the most specific
table wins, key by key)::

    [default]
    num_cpus = 1                 # CPUs one replica reserves (fractions allowed)
    num_gpus = 0                 # GPUs one replica reserves (fractions share a GPU)
    min_replicas = 1             # replicas kept running
    max_replicas = 1             # more than min: Ray Serve adds replicas under load
    max_ongoing_requests = 4     # calls one replica runs at once

    [models.upscale]
    num_gpus = 1
    max_replicas = 4
    resources = { a100 = 1 }     # custom resources a node advertises (`ray start --resources`)

With more models than GPUs, a *pool* shares replicas between models: ``[pools.NAME]`` sizes
one Ray Serve deployment (the keys above, plus ``max_models_per_replica``) whose replicas load
the models sent to them on demand and unload the least recently used past that count, and
``pool = "NAME"`` in ``[default]`` or a model's table puts models in it (``pool = ""``: a
deployment of its own)::

    [pools.gpu]
    num_gpus = 1
    max_replicas = 2
    max_models_per_replica = 3   # models one replica holds at once

    [models.denoise]
    pool = "gpu"                 # its resources are the pool's

``[training]`` gives what each training job's Ray task reserves (``frameserve serve --ray``
runs every job's run as a task on the cluster, :mod:`frameserve.training.jobs.cluster`)::

    [training]
    num_cpus = 1                 # CPUs a job's task reserves                          default 1
    num_gpus = 1                 # GPUs it reserves (default: 1 for a job on "cuda", else 0)
    resources = { a100 = 1 }     # custom resources: pins jobs to the nodes that have them

Unknown keys and values out of range are refused with a :class:`~frameserve.errors.ConfigError`
naming the file, the table and what is allowed.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from frameserve.errors import ConfigError

__all__ = [
    "HEALTH_CHECK_SECONDS",
    "DeploymentPlan",
    "Pool",
    "Resources",
    "TrainingResources",
    "load_deployments",
]

#: How often Ray Serve checks that each replica lives (its default is 10 s).
HEALTH_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class Resources:
    """What one model version's deployment reserves and how many replicas it runs."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_replicas: int = 1
    max_replicas: int = 1
    max_ongoing_requests: int = 4
    resources: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    #: The pool whose replicas run the model (``""``: a deployment of its own).
    pool: str = ""

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("num_cpus and num_gpus must be 0 or more")
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(
                f"replicas must satisfy 0 <= min_replicas <= max_replicas and max_replicas >= 1,"
                f" got min {self.min_replicas}, max {self.max_replicas}"
            )
        if self.max_ongoing_requests < 1:
            raise ConfigError("max_ongoing_requests must be 1 or more")

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` (Ray Serve)."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.resources:
            actor["resources"] = dict(self.resources)
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            # A retired replica looks this often whether its last calls are done; a dead one
            # is found (and replaced) within a health check period.
            "graceful_shutdown_wait_loop_s": 0.5,
            "health_check_period_s": HEALTH_CHECK_SECONDS,
            # The gateway logs each request; a replica's line per call would double them.
            "logging_config": {"enable_access_log": False},
        }
        if self.max_replicas > self.min_replicas:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(1, self.min_replicas),
            }
        else:
            options["num_replicas"] = self.max_replicas
        return options


_KEYS = {f.name for f in fields(Resources)}
#: Keys of a ``[pools.NAME]`` table: a deployment's resources and the models one replica holds.
_POOL_KEYS = (_KEYS - {"pool"}) | {"max_models_per_replica"}
#: What a pool may be called (it names a Ray Serve application).
_POOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Pool:
    """One deployment whose replicas hold up to ``max_models_per_replica`` models each."""

    name: str
    resources: Resources = field(default_factory=Resources)
    max_models_per_replica: int = 3

    def __post_init__(self) -> None:
        if self.max_models_per_replica < 1:
            raise ConfigError("max_models_per_replica must be 1 or more")


@dataclass(frozen=True)
class TrainingResources:
    """What the Ray task of one training job's run reserves (the ``[training]`` table).

    ``num_gpus`` ``None`` (the default) reserves 1 GPU for a job whose device is CUDA
    (``"cuda"``, ``"cuda:N"``: Ray then picks the GPU) and none for any other.
    """

    num_cpus: float = 1.0
    num_gpus: float | None = None
    resources: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or (self.num_gpus is not None and self.num_gpus < 0):
            raise ConfigError("num_cpus and num_gpus must be 0 or more")

    def task_options(self, device: str) -> dict[str, Any]:
        """Keyword arguments for ``RemoteFunction.options`` for a job on ``device``."""
        gpus = self.num_gpus
        if gpus is None:
            gpus = 1.0 if device.startswith("cuda") else 0.0
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": gpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


#: Keys of the ``[training]`` table.
_TRAINING_KEYS = {"num_cpus", "num_gpus", "resources"}


@dataclass(frozen=True)
class DeploymentPlan:
    """The resources of every model version: defaults, then per model, then per version."""

    default: Resources = field(default_factory=Resources)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)
    #: What each training job's Ray task reserves (``[training]``).
    training: TrainingResources = field(default_factory=TrainingResources)

    def for_model(self, model_id: str, version: str) -> Resources:
        """The resources of ``model_id`` version ``version``."""
        merged: dict[str, Any] = {}
        for key in (model_id, f"{model_id}@{version}"):
            merged.update(self.models.get(key, {}))
        return replace(self.default, **merged) if merged else self.default

    def pool_of(self, model_id: str, version: str) -> Pool | None:
        """The pool that runs ``model_id`` version ``version`` (``None``: its own deployment)."""
        name = self.for_model(model_id, version).pool
        return self.pools.get(name) if name else None


def load_deployments(
    path: str | Path | None, *, default: Resources | None = None
) -> DeploymentPlan:
    """Read a deployment file (see the module docstring); ``None``: defaults for all.

    Raises:
        ConfigError: the file is missing, unreadable, or holds unknown keys or bad values.
    """
    base = default or Resources()
    if path is None:
        return DeploymentPlan(base)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the deployment file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"deployment file {path}: expected a table at the top")
    unknown = set(data) - {"default", "models", "pools", "training"}
    if unknown:
        raise ConfigError(
            f"deployment file {path}: unknown table(s) {', '.join(sorted(unknown))}; "
            "allowed: default, models, pools, training"
        )
    default_table = _table(path, "default", data.get("default", {}))
    try:
        plan_default = replace(base, **default_table)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"deployment file {path} [default]: {exc}") from exc
    models_data = data.get("models", {})
    if not isinstance(models_data, dict):
        raise ConfigError(f"deployment file {path}: [models] must be a table of model tables")
    models = {name: _table(path, f"models.{name}", table) for name, table in models_data.items()}
    plan = DeploymentPlan(plan_default, models, _pools(path, data.get("pools", {}), base))
    plan = replace(plan, training=_training(path, data.get("training", {})))
    for name in models:
        model_id, _, version = name.partition("@")
        try:
            plan.for_model(model_id, version)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"deployment file {path} [models.{name}]: {exc}") from exc
    _check_pool_members(path, plan)
    return plan


def _pools(path: Path, data: object, base: Resources) -> dict[str, Pool]:
    """The ``[pools.NAME]`` tables of a deployment file, checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"deployment file {path}: [pools] must be a table of pool tables")
    pools = {}
    for name, table in data.items():
        where = f"deployment file {path} [pools.{name}]"
        if not _POOL_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a pool's name is 1 to 64 letters, digits, '_' or '-'")
        values = _table(path, f"pools.{name}", table, _POOL_KEYS)
        most = values.pop("max_models_per_replica", 3)
        if not isinstance(most, int) or isinstance(most, bool):
            raise ConfigError(f"{where}: max_models_per_replica must be a whole number")
        try:
            pools[name] = Pool(name, replace(base, **values), most)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return pools


def _training(path: Path, data: object) -> TrainingResources:
    """The ``[training]`` table of a deployment file, checked."""
    values = _table(path, "training", data, _TRAINING_KEYS)
    try:
        return TrainingResources(**values)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"deployment file {path} [training]: {exc}") from exc


def _check_pool_members(path: Path, plan: DeploymentPlan) -> None:
    """Refuse pools that are not defined, and resources on a model that a pool runs."""
    allowed = ", ".join(sorted(plan.pools)) or "none: the file has no [pools] tables"
    tables: list[tuple[str, str, set[str]]] = [("default", plan.default.pool, set())]
    for name, table in plan.models.items():
        model_id, _, version = name.partition("@")
        own = set(table) - {"pool"}
        tables.append((f"models.{name}", plan.for_model(model_id, version).pool, own))
    for where, pool, own in tables:
        if pool and pool not in plan.pools:
            raise ConfigError(
                f"deployment file {path} [{where}]: pool {pool!r} is not defined; "
                f"allowed: {allowed}"
            )
        if pool and own:
            raise ConfigError(
                f"deployment file {path} [{where}]: a model of pool {pool!r} gets its resources "
                f'from [pools.{pool}]; remove {", ".join(sorted(own))} (or set pool = "" '
                "to give it a deployment of its own)"
            )


def _table(path: Path, name: str, table: object, keys: set[str] = _KEYS) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"deployment file {path}: [{name}] must be a table")
    unknown = set(table) - keys
    if unknown:
        raise ConfigError(
            f"deployment file {path} [{name}]: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {_allowed(keys)}"
        )
    out = dict(table)
    if "pool" in out and not isinstance(out["pool"], str):
        raise ConfigError(f"deployment file {path} [{name}]: pool must be a pool's name (text)")
    if "resources" in out:
        resources = out["resources"]
        if not isinstance(resources, dict) or not all(
            isinstance(v, int | float) for v in resources.values()
        ):
            raise ConfigError(
                f"deployment file {path} [{name}]: resources must map names to numbers"
            )
        out["resources"] = tuple(sorted((str(k), float(v)) for k, v in resources.items()))
    for key in ("num_cpus", "num_gpus"):
        if key in out and not isinstance(out[key], int | float):
            raise ConfigError(f"deployment file {path} [{name}]: {key} must be a number")
    for key in ("min_replicas", "max_replicas", "max_ongoing_requests"):
        if key in out and (not isinstance(out[key], int) or isinstance(out[key], bool)):
            raise ConfigError(f"deployment file {path} [{name}]: {key} must be a whole number")
    return out


def _allowed(keys: set[str]) -> str:
    return ", ".join(sorted(keys))
