"""The token store on real files: what ``token add`` writes, and what a server reads back.

- a token is shown once and never stored: the file holds its SHA-256 only, mode 0600;
- a lookup finds the user of a valid token and nobody for anything else;
- a running store sees ``add`` and ``remove`` within a second, and a broken or vanished file
  admits no one.
"""

from __future__ import annotations

import hashlib
import json
import stat
import time
from pathlib import Path

import pytest

from frameserve.errors import ConfigError, UnknownUserError, UserExistsError
from frameserve.serve.auth.tokens import TOKEN_PREFIX, TokenFile, TokenStore
from frameserve.serve.auth.users import Role, User
from tests.serve.auth.conftest import make_tokens

#: Upper bound on waiting for a reload: a guard against hanging, never a speed target.
RELOAD_GUARD = 2.0


def wait_for(condition: object, timeout: float = RELOAD_GUARD) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


def test_add_returns_a_prefixed_random_token_and_stores_only_its_hash(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    text = tokens.path.read_text()
    for token in (tokens.artist, tokens.td, tokens.admin):
        assert token.startswith(TOKEN_PREFIX) and len(token) >= len(TOKEN_PREFIX) + 43
        assert token not in text and token[len(TOKEN_PREFIX) :] not in text
        assert hashlib.sha256(token.encode()).hexdigest() in text
    assert len({tokens.artist, tokens.td, tokens.admin}) == 3
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    document = json.loads(text)
    assert [(u["name"], u["role"]) for u in document["users"]] == [
        ("maya", "artist"),
        ("tom", "td"),
        ("ada", "admin"),
    ]


def test_the_file_stays_0600_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    tokens.file.remove("tom")
    tokens.file.add("zoe", Role.TD)
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]


def test_entries_list_names_roles_and_created_times(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    entries = tokens.file.entries()
    assert [(e.name, e.role) for e in entries] == [
        ("maya", Role.ARTIST),
        ("tom", Role.TD),
        ("ada", Role.ADMIN),
    ]
    assert all(e.created.endswith("Z") and e.created[:2] == "20" for e in entries)


def test_a_name_in_use_an_unknown_name_and_bad_names_are_refused(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    before = tokens.path.read_bytes()
    with pytest.raises(UserExistsError, match="maya"):
        tokens.file.add("maya", Role.ADMIN)
    with pytest.raises(UnknownUserError, match="'nobody'"):
        tokens.file.remove("nobody")
    for bad in ("", "-", "a b", "x" * 65, "naïve", "tab\there", "other"):
        with pytest.raises(ConfigError):
            tokens.file.add(bad, Role.ARTIST)
    assert tokens.path.read_bytes() == before  # nothing was written


def test_files_that_are_not_token_files_are_refused_without_quoting_them(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    for content in (
        b"s3cr3t-not-json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"format": "frameserve-tokens", "version": 1, "users": [{"name": "x"}]}',
        b'{"format": "frameserve-tokens", "version": 9, "users": []}',
        b"[" * 100_000,
    ):
        path.write_bytes(content)
        with pytest.raises(ConfigError) as caught:
            TokenStore(path)
        assert "s3cr3t" not in str(caught.value)
    with pytest.raises(ConfigError, match="token add"):
        TokenStore(tmp_path / "missing.json")


def test_an_empty_file_has_no_users_and_can_be_added_to(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.touch()
    store = TokenStore(path, check_interval=0.1)
    assert len(store) == 0 and store.user_for(TOKEN_PREFIX + "x" * 43) is None
    token = TokenFile(path).add("maya", Role.ARTIST)
    assert wait_for(lambda: store.user_for(token) == User("maya", Role.ARTIST))


def test_a_valid_token_names_its_user_and_nothing_else_does(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    store = TokenStore(tokens.path)
    assert store.user_for(tokens.artist) == User("maya", Role.ARTIST)
    assert store.user_for(tokens.td) == User("tom", Role.TD)
    assert store.user_for(tokens.admin) == User("ada", Role.ADMIN)
    digest = hashlib.sha256(tokens.admin.encode()).hexdigest()
    for wrong in (
        "",
        tokens.artist[:-1],
        tokens.artist + "x",
        tokens.artist[len(TOKEN_PREFIX) :],  # without the prefix
        digest,  # the stored hash is not a token
        TOKEN_PREFIX + digest,
        TOKEN_PREFIX + "A" * 10_000,
        "maya",
    ):
        assert store.user_for(wrong) is None, wrong


def test_a_running_store_sees_added_and_removed_users(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    store = TokenStore(tokens.path, check_interval=0.1)
    added = tokens.file.add("zoe", Role.TD)
    assert wait_for(lambda: store.user_for(added) == User("zoe", Role.TD))
    tokens.file.remove("maya")
    assert wait_for(lambda: store.user_for(tokens.artist) is None)
    assert store.user_for(tokens.td) == User("tom", Role.TD)


def test_a_broken_or_removed_file_admits_no_one(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path)
    store = TokenStore(tokens.path, check_interval=0.1)
    assert store.user_for(tokens.admin) is not None
    tokens.path.write_text("{ half written")
    assert wait_for(lambda: store.user_for(tokens.admin) is None)
    tokens.path.unlink()
    time.sleep(0.2)
    assert store.user_for(tokens.admin) is None
    restored = TokenFile(tokens.path).add("ada", Role.ADMIN)
    assert wait_for(lambda: store.user_for(restored) == User("ada", Role.ADMIN))
    assert store.user_for(tokens.admin) is None  # the old token stays dead
