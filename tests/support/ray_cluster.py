"""A real Ray cluster for tests: a head and a second node started with ``ray start``.

Both nodes run on this machine, each in a session of its own, with one CPU and a custom
resource (``node_a`` on the head, ``node_b`` on the second node) so tests can see placement.
Every port a node opens is chosen free, so clusters of tests running side by side never meet.
Stopping kills every process of the two sessions (``ray stop`` would stop every Ray on the
machine)::

    with RayCluster.start(folder) as cluster:
        ray.init(address=cluster.address)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["NODE_RESOURCES", "RayCluster"]

#: The custom resource each node advertises (8 units: several replicas may sit on one node).
NODE_RESOURCES = ("node_a", "node_b")
#: Seconds a node gets to join.
START_GUARD = 90.0
#: The environment of the nodes and of the test's own Ray driver: no token, no usage report.
RAY_ENVIRONMENT = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ports() -> list[str]:
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]


@dataclass
class RayCluster:
    """Two Ray nodes on this machine, started by ``ray start --block`` in sessions of their own."""

    address: str
    folder: Path
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def start(cls, folder: Path) -> RayCluster:
        """Start the head (``node_a``) and a second node (``node_b``); logs go to ``folder``."""
        os.environ.update(RAY_ENVIRONMENT)
        ray_command = str(Path(sys.executable).with_name("ray"))
        port = _free_port()
        cluster = cls(address=f"127.0.0.1:{port}", folder=folder)
        common = ["--block", "--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        try:
            cluster._node(
                "head",
                [
                    ray_command,
                    "start",
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--temp-dir={folder / 'ray'}",
                    '--resources={"node_a": 8}',
                    *common,
                    *_ports(),
                ],
            )
            cluster._wait_for_nodes(1)
            cluster._node(
                "node",
                [
                    ray_command,
                    "start",
                    f"--address={cluster.address}",
                    '--resources={"node_b": 8}',
                    *common,
                    *_ports(),
                ],
            )
            cluster._wait_for_nodes(2)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _node(self, name: str, command: list[str]) -> None:
        with (self.folder / f"{name}.log").open("wb") as log:  # the node keeps its own copy
            self.nodes.append(
                subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, **RAY_ENVIRONMENT},
                )
            )

    def _wait_for_nodes(self, count: int) -> None:
        """Wait until ``ray status`` sees ``count`` nodes (or a node process has exited)."""
        ray_command = str(Path(sys.executable).with_name("ray"))
        deadline = time.monotonic() + START_GUARD
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.poll() is not None:
                    logs = "".join(p.read_text()[-2000:] for p in self.folder.glob("*.log"))
                    raise RuntimeError(f"a Ray node exited ({node.returncode}): {logs}")
            status = subprocess.run(
                [ray_command, "status", f"--address={self.address}"],
                capture_output=True,
                text=True,
                env={**os.environ, **RAY_ENVIRONMENT},
                check=False,
            )
            if status.returncode == 0 and all(
                f" {name}" in status.stdout for name in NODE_RESOURCES[:count]
            ):
                return
            time.sleep(0.5)
        raise TimeoutError(f"the Ray cluster did not reach {count} nodes in {START_GUARD:g} s")

    def stop(self) -> None:
        """Kill every process of both nodes' sessions (their workers and replicas included)."""
        sessions = {node.pid for node in self.nodes}
        for pid in _processes_of(sessions):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(10.0)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _processes_of(sessions: set[int]) -> list[int]:
    """The processes whose session id is one of ``sessions``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            if os.getsid(int(entry.name)) in sessions:
                found.append(int(entry.name))
    return found
