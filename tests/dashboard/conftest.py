"""A server with tokens for the dashboard tests: one per module, an admin, a td and an artist."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from frameserve.serve.auth.tokens import TokenFile
from frameserve.serve.auth.users import Role
from frameserve.serve.server import FrameServer
from tests.support.servers import start_server


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FrameServer, dict[str, str]]]:
    """A started server with tokens; the tokens of ``admin``, ``td`` and ``artist`` by role."""
    folder = tmp_path_factory.mktemp("dashboard")
    tokens = TokenFile(folder / "tokens.json")
    issued = {
        "admin": tokens.add("boss", Role.ADMIN),
        "td": tokens.add("tina", Role.TD),
        "artist": tokens.add("maya", Role.ARTIST),
    }
    server = start_server(
        jobs_folder=folder / "jobs", reload_interval=None, tokens_file=folder / "tokens.json"
    )
    try:
        yield server, issued
    finally:
        server.close()
