"""Fixtures of the authentication tests: a token file and a real server that needs its tokens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from frameserve.serve.auth.tokens import TokenFile
from frameserve.serve.auth.users import Role
from frameserve.serve.server import FrameServer
from tests.support.servers import start_server


@dataclass
class Tokens:
    """A token file and the tokens of its users: an artist, a TD and an admin."""

    file: TokenFile
    artist: str  #: maya's
    td: str  #: tom's
    admin: str  #: ada's

    @property
    def path(self) -> Path:
        return self.file.path


def make_tokens(folder: Path) -> Tokens:
    """Write a token file in ``folder`` with maya (artist), tom (td) and ada (admin)."""
    file = TokenFile(folder / "tokens.json")
    return Tokens(
        file=file,
        artist=file.add("maya", Role.ARTIST),
        td=file.add("tom", Role.TD),
        admin=file.add("ada", Role.ADMIN),
    )


def bearer(token: str) -> dict[str, str]:
    """The headers that carry ``token``."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return make_tokens(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def auth_server(tokens: Tokens, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrameServer]:
    """A server on loopback that needs the tokens of ``tokens``, with a jobs folder of its own
    (to see that nothing is written) and hot model reload off."""
    jobs = tmp_path_factory.mktemp("jobs")
    running = start_server(tokens_file=tokens.path, reload_interval=None, jobs_folder=jobs)
    yield running
    running.close()
