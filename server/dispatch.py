"""The dispatcher: from a validated envelope's event name to its handler.

Handlers turn an accepted envelope into an append to the room's stream. They do not broadcast:
every member, the sender included, receives the message from the room feed once it is stored,
so nothing is ever delivered that is not in the stream, and everyone sees the stream's order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.codec import format_ts, frame_with_id, stored_body
from protocol.envelope import ClientEnvelope
from protocol.names import Event, stream_key
from server.appender import Appender
from server.errors import error_for
from server.member import Member
from server.store import Duplicate, NewEntry

MAX_INFLIGHT = 64  # a member's appends awaiting Redis before its reads pause (backpressure)

Handler = Callable[[Member, ClientEnvelope], Awaitable[None]]


class Dispatcher:
    def __init__(self, appender: Appender) -> None:
        self._appender = appender
        self._handlers: dict[str, Handler] = {Event.CHAT_MESSAGE: self._chat_message}
        self._drained: dict[Member, asyncio.Event] = {}

    async def dispatch(self, member: Member, envelope: ClientEnvelope) -> None:
        await self._handlers[envelope.event](member, envelope)

    async def _chat_message(self, member: Member, envelope: ClientEnvelope) -> None:
        hd = message_header(envelope, member.room, time.time_ns() // 1_000_000)
        self._store(member, hd, envelope.bd)
        if member.inflight >= MAX_INFLIGHT:
            await self._wait_drained(member)

    def _store(self, member: Member, hd: dict[str, Any], bd: dict[str, Any]) -> None:
        cid = hd.get("cid")
        member.inflight += 1

        def done(outcome: bytes | Duplicate | Exception) -> None:
            member.inflight -= 1
            if isinstance(outcome, Exception):
                member.push(error_for(outcome, cid))
            elif isinstance(outcome, Duplicate):  # a resend of a stored message: its broadcast, to the sender
                member.push(frame_with_id(outcome.body, outcome.id.decode()))
            drained = self._drained.get(member)
            if drained is not None and member.inflight < MAX_INFLIGHT // 2:
                drained.set()

        self._appender.submit(NewEntry(stream_key(member.room), hd["role"], stored_body(hd, bd), cid), done)

    async def _wait_drained(self, member: Member) -> None:
        drained = self._drained[member] = asyncio.Event()
        try:
            await drained.wait()
        finally:
            del self._drained[member]


def message_header(envelope: ClientEnvelope, room: str, now_ms: int) -> dict[str, Any]:
    """The server's header for an accepted message: the client's event, role and cid, stamped."""
    hd: dict[str, Any] = {"event": envelope.event, "role": envelope.role, "sid": room, "ts": format_ts(now_ms)}
    if envelope.cid is not None:
        hd["cid"] = envelope.cid
    return hd

