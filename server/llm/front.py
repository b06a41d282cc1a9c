"""The bot's front desk in the relay: which frames ask it something, and the requests they make.

- A ``chat.message`` is stored as usual; when it triggers the bot (``LLM_TRIGGER``: a mention of
  ``@llm``, or every human message), a request answering it is queued once it is stored. A room
  already answering tells the sender ``busy`` (the message itself stays stored).
- The room's lock is taken with the long "queued" lease (``LLM_QUEUE_LEASE_S``): the question keeps
  its room while it waits for a worker, however long every worker slot stays busy; the worker that
  starts it takes the lock over with a new fencing token and its own short, renewed lease.
- An ``llm.invoke`` first takes the room's lock (``busy`` when it cannot: nothing is stored), is
  then stored like a chat message, and queued.
- An ``llm.regenerate`` names a stored answer (by its ``rid``): its question is asked again, as a new
  generation (a new ``rid``, the same ``reply_to``, ``regenerates`` the old rid). The answer is found by
  its marker (the ``llm.response``'s dedupe key) and read from the room's stream; a rid with no stored
  answer (unknown, still running, ended with ``llm.error``, trimmed away) is ``unknown_generation``.
  Nothing is stored for the ``llm.regenerate`` itself; the room busy: ``busy``.
- Every question is checked against the bot's budgets (:mod:`server.llm.quota`) once it holds the room's
  lock: over budget, the lock is released and the asker gets ``quota_exceeded`` (with ``retry_after_s``).
  The question stays stored (a chat message, and an ``llm.invoke`` too: it is stored before the check,
  as a question a busy room refuses is not), and it is never answered.
- An ``llm.cancel`` stops the generation whichever process runs it; ``unknown_generation`` when
  no such generation is running in the room. Who may (``LLM_CANCEL``): ``any`` human in the room,
  or only the role that ``asker``-ed (the room's lock records the asker when it is taken); another
  role is refused ``forbidden``. The role that cancelled is recorded with the cancel, and stored
  with the answer (``bd.cancelled_by``).

**A room's turn never leaks.** Whenever a request does not end up queued, the lock it took (or may
have taken: a lock whose reply was lost) is released, and a release that fails (Redis away) is tried
again in the background until it succeeds or the lease would have ended anyway: a few seconds of
Redis trouble never leave a room ``busy`` for ``LLM_QUEUE_LEASE_S``. A question that is stored but
could not be queued keeps its room, and is queued in the background the same way: it is answered
once Redis is back (its sender was not told it failed: it is stored). So is a stored message that
mentions the bot when the room's lock could not be taken.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

import orjson

from protocol.codec import frame_with_id
from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from protocol.names import Event
from server.appender import Appender
from server.errors import error_for
from server.llm.quota import CostGuard
from server.member import Member
from server.settings import CancelScope, Trigger
from server.store.ports import Cancel, Duplicate, Fence, GenerationLocks, NewEntry, Request, RequestQueue, RoomLog
from server.supervise import backoff

log = logging.getLogger(__name__)
_MENTION = re.compile(r"@llm\b", re.IGNORECASE)
CANCEL_FORBIDDEN = "Only the member who asked this question may stop its answer (LLM_CANCEL=asker)."


class LLMFront:
    def __init__(self, locks: GenerationLocks, requests: RequestQueue, appender: Appender, trigger: Trigger,
                 queue_lease_ms: int, cancel_scope: CancelScope = "any",
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep, *, guard: CostGuard | None = None,
                 room_log: RoomLog | None = None) -> None:
        self._guard = guard  # the bot's budgets (None: no limit)
        self._log = room_log  # where llm.regenerate finds the answer it gives again
        self._locks = locks
        self._requests = requests
        self._appender = appender
        self._trigger = trigger
        self._lease_ms = queue_lease_ms
        self._asker_only = cancel_scope == "asker"
        self._sleep = sleep  # the background retries' pauses (tests pass their own)
        self._background: set[asyncio.Task[None]] = set()

    def triggers(self, envelope: ClientEnvelope) -> bool:
        """Whether a chat message asks the bot to answer."""
        if self._trigger == "always":
            return True
        return self._trigger == "mention" and _MENTION.search(envelope.bd.get("text", "")) is not None

    async def answer(self, member: Member, entry_id: bytes, asker: str, cid: str | None) -> None:
        """Queue an answer to the stored message ``entry_id``, unless the room is busy."""
        request = Request(room=member.room, rid=new_rid(), reply_to=entry_id.decode(), asker=asker)
        try:
            fence = await self._locks.lock(request.room, request.rid, self._lease_ms, asker)
        except Exception as exc:  # the message is stored: its answer is asked for again once Redis is back
            log.warning("room %s: the bot could not take the room for %s (%s); trying again", request.room,
                        request.rid, exc)
            self._later(self._retry_answer(member, request, cid))
            return
        if fence is None:
            member.push(error_for(ProtocolError("busy", cid=cid)))
            return
        if await self._admitted(member, request, fence, cid):
            await self._queue(request, fence)

    async def invoke(self, member: Member, envelope: ClientEnvelope, body: bytes) -> None:
        rid = new_rid()
        fence = await self._lock(member.room, rid, envelope.role)
        if fence is None:
            raise ProtocolError("busy", cid=envelope.cid)
        try:
            stored = await self._appender.append(NewEntry(member.room, envelope.role, body, envelope.cid))
        except BaseException:
            self._release(member.room, rid, fence)
            raise
        if isinstance(stored, Duplicate):  # a resend of an invoke already stored (and answered)
            self._release(member.room, rid, fence)
            member.push(frame_with_id(stored.body, stored.id.decode()))
            return
        request = Request(room=member.room, rid=rid, reply_to=stored.decode(), asker=envelope.role)
        if await self._admitted(member, request, fence, envelope.cid):
            await self._queue(request, fence)

    async def regenerate(self, member: Member, envelope: ClientEnvelope) -> None:
        """Ask the question the stored answer ``bd.rid`` answered again, as a new generation."""
        old = envelope.bd["rid"]
        reply_to = await self._question_of(member.room, old)
        if reply_to is None:
            raise ProtocolError("unknown_generation", f"No finished answer {old!r} is stored in this room.",
                                envelope.cid)
        request = Request(room=member.room, rid=new_rid(), reply_to=reply_to, asker=envelope.role, regenerates=old)
        fence = await self._lock(request.room, request.rid, request.asker)
        if fence is None:
            raise ProtocolError("busy", cid=envelope.cid)
        if await self._admitted(member, request, fence, envelope.cid):
            await self._queue(request, fence)

    async def _question_of(self, room: str, rid: str) -> str | None:
        """The ``reply_to`` of ``rid``'s stored answer; None when the room's stream holds no answer ``rid``."""
        if self._log is None:
            return None
        entry_id = await self._locks.answer(room, rid)
        if entry_id is None:
            return None
        entries = await self._log.range(room, entry_id, entry_id)
        if not entries:  # trimmed away
            return None
        try:
            hd = orjson.loads(entries[0][1].get(b"body", b"{}"))["hd"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(hd, dict) or hd.get("event") != Event.LLM_RESPONSE or hd.get("rid") != rid:
            return None
        reply_to = hd.get("reply_to")
        return reply_to if isinstance(reply_to, str) and reply_to else None

    async def _admitted(self, member: Member, request: Request, fence: Fence, cid: str | None) -> bool:
        """Whether the bot's budgets let ``request`` be answered (it is counted then); when they do not, the
        room's lock is released and the asker told ``quota_exceeded``."""
        if self._guard is None:
            return True
        try:
            await self._guard.admit(request.room, request.rid, cid)
        except ProtocolError as refused:
            self._release(request.room, request.rid, fence)
            member.push(error_for(refused))
            return False
        except BaseException:
            self._release(request.room, request.rid, fence)
            raise
        return True

    async def idle(self) -> None:
        """Wait until the background releases and queueings are done (tests; shutdown cancels them)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self, grace_s: float = 0.0) -> None:
        """Give the background work ``grace_s`` to finish (a release at shutdown), then cancel it."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=grace_s)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _lock(self, room: str, rid: str, asker: str) -> Fence | None:
        """The room's lock for ``rid``, or None when another generation holds it. When the store fails,
        the lock may have been taken all the same (a lost reply): it is released in the background."""
        try:
            return await self._locks.lock(room, rid, self._lease_ms, asker)
        except BaseException:
            self._release(room, rid, None)
            raise

    async def _queue(self, request: Request, fence: Fence) -> None:
        """Queue a request whose question is stored and whose lock is taken; when the store fails, again
        in the background (the question keeps its room meanwhile)."""
        try:
            await self._requests.add(request)
        except asyncio.CancelledError:
            self._release(request.room, request.rid, fence)
            raise
        except Exception as exc:
            log.warning("room %s: the request of %s could not be queued (%s); trying again", request.room,
                        request.rid, exc)
            self._later(self._retry_queue(request, fence))

    def _release(self, room: str, rid: str, fence: Fence | None) -> None:
        """Release the lock ``rid`` holds (``fence`` None: it may hold it, with a token nobody heard)."""
        self._later(self._retry_release(room, rid, fence))

    def _later(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retry_release(self, room: str, rid: str, fence: Fence | None) -> None:
        async def release() -> None:
            held = fence or await self._locks.lock(room, rid, self._lease_ms)  # rid's own lock is taken again
            if held is not None:
                await self._locks.release(held)

        if not await self._retried(release):
            log.warning("room %s: the lock of %s could not be released; it lapses with its lease", room, rid)

    async def _retry_answer(self, member: Member, request: Request, cid: str | None) -> None:
        taken: list[Fence | None] = []

        async def lock() -> None:  # rid's own lock, taken already if only the reply was lost, is taken again
            taken.append(await self._locks.lock(request.room, request.rid, self._lease_ms, request.asker))

        if not await self._retried(lock):
            log.error("room %s: the bot could not take the room for %s: it stays unanswered", request.room,
                      request.rid)
        elif taken[-1] is None:
            member.push(error_for(ProtocolError("busy", cid=cid)))
        elif await self._admitted(member, request, taken[-1], cid):
            await self._queue(request, taken[-1])

    async def _retry_queue(self, request: Request, fence: Fence) -> None:
        if not await self._retried(lambda: self._requests.add(request)):
            log.error("room %s: the request of %s could not be queued: it stays unanswered", request.room,
                      request.rid)
            await self._retried(lambda: self._locks.release(fence))

    async def _retried(self, step: Callable[[], Awaitable[object]]) -> bool:
        """Run ``step`` until it succeeds (True), backing off, for at most the queued lease (False)."""
        waited_s, failures = 0.0, 0
        while True:
            try:
                await step()
                return True
            except Exception:
                pause = backoff(failures)
                failures += 1
                if waited_s + pause > self._lease_ms / 1000:
                    return False
                await self._sleep(pause)
                waited_s += pause

    async def cancel(self, member: Member, envelope: ClientEnvelope) -> None:
        rid = envelope.bd["rid"]
        done = await self._locks.cancel(member.room, rid, envelope.role, self._asker_only)
        if done is Cancel.NOT_RUNNING:
            raise ProtocolError("unknown_generation", f"No generation {rid!r} is running in this room.", envelope.cid)
        if done is Cancel.NOT_ASKER:
            raise ProtocolError("forbidden", CANCEL_FORBIDDEN, envelope.cid)


def new_rid() -> str:
    return "g-" + secrets.token_hex(8)

