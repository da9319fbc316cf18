"""Who may do what over HTTP: users, their roles, and the token store that names them.

Tokens are stored as hashes only; a request's bearer token names its user and role
(:mod:`frameserve.serve.auth.tokens`).
"""

from __future__ import annotations

from frameserve.serve.auth.tokens import TOKEN_PREFIX, TokenEntry, TokenFile, TokenStore
from frameserve.serve.auth.users import ANONYMOUS, UNAUTHENTICATED, Role, User

__all__ = [
    "ANONYMOUS",
    "TOKEN_PREFIX",
    "UNAUTHENTICATED",
    "Role",
    "TokenEntry",
    "TokenFile",
    "TokenStore",
    "User",
]
