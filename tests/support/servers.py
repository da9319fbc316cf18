"""Real frameserve servers on loopback for tests: free ports, the test models, short timeouts."""

from __future__ import annotations

from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from tests.support.paths import TEST_MODELS


def start_server(**overrides: object) -> FrameServer:
    """Start a server on a free loopback port with the test models and short timeouts."""
    options: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "http_port": 0,
        "model_folders": (TEST_MODELS,),
        "read_timeout": 2.0,
        # Tests reach every model through the node's menu; the one-segment budget of a real
        # network has tests of its own (tests/serve/mlclient/test_menu.py).
        "mlclient_info_bytes": 1 << 16,
    }
    options.update(overrides)
    return FrameServer(ServerSettings(**options)).start()  # type: ignore[arg-type]
