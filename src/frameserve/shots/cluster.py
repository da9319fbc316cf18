"""``frameserve run --ray``: a shot's frames fanned over a model's replicas on a Ray cluster.

:class:`RayBackend` is a :class:`~frameserve.shots.backends.Backend` whose frames run on the
Ray Serve deployment of their model (a :class:`~frameserve.engine.cluster.host.RayHost`, the
same host ``frameserve serve --ray`` uses): the run loop keeps ``--jobs`` frames in flight, and
Ray Serve spreads them over the model's replicas, so frames/s grows with the replicas
(``max_replicas`` in the deployment file). Reading, writing (atomic), resume and the report are
the run loop's, unchanged. Requests go as *batch* work: on a replica they run at a lower CPU
priority than the artists' interactive calls of a gateway sharing the cluster.

::

    backend = RayBackend(ModelRegistry(), address="auto")
    outputs, objects = backend.infer("blur", {"image": hwc}, {"size": 4.0}, colourspace=None)
    backend.close()                       # deletes the deployments it made
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.cluster import DeploymentPlan, RayHost
from frameserve.engine.request import Priority, build_request
from frameserve.engine.runner import Runner
from frameserve.engine.workers.supervisor import WorkerSettings
from frameserve.plugin.model import ModelSpec
from frameserve.shots.backends import Frame

__all__ = ["RayBackend"]


class RayBackend:
    """Runs the registry's models on a Ray cluster, one deployment per model version.

    Args:
        registry: the models (their folders must be at the same paths on every node).
        address: the Ray cluster (``auto``: the local one, started if none runs).
        plan: resources and replicas per model (``--ray-deployments``).
        device: the torch device on the replicas (``auto``: a GPU when the replica has one).
        timeout: seconds one frame may take on a replica.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        address: str = "auto",
        plan: DeploymentPlan | None = None,
        device: str = "auto",
        timeout: float = 600.0,
    ) -> None:
        self.registry = registry
        settings = WorkerSettings(device=device, model_timeout=timeout)
        self.host = RayHost(
            Runner(registry, device="cpu"), address=address, plan=plan, settings=settings
        )

    def describe(self, model: str) -> ModelSpec:
        """Return the declaration of ``model``; raise :class:`ModelNotFoundError`."""
        return self.registry.get(model).spec

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        """Run ``model`` on a replica; see :meth:`Backend.infer`.

        Each input is made planar ``(C, H, W)`` once here (the copy the in-process runner makes
        too) and goes through Ray's object store; outputs come back as ``(H, W, C)`` views.
        """
        entry = self.registry.get(model)
        tensors = {
            declared.name: torch.from_numpy(
                np.ascontiguousarray(np.asarray(frames[declared.name]).transpose(2, 0, 1))
            )
            for declared in entry.spec.inputs
            if declared.name in frames
        }
        request = build_request(
            entry,
            tensors,
            knobs,
            colourspace=colourspace,
            priority=Priority.BATCH,
            client="frameserve run",
            protocol="run",
        )
        result = self.host.run(request)
        outputs = {
            name: tensor.numpy().transpose(1, 2, 0) for name, tensor in result.frames.items()
        }
        return outputs, [obj.to_data() for obj in result.objects]

    def close(self) -> None:
        """Delete the deployments this run made; leave Ray if this run joined it."""
        self.host.close()
