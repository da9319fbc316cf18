"""Who may do what over HTTP: users, their roles, and the token store that names them.

Tokens are stored as hashes only; a request's bearer token names its user and role.
"""

from __future__ import annotations

from frameserve.serve.auth.users import ANONYMOUS, Role, User

__all__ = ["ANONYMOUS", "Role", "User"]
