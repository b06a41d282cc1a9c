"""``POST /v1/session``: create a room and the tokens of its two human roles.

With auth on it needs ``Authorization: Bearer <ADMIN_KEY>`` (401 ``unauthorized`` without). The
optional JSON body may name the room (``sid``) and the tokens' lifetime (``ttl_s``, default
``AUTH_TOKEN_TTL_S``). The answer is 201 ``{"sid", "tokens": {"A", "B"}, "expires_at"}``; with
auth off, a new room id and no tokens.

With auth on, the tokens name the room's current instance (:class:`~server.store.ports.RoomInstances`),
made now when the room has none, and kept at least as long as the tokens (and a minute) (so asking again for a room
that exists gives new tokens of the same instance: the other members' tokens stay good). A room
deleted (``DELETE /api/chat/history/{sid}``) and created again is a new instance: the old tokens are
refused.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from protocol.codec import format_ts
from protocol.errors import ProtocolError
from protocol.names import CLIENT_ROLES, is_valid_room
from server.auth import Auth, bearer
from server.history import error_response
from server.store.ports import RoomInstances

MAX_TTL_S = 366 * 24 * 3600
INSTANCE_MARGIN_S = 60  # the instance outlives its tokens by this much (clocks of nodes and Redis differ)


def rooms_routes(auth: Auth, instances: RoomInstances, default_ttl_s: int) -> list[BaseRoute]:
    async def create(request: Request) -> Response:
        try:
            if auth.enabled and not auth.is_admin(bearer(request.headers)):
                raise ProtocolError("unauthorized", "Creating a room needs Authorization: Bearer <ADMIN_KEY>.")
            room, ttl_s = _options(await request.body(), default_ttl_s)
            body = await open_room(auth, instances, room, ttl_s)
        except Exception as exc:
            return error_response(exc, request.method)
        return Response(orjson.dumps(body), status_code=201, media_type="application/json")

    return [Route("/v1/session", create, methods=["POST"])]


async def open_room(auth: Auth, instances: RoomInstances, room: str, ttl_s: int) -> dict[str, Any]:
    """Create ``room`` (its instance, unless it has one) and its tokens, valid ``ttl_s`` seconds:
    ``{"sid", "tokens": {"A", "B"}, "expires_at"}`` (no tokens with auth off). Also ``chat-relay token``'s."""
    now = time.time()
    instance = await instances.open(room, ttl_s + INSTANCE_MARGIN_S) if auth.enabled else ""
    tokens = ({role: auth.issue(room, role, ttl_s, instance, now) for role in sorted(CLIENT_ROLES)}
              if auth.enabled else {})
    expires_at = format_ts(int((now + ttl_s) * 1000)) if auth.enabled else None
    return {"sid": room, "tokens": tokens, "expires_at": expires_at}


def _options(raw: bytes, default_ttl_s: int) -> tuple[str, int]:
    options = {}
    if raw.strip():
        try:
            options = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProtocolError("invalid_json") from None
        if not isinstance(options, dict):
            raise ProtocolError("invalid_envelope", "The body must be a JSON object: {\"sid\"?, \"ttl_s\"?}.")
    room = options.get("sid", "r-" + secrets.token_hex(8))
    if not isinstance(room, str) or not is_valid_room(room):
        raise ProtocolError("invalid_room")
    ttl_s = options.get("ttl_s", default_ttl_s)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise ProtocolError("invalid_ttl", f"'ttl_s' must be an integer from 1 to {MAX_TTL_S}.")
    return room, ttl_s
