"""The dispatcher: from a validated envelope's event name to its handler.

Handlers turn an accepted envelope into an append to the room's stream. They do not broadcast:
every member, the sender included, receives the message from the room feed once it is stored,
so nothing is ever delivered that is not in the stream, and everyone sees the stream's order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from protocol.codec import frame_with_id, message_body
from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from protocol.names import Event
from server.appender import Appender
from server.errors import error_for
from server.llm.front import LLMFront
from server.member import Member
from server.metrics import COUNTS
from server.store.ports import Duplicate, NewEntry

MAX_INFLIGHT = 64  # a member's appends awaiting Redis before its reads pause (backpressure)

Handler = Callable[[Member, ClientEnvelope], Awaitable[None]]


class Dispatcher:
    def __init__(self, appender: Appender, llm: LLMFront | None) -> None:
        self._appender = appender
        self._llm = llm
        self._handlers: dict[str, Handler] = {
            Event.CHAT_MESSAGE: self._chat_message,
            Event.LLM_INVOKE: self._llm_invoke,
            Event.LLM_CANCEL: self._llm_cancel,
            Event.LLM_REGENERATE: self._llm_regenerate,
        }
        self._drained: dict[Member, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def dispatch(self, member: Member, envelope: ClientEnvelope) -> None:
        COUNTS.messages_in[envelope.event] += 1
        await self._handlers[envelope.event](member, envelope)

    async def _chat_message(self, member: Member, envelope: ClientEnvelope) -> None:
        body = message_body(envelope.event, envelope.role, member.room, time.time_ns() // 1_000_000, envelope.cid,
                            envelope.bd)
        llm = self._llm if self._llm is not None and self._llm.triggers(envelope) else None
        self._store(member, envelope.role, envelope.cid, body, llm)
        if member.inflight >= MAX_INFLIGHT:
            await self._wait_drained(member)

    async def _llm_invoke(self, member: Member, envelope: ClientEnvelope) -> None:
        body = message_body(envelope.event, envelope.role, member.room, time.time_ns() // 1_000_000, envelope.cid,
                            envelope.bd)
        await self._bot(envelope).invoke(member, envelope, body)

    async def _llm_cancel(self, member: Member, envelope: ClientEnvelope) -> None:
        await self._bot(envelope).cancel(member, envelope)

    async def _llm_regenerate(self, member: Member, envelope: ClientEnvelope) -> None:
        await self._bot(envelope).regenerate(member, envelope)

    def _bot(self, envelope: ClientEnvelope) -> LLMFront:
        if self._llm is None:
            raise ProtocolError("unknown_event", "This server has no LLM bot.", envelope.cid)
        return self._llm

    def _store(self, member: Member, role: str, cid: str | None, body: bytes, llm: LLMFront | None = None) -> None:
        member.inflight += 1

        def done(outcome: bytes | Duplicate | Exception) -> None:
            member.inflight -= 1
            if isinstance(outcome, Exception):
                member.push(error_for(outcome, cid))
            elif isinstance(outcome, Duplicate):  # a resend of a stored message: its broadcast, to the sender
                member.push(frame_with_id(outcome.body, outcome.id.decode()))
                if llm is not None:  # asked, unless its first sending took its turn (its reply may be lost)
                    self._spawn(member, llm.answer(member, outcome.id, role, cid, resent=True), cid)
            elif llm is not None:
                self._spawn(member, llm.answer(member, outcome, role, cid), cid)
            drained = self._drained.get(member)
            if drained is not None and member.inflight < MAX_INFLIGHT // 2:
                drained.set()

        self._appender.submit(NewEntry(member.room, role, body, cid), done)

    def _spawn(self, member: Member, work: Coroutine[Any, Any, None], cid: str | None) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:
                member.push(error_for(exc, cid))

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_drained(self, member: Member) -> None:
        drained = self._drained[member] = asyncio.Event()
        try:
            await drained.wait()
        finally:
            del self._drained[member]

