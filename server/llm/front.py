"""The bot's front desk in the relay: which frames ask it something, and the requests they make.

- A ``chat.message`` is stored as usual; when it triggers the bot (``LLM_TRIGGER``: a mention of
  ``@llm``, or every human message), a request answering it is queued once it is stored. A room
  already answering tells the sender ``busy`` (the message itself stays stored).
- The room's lock is taken with the long "queued" lease (``LLM_QUEUE_LEASE_S``): the question keeps
  its room while it waits for a worker, however long every worker slot stays busy; the worker that
  starts it takes the lock over with a new fencing token and its own short, renewed lease.
- An ``llm.invoke`` first takes the room's lock (``busy`` when it cannot: nothing is stored), is
  then stored like a chat message, and queued.
- An ``llm.cancel`` stops the generation whichever process runs it; ``unknown_generation`` when
  no such generation is running in the room. Who may (``LLM_CANCEL``): ``any`` human in the room,
  or only the role that ``asker``-ed (the room's lock records the asker when it is taken); another
  role is refused ``forbidden``. The role that cancelled is recorded with the cancel, and stored
  with the answer (``bd.cancelled_by``).
"""

from __future__ import annotations

import re
import secrets

from protocol.codec import frame_with_id
from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from server.appender import Appender
from server.errors import error_for
from server.member import Member
from server.settings import CancelScope, Trigger
from server.store.ports import Cancel, Duplicate, Fence, GenerationLocks, NewEntry, Request, RequestQueue

_MENTION = re.compile(r"@llm\b", re.IGNORECASE)
CANCEL_FORBIDDEN = "Only the member who asked this question may stop its answer (LLM_CANCEL=asker)."


class LLMFront:
    def __init__(self, locks: GenerationLocks, requests: RequestQueue, appender: Appender, trigger: Trigger,
                 queue_lease_ms: int, cancel_scope: CancelScope = "any") -> None:
        self._locks = locks
        self._requests = requests
        self._appender = appender
        self._trigger = trigger
        self._lease_ms = queue_lease_ms
        self._asker_only = cancel_scope == "asker"

    def triggers(self, envelope: ClientEnvelope) -> bool:
        """Whether a chat message asks the bot to answer."""
        if self._trigger == "always":
            return True
        return self._trigger == "mention" and _MENTION.search(envelope.bd.get("text", "")) is not None

    async def answer(self, member: Member, entry_id: bytes, asker: str, cid: str | None) -> None:
        """Queue an answer to the stored message ``entry_id``, unless the room is busy."""
        request = Request(room=member.room, rid=new_rid(), reply_to=entry_id.decode(), asker=asker)
        fence = await self._locks.lock(request.room, request.rid, self._lease_ms, asker)
        if fence is None:
            member.push(error_for(ProtocolError("busy", cid=cid)))
            return
        await self._queue(request, fence)

    async def invoke(self, member: Member, envelope: ClientEnvelope, body: bytes) -> None:
        rid = new_rid()
        fence = await self._locks.lock(member.room, rid, self._lease_ms, envelope.role)
        if fence is None:
            raise ProtocolError("busy", cid=envelope.cid)
        try:
            stored = await self._appender.append(NewEntry(member.room, envelope.role, body, envelope.cid))
        except BaseException:
            await self._locks.release(fence)
            raise
        if isinstance(stored, Duplicate):  # a resend of an invoke already stored (and answered)
            await self._locks.release(fence)
            member.push(frame_with_id(stored.body, stored.id.decode()))
            return
        await self._queue(Request(room=member.room, rid=rid, reply_to=stored.decode(), asker=envelope.role), fence)

    async def _queue(self, request: Request, fence: Fence) -> None:
        """Queue a request whose lock is taken (released again when it cannot be queued)."""
        try:
            await self._requests.add(request)
        except BaseException:
            await self._locks.release(fence)
            raise

    async def cancel(self, member: Member, envelope: ClientEnvelope) -> None:
        rid = envelope.bd["rid"]
        done = await self._locks.cancel(member.room, rid, envelope.role, self._asker_only)
        if done is Cancel.NOT_RUNNING:
            raise ProtocolError("unknown_generation", f"No generation {rid!r} is running in this room.", envelope.cid)
        if done is Cancel.NOT_ASKER:
            raise ProtocolError("forbidden", CANCEL_FORBIDDEN, envelope.cid)


def new_rid() -> str:
    return "g-" + secrets.token_hex(8)

