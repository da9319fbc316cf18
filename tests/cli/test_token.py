"""``frameserve token add/list/remove`` and ``serve``'s refusal to serve beyond loopback openly.

The commands run through the real command line: ``add`` (whose last line a TD's script reads)
and ``serve``'s refusal in a child process, as a TD's script would run them; the others through
the command line's ``main`` in this process, which gives the exit status the process would.
"""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

from frameserve.serve.auth.tokens import TOKEN_PREFIX, TokenStore
from frameserve.serve.auth.users import Role, User
from tests.support.commands import frameserve, frameserve_here


def token_command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    (result,) = frameserve_here(["token", *args])
    return result


def token_commands(*commands: list[str | Path]) -> list[subprocess.CompletedProcess[str]]:
    return frameserve_here(*(["token", *args] for args in commands))


def test_add_prints_the_token_alone_on_its_last_line_and_stores_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    (added,) = frameserve(["token", "add", "maya", "--role", "artist", "--tokens", path])
    assert added.returncode == 0, added.stderr
    token = added.stdout.splitlines()[-1]
    assert token.startswith(TOKEN_PREFIX) and token == token.strip() and " " not in token
    text = path.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert TokenStore(path).user_for(token) == User("maya", Role.ARTIST)


def test_list_shows_names_roles_and_created_never_hashes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    first, second = token_commands(
        ["add", "maya", "--role", "artist", "--tokens", path],
        ["add", "ada", "--role", "admin", "--tokens", tmp_path / "other.json"],
    )
    assert first.returncode == 0 and second.returncode == 0
    assert token_command("add", "tom", "--role", "td", "--tokens", path).returncode == 0
    table, as_json = token_commands(
        ["list", "--tokens", path], ["list", "--tokens", path, "--json"]
    )
    assert table.returncode == 0 and as_json.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [["maya", "artist"], ["tom", "td"]]
    listed = json.loads(as_json.stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("maya", "artist"), ("tom", "td")]
    assert all(set(u) == {"name", "role", "created"} for u in listed)
    digests = [u["sha256"] for u in json.loads(path.read_text())["users"]]
    assert not any(d in table.stdout or d in as_json.stdout for d in digests)


def test_remove_revokes_the_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = token_command("add", "maya", "--role", "td", "--tokens", path).stdout.splitlines()[-1]
    removed = token_command("remove", "maya", "--tokens", path)
    assert removed.returncode == 0, removed.stderr
    assert TokenStore(path).user_for(token) is None
    assert json.loads(token_command("list", "--tokens", path, "--json").stdout) == []


def test_mistakes_exit_1_or_2_and_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    assert token_command("add", "maya", "--role", "artist", "--tokens", path).returncode == 0
    before = path.read_bytes()
    taken, role, name, unknown, missing = token_commands(
        ["add", "maya", "--role", "admin", "--tokens", path],
        ["add", "zoe", "--role", "boss", "--tokens", path],
        ["add", "zoe smith", "--role", "td", "--tokens", path],
        ["remove", "zoe", "--tokens", path],
        ["list", "--tokens", tmp_path / "none.json"],
    )
    assert taken.returncode == 1 and "'maya'" in taken.stderr and "already" in taken.stderr
    assert role.returncode == 2 and "boss" in role.stderr and "artist" in role.stderr
    assert name.returncode == 2 and "not allowed" in name.stderr
    assert unknown.returncode == 1 and "no user called 'zoe'" in unknown.stderr
    assert missing.returncode == 2 and "token add" in missing.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]


def test_a_file_that_is_not_a_token_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"api_token": "s3cr3t"}')
    listed, added = token_commands(
        ["list", "--tokens", path], ["add", "maya", "--role", "artist", "--tokens", path]
    )
    for result in (listed, added):
        assert result.returncode == 2 and "not a frameserve token file" in result.stderr
        assert "s3cr3t" not in result.stderr + result.stdout
    assert path.read_text() == '{"api_token": "s3cr3t"}'


def test_serve_beyond_loopback_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    serve = ["serve", "--host", "0.0.0.0", "--port", "0", "--http-port", "8000"]  # 0: no HTTP
    (refused,) = frameserve([*serve, "--mlclient-allow", "10.0.0.0/8"], timeout=60.0)
    assert refused.returncode == 2
    assert "refusing to serve HTTP on 0.0.0.0 without tokens" in refused.stderr
    assert "--tokens" in refused.stderr and "--no-auth" in refused.stderr
