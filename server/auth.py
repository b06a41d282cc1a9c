"""Who may do what: room tokens and the admin key.

Auth is on when ``AUTH_SECRET`` is set. Then:

- ``POST /v1/session`` with ``Authorization: Bearer <ADMIN_KEY>`` creates a room and one token per
  human role. A token is a JWT (HS256, signed with ``AUTH_SECRET``) carrying the room (``sid``),
  the role and an expiry (``exp``).
- A WebSocket handshake needs a token of its room (``?token=`` - browsers cannot set headers - or an
  ``Authorization: Bearer`` header); the token binds the connection to its role.
- The history routes need a token of that room (any role) or the admin key; ``DELETE`` needs the
  admin key.

When it is off (open development mode) anyone may connect as anyone, and room creation answers
with a new room id and no tokens.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

import jwt

from protocol.errors import ProtocolError
from protocol.names import CLIENT_ROLES

ALGORITHM = "HS256"
AUDIENCE = "chat-relay"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request may do: in one room as one role, or everything (the admin key)."""

    room: str | None  # None: any room (admin)
    role: str | None  # the role a room token binds to

    @property
    def admin(self) -> bool:
        return self.room is None


ADMIN = Grant(None, None)


class Auth:
    def __init__(self, secret: str | None, admin_key: str | None) -> None:
        self._secret = secret
        self._admin_key = admin_key

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    def issue(self, room: str, role: str, ttl_s: int, now: float | None = None) -> str:
        assert self._secret is not None, "auth is off"
        issued = int(time.time() if now is None else now)
        claims = {"sid": room, "role": role, "iat": issued, "exp": issued + ttl_s, "aud": AUDIENCE}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def is_admin(self, credential: str | None) -> bool:
        return (credential is not None and self._admin_key is not None
                and hmac.compare_digest(credential.encode(), self._admin_key.encode()))

    def grant(self, credential: str | None) -> Grant:
        """The admin key, or a valid room token. Raises ``unauthorized`` otherwise."""
        if credential is None:
            raise ProtocolError("unauthorized", "A token is required: ?token=... or Authorization: Bearer ...")
        if self.is_admin(credential):
            return ADMIN
        assert self._secret is not None
        try:
            claims = jwt.decode(credential, self._secret, algorithms=[ALGORITHM], audience=AUDIENCE,
                                options={"require": ["exp", "sid", "role"]})
        except jwt.ExpiredSignatureError:
            raise ProtocolError("unauthorized", "The token has expired.") from None
        except jwt.InvalidTokenError:
            raise ProtocolError("unauthorized", "The token is not valid.") from None
        room, role = claims.get("sid"), claims.get("role")
        if not isinstance(room, str) or role not in CLIENT_ROLES:
            raise ProtocolError("unauthorized", "The token does not name a room and a role.")
        return Grant(room, str(role))

    def for_room(self, credential: str | None, room: str) -> Grant:
        """A grant valid for ``room``: ``unauthorized`` without one, ``forbidden`` for another room's."""
        grant = self.grant(credential)
        if not grant.admin and grant.room != room:
            raise ProtocolError("forbidden", "The token is for another room.")
        return grant


def bearer(headers: Mapping[str, str]) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, if any."""
    value = headers.get("authorization", "")
    scheme, _, credential = value.partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None
