"""One real Ray cluster (``ray start``: a head and a second node) for every test here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from frameserve.engine.cluster.connect import import_ray
from tests.support.ray_cluster import RayCluster


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """The cluster, with this test process joined as its driver."""
    ray, _ = import_ray()
    with RayCluster.start(tmp_path_factory.mktemp("ray", numbered=True)) as cluster:
        ray.init(address=cluster.address, namespace="frameserve-tests")
        try:
            yield cluster
        finally:
            ray.shutdown()
