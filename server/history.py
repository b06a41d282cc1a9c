"""The HTTP API: rooms' histories, and publishing a message without a WebSocket.

    GET    /api/chat/history/{sid}          a page of messages (limit, before | after, participant)
    GET    /api/chat/history/{sid}/export   the whole conversation as a download (format=json|markdown)
    DELETE /api/chat/history/{sid}          remove the room: its stream and its instance (its tokens)
    POST   /api/chat/{sid}/messages         publish a client envelope, as a WebSocket member would
    GET    /api/chat/{sid}/usage            what the room's bot answers cost, and its budgets (the cost guard)

Every refusal is ``{"error": {"code", "message"[, "cid"]}}`` with a code of
:data:`protocol.errors.ERRORS`; its HTTP status follows from the code alone
(:func:`protocol.errors.http_status`). A published message is validated like a WebSocket frame
and answered (201, the broadcast envelope) only once it is stored and handed to the room's
fan-out, so members have it or are about to.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from protocol.codec import frame_with_id, message_body
from protocol.envelope import parse_frame
from protocol.errors import ProtocolError, http_status, refusal_body
from protocol.names import PARTICIPANTS, Event, is_valid_room, is_valid_stream_id
from server.auth import Grant, bearer
from server.errors import error_code
from server.pages import DEFAULT_LIMIT, MAX_LIMIT, PAGE_MAX_BYTES, PageQuery, read_all, read_page
from server.store.ports import Duplicate, NewEntry
from server.transcript import EXPORTS, messages

if TYPE_CHECKING:
    from server.wiring import Relay

UNAVAILABLE_READ = "The message store is unreachable. Try again."

_LIMIT = re.compile(r"[0-9]{1,7}")

Endpoint = Callable[[Request], Awaitable[Response]]


def history_routes(relay: Relay) -> list[BaseRoute]:
    api = HistoryApi(relay)
    return [
        Route("/api/chat/history/{sid}", _answering(api.page), methods=["GET"]),
        Route("/api/chat/history/{sid}", _answering(api.delete), methods=["DELETE"]),
        Route("/api/chat/history/{sid}/export", _answering(api.export), methods=["GET"]),
        Route("/api/chat/{sid}/messages", _answering(api.publish), methods=["POST"]),
        Route("/api/chat/{sid}/usage", _answering(api.usage), methods=["GET"]),
    ]


class HistoryApi:
    def __init__(self, relay: Relay) -> None:
        self._log = relay.store.bulk_log  # pages and exports: never on the connection appends use
        self._page_max_bytes = relay.settings.history_page_max_bytes
        self._appender = relay.appender
        self._limits = relay.settings.limits
        self._access = relay.access
        self._instances = relay.store.instances
        self._guard = relay.parts.guard

    async def _grant(self, request: Request, *, admin: bool = False) -> Grant | None:
        """With auth on: a token of the room's current instance (or the admin key; only the admin key
        for ``admin``)."""
        if not self._access.enabled:
            return None
        if admin:
            grant = self._access.auth.for_room(bearer(request.headers), _room(request))
            if not grant.admin:
                raise ProtocolError("forbidden", "This needs the admin key.")
            return grant
        return await self._access.for_room(bearer(request.headers), _room(request))

    async def page(self, request: Request) -> Response:
        await self._grant(request)
        sid, query = _room(request), page_query(request.query_params, self._page_max_bytes)
        page = await read_page(self._log, sid, query)
        if not page.entries and not await self._log.exists(sid):
            raise ProtocolError("room_not_found")
        return _json({"sid": sid, "messages": await messages(page.entries),
                      "next_before": page.next_before, "next_after": page.next_after})

    async def export(self, request: Request) -> Response:
        await self._grant(request)
        sid, name = _room(request), request.query_params.get("format", "json")
        if name not in EXPORTS:
            raise ProtocolError("invalid_format")
        export = EXPORTS[name]
        if not await self._log.exists(sid):
            raise ProtocolError("room_not_found")
        # Streamed: a failure after the first bytes can only cut the download short.
        return StreamingResponse(export.render(sid, read_all(self._log, sid)), media_type=export.media_type,
                                 headers={"Content-Disposition": f'attachment; filename="{sid}.{export.extension}"'})

    async def delete(self, request: Request) -> Response:
        await self._grant(request, admin=True)
        room = _room(request)
        ended = await self._instances.delete(room)  # first: its tokens are refused from now on
        if not await self._log.delete(room) and not ended:
            raise ProtocolError("room_not_found")
        return Response(status_code=204)

    async def usage(self, request: Request) -> Response:
        """The room's generations in the last hour and tokens today (UTC), with its budgets (null: none)."""
        await self._grant(request)
        return _json(await self._guard.usage(_room(request)))

    async def publish(self, request: Request) -> Response:
        grant, sid = await self._grant(request), _room(request)
        bound_role = grant.role if grant is not None else None
        envelope = parse_frame(await _body(request, self._limits.max_message_bytes), self._limits, bound_role)
        if envelope.event != Event.CHAT_MESSAGE:
            raise ProtocolError("unknown_event", "Only chat.message can be published over HTTP.", envelope.cid)
        body = message_body(envelope.event, envelope.role, sid, time.time_ns() // 1_000_000, envelope.cid, envelope.bd)
        try:
            stored = await self._appender.append(NewEntry(sid, envelope.role, body, envelope.cid))
        except Exception as exc:
            return error_response(exc, request.method, envelope.cid)
        if isinstance(stored, Duplicate):  # a resend: the original answer again, as idempotent APIs do
            return Response(frame_with_id(stored.body, stored.id.decode()), status_code=201,
                            media_type="application/json", headers={"Idempotent-Replayed": "true"})
        return Response(frame_with_id(body, stored.decode()), status_code=201, media_type="application/json")


def page_query(params: Mapping[str, str], max_bytes: int = PAGE_MAX_BYTES) -> PageQuery:
    """The query string of a history page, validated (``ProtocolError`` otherwise); the page stops
    before ``max_bytes`` (``HISTORY_PAGE_MAX_BYTES``)."""
    before, after = params.get("before"), params.get("after")
    if before is not None and after is not None:
        raise ProtocolError("invalid_cursor", "Give 'before' or 'after', not both.")
    for name, cursor in (("before", before), ("after", after)):
        if cursor is not None and not is_valid_stream_id(cursor):
            raise ProtocolError("invalid_cursor", f"'{name}' must be a stream id such as '1700641234567-0'.")
    participant = params.get("participant")
    if participant is not None and participant not in PARTICIPANTS:
        raise ProtocolError("invalid_participant")
    return PageQuery(_limit(params.get("limit")), before, after, participant, max_bytes)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if _LIMIT.fullmatch(raw) is None or not 1 <= int(raw) <= MAX_LIMIT:
        raise ProtocolError("invalid_limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}.")
    return int(raw)


def _room(request: Request) -> str:
    sid = str(request.path_params["sid"])
    if not is_valid_room(sid):
        raise ProtocolError("invalid_room")
    return sid


async def _body(request: Request, max_bytes: int) -> bytes:
    """The request body; ``too_large`` as soon as it passes ``max_bytes`` (the rest is never read)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ProtocolError("too_large", f"The request body is over the limit of {max_bytes} bytes.")
    return bytes(body)


def _answering(endpoint: Endpoint) -> Endpoint:
    """``endpoint``, with any exception it raises answered as a JSON error."""

    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            return error_response(exc, request.method)

    return answer


def error_response(exc: Exception, method: str, cid: str | None = None) -> Response:
    """The JSON error answering ``exc``; ``cid`` is used when the error carries none."""
    code, text = error_code(exc)
    if code == "unavailable" and method != "POST":
        text = UNAVAILABLE_READ  # the vocabulary's message speaks of a message not stored
    cid = exc.cid if isinstance(exc, ProtocolError) and exc.cid is not None else cid
    return _json(refusal_body(code, text, cid), http_status(code))


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")
