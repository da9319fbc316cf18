"""The token store: a JSON file of users, each with a role and the hash of its bearer token.

``frameserve token add`` writes it; the HTTP door reads it (``frameserve serve --tokens FILE``)::

    token = TokenFile(Path("tokens.json")).add("maya", Role.ARTIST)   # shown once, never stored
    store = TokenStore(Path("tokens.json"))
    store.user_for(token)       # User(name='maya', role=<Role.ARTIST: 1>)
    store.user_for("fs_nope")   # None

**The file** (written atomically, mode 0600; it holds no secret, but no one needs to read it)::

    {"format": "frameserve-tokens", "version": 1,
     "users": [{"name": "maya", "role": "artist", "sha256": "3f1c...", "created": "2025-..."}]}

**Why a plain SHA-256.** A token is :data:`TOKEN_PREFIX` and 32 random bytes from
:func:`secrets.token_urlsafe` (256 bits): frameserve makes every token, no person picks one.
Salting and slow hashing (scrypt, PBKDF2) exist to protect guessable passwords: against 256
random bits there is no dictionary to precompute and no guess worth trying, so a stolen file
gives nothing back even with a fast hash. A fast, unsalted hash is also what makes a lookup
cheap: the door hashes the presented token once and finds its user in a dict keyed by the
hash, instead of running a slow hash per stored user on every request. The stored and the
computed digest are then compared with :func:`hmac.compare_digest`; timing can only ever tell
an attacker about the hash of what they sent, never about a stored token.

**Reloading.** The server checks the file's identity (inode, size, modification time in
nanoseconds) at most every :data:`CHECK_INTERVAL` seconds, on the next request after that; a
change reloads the whole table, which is swapped in at once. ``token add`` and ``token remove``
replace the file by a rename (a new inode), so a running server sees every edit within about
half a second. A file that disappears or cannot be read any more admits no one (an error is
logged) until it is fixed: a broken file never keeps a removed token valid.

Two edits at the same moment (two ``token add`` commands) each write a complete file; the one
that renames last wins, so make such edits one after another.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frameserve.errors import ConfigError, UnknownUserError, UserExistsError
from frameserve.media.atomic import atomic_path
from frameserve.serve.auth.users import Role, User

__all__ = [
    "CHECK_INTERVAL",
    "TOKEN_PREFIX",
    "TokenEntry",
    "TokenFile",
    "TokenStore",
    "check_name",
]

log = logging.getLogger(__name__)

#: What every token starts with, so a token is recognisable in a config file or a leak scan.
TOKEN_PREFIX = "fs_"
#: Seconds between two looks at the file's identity by a running server.
CHECK_INTERVAL = 0.5
#: A presented token longer than this is not hashed at all (ours are 46 characters).
MAX_TOKEN_CHARS = 256
#: Largest token file read (a few hundred bytes per user).
MAX_FILE_BYTES = 16 << 20
#: Names that mean something else in logs and metrics: ``other`` is the metrics label of users
#: beyond the label cap.
RESERVED_NAMES = frozenset({"other"})
_FORMAT = "frameserve-tokens"
_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class TokenEntry:
    """One user of the token file: name, role, when the token was made and its hash."""

    name: str
    role: Role
    created: str  #: ISO 8601, UTC (``2025-03-01T09:30:00Z``)
    sha256: str  #: hex digest of the token

    @property
    def user(self) -> User:
        """The user a request with this token is."""
        return User(self.name, self.role)

    def to_dict(self) -> dict[str, str]:
        """The entry as the file stores it."""
        return {
            "name": self.name,
            "role": self.role.label,
            "sha256": self.sha256,
            "created": self.created,
        }


def check_name(name: str) -> str:
    """Return ``name`` if it can name a user, else raise.

    Names appear in log lines, metrics labels and messages: 1 to 64 letters, digits and
    ``. _ @ -``, starting with a letter or digit.

    Raises:
        ConfigError: another name, or a reserved one (``other``).
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"user name {name[:80]!r} is not allowed: use 1 to 64 letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise ConfigError(f"user name {name!r} is reserved (the metrics use it); pick another")
    return name


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenFile:
    """Reads and edits a token file (``frameserve token add/list/remove``).

    ::

        tokens = TokenFile(Path("tokens.json"))
        token = tokens.add("maya", Role.ARTIST)     # the file is made if it is not there
        [entry.name for entry in tokens.entries()]  # ['maya']
        tokens.remove("maya")
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()

    def entries(self) -> list[TokenEntry]:
        """Return the users of the file, in the order they were added (an empty file has none).

        Raises:
            ConfigError: the file is missing, unreadable or not a token file.
        """
        return _read_entries(self.path)

    def add(self, name: str, role: Role) -> str:
        """Add user ``name`` with ``role``; return the new token (its hash alone is stored).

        The file is made (mode 0600) if it is not there.

        Raises:
            ConfigError: a name that is not allowed, or a file that is not a token file.
            UserExistsError: the file has a user of that name.
        """
        check_name(name)
        entries = _read_entries(self.path) if self.path.exists() else []
        if any(entry.name == name for entry in entries):
            raise UserExistsError(
                f"{self.path} has a user called {name!r} already; remove it first "
                f"('frameserve token remove {name} --tokens {self.path}') or pick another name"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entries.append(TokenEntry(name, role, created, _digest(token)))
        self._write(entries)
        return token

    def remove(self, name: str) -> TokenEntry:
        """Remove user ``name`` (its token stops working); return what was removed.

        Raises:
            ConfigError: the file is missing or not a token file.
            UnknownUserError: the file has no user of that name.
        """
        entries = _read_entries(self.path)
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            names = ", ".join(entry.name for entry in entries) or "none"
            raise UnknownUserError(f"{self.path} has no user called {name!r} (users: {names})")
        self._write(kept)
        return next(entry for entry in entries if entry.name == name)

    def _write(self, entries: list[TokenEntry]) -> None:
        document = {
            "format": _FORMAT,
            "version": _VERSION,
            "users": [entry.to_dict() for entry in entries],
        }
        data = (json.dumps(document, indent=2) + "\n").encode()
        with atomic_path(self.path) as temporary:
            # Made 0600 from the start: no moment at which others may read it.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)


@dataclass(frozen=True)
class _Table:
    """Users by the digest of their token; replaced whole on reload."""

    by_digest: Mapping[bytes, tuple[bytes, User]]  #: digest → (the digest as stored, user)
    identity: tuple[int, int, int] | None  # (inode, size, mtime ns) of the file it was read from


class TokenStore:
    """Who a bearer token names, from a token file that may change while the server runs.

    ::

        store = TokenStore(Path("tokens.json"))
        user = store.user_for(token)    # a User, or None for a token that is not valid

    Thread-safe; a lookup hashes the token once (SHA-256) and reads a dict. The file is looked
    at again at most every ``check_interval`` seconds (see the module docstring).

    Raises:
        ConfigError: (when made) the file is missing, unreadable or not a token file.
    """

    def __init__(self, path: Path, *, check_interval: float = CHECK_INTERVAL) -> None:
        self.path = Path(path).expanduser()
        self.check_interval = check_interval
        self._lock = threading.Lock()
        identity = _identity(self.path)
        self._table = _Table(_index(_read_entries(self.path)), identity)
        self._next_check = time.monotonic() + check_interval

    def __len__(self) -> int:
        self._refresh()
        return len(self._table.by_digest)

    def user_for(self, token: str) -> User | None:
        """Return the user ``token`` names, or ``None`` (unknown, removed or malformed)."""
        self._refresh()
        if len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
            return None
        digest = bytes.fromhex(_digest(token))
        table = self._table
        found = table.by_digest.get(digest)
        if found is None:
            return None
        stored, user = found  # the stored digest, compared in constant time, whatever the dict did
        return user if hmac.compare_digest(stored, digest) else None

    def _refresh(self) -> None:
        """Reload the file if it changed; at most once per ``check_interval``."""
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self.check_interval
            identity = _identity(self.path)
            if identity == self._table.identity and identity is not None:
                return
            try:
                table = _Table(_index(_read_entries(self.path)), identity)
            except ConfigError as exc:
                if self._table.by_digest or self._table.identity != identity:
                    log.error("token file changed and cannot be used; admitting no one: %s", exc)
                self._table = _Table({}, identity)
                return
            log.info("token file %s reloaded: %d user(s)", self.path, len(table.by_digest))
            self._table = table


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def _index(entries: list[TokenEntry]) -> dict[bytes, tuple[bytes, User]]:
    table = {}
    for entry in entries:
        digest = bytes.fromhex(entry.sha256)
        table[digest] = (digest, entry.user)
    return table


def _read_entries(path: Path) -> list[TokenEntry]:
    """Read and check a token file.

    Raises:
        ConfigError: missing, unreadable, too large, or not a token file (the message says
            what is wrong, never quotes the file).
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"token file {str(path)!r} is not there; make it with "
            "'frameserve token add NAME --role ROLE --tokens FILE'"
        ) from None
    except OSError as exc:
        raise ConfigError(f"token file {str(path)!r} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"token file {str(path)!r} is above {MAX_FILE_BYTES} bytes")
    if not data.strip():
        return []  # an empty file (made with touch): no users yet
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ConfigError(f"token file {str(path)!r} is not JSON") from None
    if (
        not isinstance(document, dict)
        or document.get("format") != _FORMAT
        or not isinstance(document.get("users"), list)
    ):
        raise ConfigError(
            f"{str(path)!r} is not a frameserve token file (made by 'frameserve token add')"
        )
    if document.get("version") != _VERSION:
        raise ConfigError(
            f"token file {str(path)!r} has version {document.get('version')!r}; this frameserve "
            f"reads version {_VERSION}"
        )
    entries: list[TokenEntry] = []
    for position, item in enumerate(document["users"]):
        entries.append(_entry(path, position, item))
    names = [entry.name for entry in entries]
    digests = [entry.sha256 for entry in entries]
    if len(set(names)) != len(names) or len(set(digests)) != len(digests):
        raise ConfigError(f"token file {str(path)!r} names a user or a token twice")
    return entries


def _entry(path: Path, position: int, item: Any) -> TokenEntry:
    where = f"token file {str(path)!r}, user {position + 1}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} is not an object")
    name, role, digest, created = (item.get(k) for k in ("name", "role", "sha256", "created"))
    if not isinstance(name, str) or not isinstance(role, str) or not isinstance(created, str):
        raise ConfigError(f"{where} needs a 'name', a 'role' and a 'created' text")
    if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise ConfigError(f"{where} needs a 'sha256' of 64 hex digits")
    try:
        check_name(name)
        parsed = Role.parse(role)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return TokenEntry(name, parsed, created, digest)
