"""Models on a Ray cluster: the Ray Serve model host, its replicas, pools and deployment file."""

from __future__ import annotations

from frameserve.engine.cluster.deployments import DeploymentPlan, Pool, Resources, load_deployments
from frameserve.engine.cluster.host import RayHost

__all__ = ["DeploymentPlan", "Pool", "RayHost", "Resources", "load_deployments"]
