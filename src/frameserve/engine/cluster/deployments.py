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

Unknown keys and values out of range are refused with a :class:`~frameserve.errors.ConfigError`
naming the file, the table and what is allowed.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from frameserve.errors import ConfigError

__all__ = ["HEALTH_CHECK_SECONDS", "DeploymentPlan", "Resources", "load_deployments"]

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


@dataclass(frozen=True)
class DeploymentPlan:
    """The resources of every model version: defaults, then per model, then per version."""

    default: Resources = field(default_factory=Resources)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_model(self, model_id: str, version: str) -> Resources:
        """The resources of ``model_id`` version ``version``."""
        merged: dict[str, Any] = {}
        for key in (model_id, f"{model_id}@{version}"):
            merged.update(self.models.get(key, {}))
        return replace(self.default, **merged) if merged else self.default


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
    unknown = set(data) - {"default", "models"}
    if unknown:
        raise ConfigError(
            f"deployment file {path}: unknown table(s) {', '.join(sorted(unknown))}; "
            "allowed: default, models"
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
    plan = DeploymentPlan(plan_default, models)
    for name in models:
        model_id, _, version = name.partition("@")
        try:
            plan.for_model(model_id, version)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"deployment file {path} [models.{name}]: {exc}") from exc
    return plan


def _table(path: Path, name: str, table: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"deployment file {path}: [{name}] must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(
            f"deployment file {path} [{name}]: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_KEYS))}"
        )
    out = dict(table)
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
