"""The WebSocket endpoint ``/v1/session/chat?sid=ROOM[&role=A|B][&last_id=ID[&epoch=E]]``.

Handshake: the room id, role and resume cursor are checked before anything else; a bad one is
refused with an HTTP error and a JSON body ``{"error": {"code", "message"}}`` (the socket is never
accepted). The member then joins its room and its roster (which needs Redis: 503 ``unavailable``
otherwise), is accepted, and its session starts (:mod:`server.session`: presence, the resume's
replay, ``session.ready``).

After that, each text frame is validated by :mod:`protocol` and handed to the dispatcher; a
refusal goes back to the sender alone as an ``error`` frame and the connection stays open.
The receive loop uses the raw ASGI callables: it is the hot path, and Starlette's wrapper only
adds state checks the loop already guarantees.

Every frame received counts against the connection's rate limit (:mod:`server.ratelimit`): one
over it is answered ``rate_limited`` and not processed; a client that keeps flooding is closed
with 1008. With auth on, a connection is closed with 4001 (``token expired``) when its token
expires: one timer per connection (:func:`close_at_expiry`). Origins and connections per address
are checked before this endpoint, by :mod:`server.admission`. Every refusal's HTTP status is
:func:`protocol.errors.http_status`'s, and every close is a row of :mod:`protocol.close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from protocol.close import NORMAL, RATE_LIMIT, STORE_UNAVAILABLE, TOKEN_EXPIRED
from protocol.codec import error_frame
from protocol.envelope import frame_cid, parse_frame
from protocol.errors import ERROR_CODES, ProtocolError, http_status, refusal_body
from protocol.limits import Limits
from protocol.names import CLIENT_ROLES, LLM_ROLE, is_valid_epoch, is_valid_room, is_valid_stream_id
from server import logs
from server.auth import Grant, RoomAccess, bearer
from server.dispatch import Dispatcher
from server.errors import error_code, error_for
from server.hub import Hub
from server.member import Member
from server.ratelimit import NO_RATE_LIMIT, RateLimit, Verdict
from server.session import Resume, Sessions
from server.store.ports import StoreRefused, StoreUnavailable

log = logging.getLogger(__name__)

PATH = "/v1/session/chat"


class ChatEndpoint:
    def __init__(self, hub: Hub, sessions: Sessions, dispatcher: Dispatcher, limits: Limits,
                 send_queue_max: int, access: RoomAccess, rate_limit: RateLimit = NO_RATE_LIMIT) -> None:
        self._access = access
        self._hub = hub
        self._sessions = sessions
        self._dispatcher = dispatcher
        self._limits = limits
        self._send_queue_max = send_queue_max
        self._rate_limit = rate_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        query = websocket.query_params
        room, role = query.get("sid", ""), query.get("role")
        refusal = handshake_refusal(room, role) or resume_refusal(query.get("last_id"), query.get("epoch"))
        if refusal is not None:
            await deny(websocket, *refusal)
            return
        grant = None
        if self._access.enabled:
            try:
                grant = await self._access.for_room(query.get("token") or bearer(websocket.headers), room)
                role = bound_role(grant, role)
            except ProtocolError as exc:
                await deny(websocket, exc.code, exc.message)
                return
            except Exception as exc:  # the store, asked for the room's instance
                await deny_failure(websocket, exc)
                return
        last_id = query.get("last_id")
        resume = None if last_id is None else Resume(last_id, query.get("epoch"))
        member = Member(send, room, role, self._send_queue_max)
        logs.bind(sid=room, conn=member.conn)  # this connection's task: its log lines name it
        member.hold()
        try:
            newest = await self._hub.join(member)
        except Exception as exc:
            await deny_failure(websocket, exc)
            return
        try:
            info = await self._sessions.enter(member, resume)
        except Exception as exc:
            self._hub.leave(member)
            await deny_failure(websocket, exc)
            return
        expiry = None
        try:
            await websocket.accept()
            member.start()
            if grant is not None and grant.exp is not None:
                expiry = close_at_expiry(member, grant.exp)
            await self._sessions.start(member, newest, info, resume)
            await self._receive_loop(member, receive)
        except (StoreUnavailable, StoreRefused) as exc:
            log.warning("room %s: session ended, Redis unreachable or refusing: %s", room, type(exc).__name__)
            member.close(STORE_UNAVAILABLE.code, STORE_UNAVAILABLE.reason)
        finally:
            if expiry is not None:
                expiry.cancel()
            self._hub.leave(member)
            await self._sessions.leave(member)  # first: once the client sees the close, it is off the roster
            member.close(NORMAL.code, NORMAL.reason)
            await member.wait_closed()

    async def _receive_loop(self, member: Member, receive: Receive) -> None:
        limits, bound_role, dispatch = self._limits, member.role, self._dispatcher.dispatch
        limiter = self._rate_limit.limiter()
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            text = message.get("text")
            if limiter is not None and (verdict := limiter.admit()) is not Verdict.ACCEPT:
                if verdict is Verdict.CLOSE:
                    log.warning("room %s: a member kept sending over its rate limit: closed (1008)", member.room)
                    member.close(RATE_LIMIT.code, RATE_LIMIT.reason)
                    return
                cid = None if text is None else frame_cid(text, limits)
                member.push(error_for(ProtocolError("rate_limited", cid=cid)))  # counted in the metrics too
                continue
            if text is None:
                member.push(error_frame("unsupported_frame", ERROR_CODES["unsupported_frame"]))
                continue
            envelope = None
            try:
                envelope = parse_frame(text, limits, bound_role)
                await dispatch(member, envelope)
            except Exception as exc:  # a ProtocolError keeps its own code; every refusal carries the frame's cid
                member.push(error_for(exc, None if envelope is None else envelope.cid))


def handshake_refusal(room: str, role: str | None) -> tuple[str, str] | None:
    """``(code, message)`` when the query string is not acceptable, else None."""
    if not is_valid_room(room):
        return "invalid_room", ERROR_CODES["invalid_room"]
    if role == LLM_ROLE:
        return "reserved_role", ERROR_CODES["reserved_role"]
    if role is not None and role not in CLIENT_ROLES:
        return "invalid_role", "The role query parameter must be 'A' or 'B' (or absent)."
    return None


def bound_role(grant: Grant, role: str | None) -> str | None:
    """The role a token binds the connection to (the admin key: the one asked for, if any)."""
    if grant.admin:
        return role
    if role is not None and role != grant.role:
        raise ProtocolError("role_mismatch", f"The token is for role {grant.role!r}, not {role!r}.")
    return grant.role


def close_at_expiry(member: Member, exp: float, now: Callable[[], float] = time.time) -> asyncio.TimerHandle:
    """Close ``member`` with 4001 (``token expired``) when its token expires, at ``exp`` (Unix seconds):
    one timer on the loop per connection, cancelled when the session ends."""
    loop = asyncio.get_running_loop()
    return loop.call_at(loop.time() + max(0.0, exp - now()), _expired, member)


def _expired(member: Member) -> None:
    log.debug("room %s: a member's token expired: closed (%d)", member.room, TOKEN_EXPIRED.code)
    member.close(TOKEN_EXPIRED.code, TOKEN_EXPIRED.reason)


def resume_refusal(last_id: str | None, epoch: str | None) -> tuple[str, str] | None:
    if (last_id is not None and not is_valid_stream_id(last_id)) or (epoch is not None and not is_valid_epoch(epoch)):
        return "invalid_resume", ERROR_CODES["invalid_resume"]
    if epoch is not None and last_id is None:
        return "invalid_resume", "epoch is only meaningful with last_id."
    return None


async def deny_failure(websocket: WebSocket, exc: Exception) -> None:
    await deny(websocket, *error_code(exc))


async def deny(websocket: WebSocket, code: str, message: str) -> None:
    """Refuse the handshake with ``code``: its HTTP status and a JSON body; the socket is never accepted."""
    body = refusal_body(code, message)
    await websocket.send_denial_response(JSONResponse(body, status_code=http_status(code, handshake=True)))
