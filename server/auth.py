"""Who may do what: room tokens and the admin key.

Auth is on when ``AUTH_SECRET`` is set. Then:

- ``POST /v1/session`` with ``Authorization: Bearer <ADMIN_KEY>`` creates a room (its *instance*: a
  random id in the store, :class:`~server.store.ports.RoomInstances`; a room that has one keeps it)
  and one token per human role. A token is a JWT (HS256, signed with ``AUTH_SECRET``) carrying the
  room (``sid``), its instance (``inst``), the role and an expiry (``exp``).
- A WebSocket handshake needs a token of its room (``?token=`` - browsers cannot set headers - or an
  ``Authorization: Bearer`` header); the token binds the connection to its role, and the connection
  is closed (4001, ``token expired``) when the token expires.
- The history routes need a token of that room (any role) or the admin key; ``DELETE`` needs the
  admin key, and ends the room's instance with its stream.
- A token is good only while its instance is the room's current one (:class:`RoomAccess`): once the
  room is deleted (or its instance expired, after the last token issued for it), its tokens are
  refused (``unauthorized``), even when a room of the same name is created again. The admin key is
  tied to no instance: it reaches every room, created or not.

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
from server.store.ports import RoomInstances

ALGORITHM = "HS256"
AUDIENCE = "chat-relay"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request may do: in one room as one role, or everything (the admin key)."""

    room: str | None  # None: any room (admin)
    role: str | None  # the role a room token binds to
    exp: float | None = None  # when the token expires (Unix seconds); None: never (admin)
    instance: str | None = None  # the room instance the token was issued for (None: admin)

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

    def issue(self, room: str, role: str, ttl_s: int, instance: str, now: float | None = None) -> str:
        """A token for ``role`` in ``instance`` of ``room``, valid for ``ttl_s`` seconds from ``now``."""
        assert self._secret is not None, "auth is off"
        issued = int(time.time() if now is None else now)
        claims = {"sid": room, "inst": instance, "role": role, "iat": issued, "exp": issued + ttl_s,
                  "aud": AUDIENCE}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def is_admin(self, credential: str | None) -> bool:
        return (credential is not None and self._admin_key is not None
                and hmac.compare_digest(credential.encode(), self._admin_key.encode()))

    def grant(self, credential: str | None, now: float | None = None) -> Grant:
        """The admin key, or a valid room token (unexpired at ``now``). Raises ``unauthorized`` otherwise."""
        if credential is None:
            raise ProtocolError("unauthorized", "A token is required: ?token=... or Authorization: Bearer ...")
        if self.is_admin(credential):
            return ADMIN
        assert self._secret is not None
        try:
            claims = jwt.decode(credential, self._secret, algorithms=[ALGORITHM], audience=AUDIENCE,
                                options={"require": ["exp", "sid", "role"], "verify_exp": False})  # below, at ``now``
        except jwt.InvalidTokenError:
            raise ProtocolError("unauthorized", "The token is not valid.") from None
        room, role, exp, instance = claims.get("sid"), claims.get("role"), claims.get("exp"), claims.get("inst")
        if not isinstance(room, str) or role not in CLIENT_ROLES:
            raise ProtocolError("unauthorized", "The token does not name a room and a role.")
        if not isinstance(instance, str) or not instance:
            raise ProtocolError("unauthorized", "The token names no room instance: get a new one (POST /v1/session).")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise ProtocolError("unauthorized", "The token is not valid.")
        if exp <= (time.time() if now is None else now):
            raise ProtocolError("unauthorized", "The token has expired.")
        return Grant(room, str(role), float(exp), instance)

    def for_room(self, credential: str | None, room: str, now: float | None = None) -> Grant:
        """A grant valid for ``room``: ``unauthorized`` without one, ``forbidden`` for another room's."""
        grant = self.grant(credential, now)
        if not grant.admin and grant.room != room:
            raise ProtocolError("forbidden", "The token is for another room.")
        return grant


class RoomAccess:
    """:class:`Auth`'s checks, and the one that needs the store: a room token is good only while the
    instance it names is the room's current one."""

    def __init__(self, auth: Auth, instances: RoomInstances) -> None:
        self.auth = auth
        self._instances = instances

    @property
    def enabled(self) -> bool:
        return self.auth.enabled

    async def for_room(self, credential: str | None, room: str) -> Grant:
        """As :meth:`Auth.for_room`, and ``unauthorized`` for a token of an instance that is over (the
        room was deleted, or its instance expired; a room created again is a new instance)."""
        grant = self.auth.for_room(credential, room)
        if not grant.admin and await self._instances.current(room) != grant.instance:
            raise ProtocolError("unauthorized", "The token is for a room that was deleted or has expired: "
                                                "get a new one (POST /v1/session).")
        return grant


def bearer(headers: Mapping[str, str]) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header, if any."""
    value = headers.get("authorization", "")
    scheme, _, credential = value.partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None
