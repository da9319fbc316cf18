"""Users and roles: who sent an HTTP request, and what that lets them do.

::

    user = User("maya", Role.ARTIST)
    user.role >= Role.TD        # False: the roles are ordered, each allows what the one below does

===========  =================================================================================
``artist``   list models, run them, upload frames, create training jobs and see their own
``td``       everything about every training job, exports
``admin``    everything, including model reload and server controls
===========  =================================================================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ANONYMOUS", "UNAUTHENTICATED", "Role", "User"]


class Role(enum.IntEnum):
    """What a user may do; a higher role may do everything a lower one may."""

    ARTIST = 1
    TD = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The role's name as flags and messages write it (``"td"``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """Return the role named ``text`` (``artist``, ``td`` or ``admin``).

        Raises:
            ValueError: another name (the message lists the roles).
        """
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(role.label for role in cls)
            raise ValueError(f"role {text!r} is not one of {names}") from None


@dataclass(frozen=True)
class User:
    """Who sent a request: a name from the token store and the role it grants.

    Without authentication (no token store), every request is :data:`ANONYMOUS`, an admin.
    """

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """Whether this user has ``role`` or a higher one."""
        return self.role >= role


#: Who every request is when the server has no token store (loopback, or ``--no-auth``).
ANONYMOUS = User("-", Role.ADMIN)

#: Who a request to an open path (``/v2/health/*``) is when the server has tokens and the request
#: carries no valid one. The router lets such a request reach the open paths only.
UNAUTHENTICATED = User("-", Role.ARTIST)
