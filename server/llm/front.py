"""The bot's front desk in the relay: which frames ask it something, and the requests they make.

- A ``chat.message`` is stored as usual; when it triggers the bot (``LLM_TRIGGER``: a mention of
  ``@llm``, or every human message), a request answering it is queued once it is stored.
- **Turns** (``LLM_TURNS``): a question while the bot answers another one (or while others wait)
  ``queue``-s (the default): it joins the room's waiting list in the store (at most
  ``LLM_QUEUE_PER_ROOM`` wait; one more is ``busy``), every member hears ``llm.queued`` with its
  position, its request is queued at once, and the worker that reads it waits until the room's turn is
  its own (:meth:`~server.store.ports.GenerationLocks.start`): questions are answered one at a time, in
  the order they joined. ``refuse``: the sender is told ``busy`` (the message stays stored; an
  ``llm.invoke`` is refused before it is stored). ``interrupt``: the running answer is cancelled (by the
  new question's asker), the questions waiting are dropped (each member hears ``llm.error``
  ``cancelled`` for them, not stored) and the new one answers next.
- A question's turn (the room's lock, or its place in the waiting list) is taken with the short
  joining lease (``LLM_JOIN_LEASE_S``), and kept for the long queued lease (``LLM_QUEUE_LEASE_S``) once
  its request is queued (:meth:`~server.store.ports.GenerationLocks.confirm`): the question keeps its
  room while it waits for a worker, however long every worker slot stays busy, but a relay that dies
  before it queued the request holds the room no longer than the joining lease. The worker that starts
  it takes the lock over with a new fencing token and its own short, renewed lease.
- An ``llm.invoke`` is stored like a chat message, then takes its turn like one. With
  ``LLM_TURNS=refuse`` it takes the room's lock first (``busy`` when it cannot: nothing is stored), and
  once it is stored the lock is handed to the stored question's rid (``rename``), so that a resend
  asks only if its first sending never took its turn, as for a mention.
- An ``llm.regenerate`` names a stored answer (by its ``rid``): its question is asked again, as a new
  generation (a new ``rid``, the same ``reply_to``, ``regenerates`` the old rid). The answer is found by
  its marker (the ``llm.response``'s dedupe key) and read from the room's stream; a rid with no stored
  answer (unknown, still running, ended with ``llm.error``, trimmed away) is ``unknown_generation``.
  Nothing is stored for the ``llm.regenerate`` itself; it takes its turn like any question.
- Every question is checked against the bot's budgets (:mod:`server.llm.quota`) once it holds the room's
  lock or its place in the waiting list: over budget, it gives them up and the asker gets
  ``quota_exceeded`` (with ``retry_after_s``). The question stays stored (a chat message, and an
  ``llm.invoke`` too: it is stored before the check), and it is never answered.
- An ``llm.cancel`` stops the generation whichever process runs it, or takes a waiting question off
  the room's waiting list (every member hears ``llm.error`` ``cancelled`` for it, not stored: it is
  never answered); ``unknown_generation`` when no such generation is running or waiting in the room.
  Who may (``LLM_CANCEL``): ``any`` human in the room, or only the role that ``asker``-ed (recorded
  when the question takes its turn); another role is refused ``forbidden``. The role that cancelled
  is recorded with the cancel, and stored with the answer (``bd.cancelled_by``).

**A room's turn never leaks.** Whenever a request does not end up queued, the lock it took (or may
have taken: a lock whose reply was lost) is released and its place on the waiting list given up
(:meth:`~server.store.ports.GenerationLocks.withdraw`), and a release that fails (Redis away) is tried
again in the background until it succeeds or the lease would have ended anyway: a few seconds of
Redis trouble never leave a room ``busy`` for ``LLM_QUEUE_LEASE_S``. A question that is stored but
could not be queued keeps its room, and is queued in the background the same way: it is answered
once Redis is back (its sender was not told it failed: it is stored). So is a stored message that
mentions the bot when the room's lock could not be taken.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

import orjson

from protocol.codec import frame_with_id, llm_error_body, llm_queued_frame
from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from protocol.names import Event
from server.appender import Appender
from server.ephemeral import Ephemeral
from server.errors import error_for
from server.llm.quota import CostGuard
from server.member import Member
from server.settings import CancelScope, Trigger, Turns
from server.store.ports import (
    Cancel,
    Duplicate,
    Fence,
    GenerationLocks,
    NewEntry,
    Queued,
    Request,
    RequestQueue,
    RoomLog,
    Turn,
)
from server.supervise import backoff

log = logging.getLogger(__name__)
_MENTION = re.compile(r"@llm\b", re.IGNORECASE)
CANCEL_FORBIDDEN = "Only the member who asked this question may stop its answer (LLM_CANCEL=asker)."
DEQUEUED = "The question was taken off the queue before it was answered."
INTERRUPTED = "A newer question interrupted the bot (LLM_TURNS=interrupt) before this one was answered."


class LLMFront:
    def __init__(self, locks: GenerationLocks, requests: RequestQueue, appender: Appender, trigger: Trigger,
                 queue_lease_ms: int, cancel_scope: CancelScope = "any",
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep, *, guard: CostGuard | None = None,
                 room_log: RoomLog | None = None, turns: Turns = "refuse", queue_per_room: int = 5,
                 ephemeral: Ephemeral | None = None, join_lease_ms: int | None = None) -> None:
        self._turns = turns  # LLM_TURNS
        self._most_waiting = queue_per_room  # LLM_QUEUE_PER_ROOM
        self._ephemeral = ephemeral  # how members hear llm.queued and a dropped question's llm.error
        self._guard = guard  # the bot's budgets (None: no limit)
        self._log = room_log  # where llm.regenerate finds the answer it gives again
        self._locks = locks
        self._requests = requests
        self._appender = appender
        self._trigger = trigger
        self._lease_ms = queue_lease_ms
        self._join_ms = join_lease_ms or queue_lease_ms  # a turn's lease until its request is queued
        self._asker_only = cancel_scope == "asker"
        self._sleep = sleep  # the background retries' pauses (tests pass their own)
        self._background: set[asyncio.Task[None]] = set()

    def triggers(self, envelope: ClientEnvelope) -> bool:
        """Whether a chat message asks the bot to answer."""
        if self._trigger == "always":
            return True
        return self._trigger == "mention" and _MENTION.search(envelope.bd.get("text", "")) is not None

    async def answer(self, member: Member, entry_id: bytes, asker: str, cid: str | None,
                     resent: bool = False) -> None:
        """Ask the bot to answer the stored message ``entry_id``: it takes its turn (see the module).
        ``resent``: a resend of a stored question (a :class:`Duplicate`), asked only if its first sending
        never took its turn (its reply was lost before it could: the sender was told it failed)."""
        request = Request(room=member.room, rid=rid_for(member.room, entry_id), reply_to=entry_id.decode(),
                          asker=asker)
        await self._ask(member, request, cid, once=resent)

    async def _ask(self, member: Member, request: Request, cid: str | None, once: bool = False) -> None:
        """``request``'s question is stored: it takes its turn (again in the background while the store
        fails); a refusal goes to the asker."""
        try:
            turn = await self._turn(request, give_up=False, once=once)
        except Exception as exc:  # the question is stored: its answer is asked for again once Redis is back
            log.warning("room %s: the bot could not take a turn for %s (%s); trying again", request.room,
                        request.rid, exc)
            self._later(self._retry_answer(member, request, cid))
            return
        try:
            await self._taken(member, request, turn, cid)
        except ProtocolError as refused:  # (the question itself is stored: its sender is told here)
            member.push(error_for(refused))

    async def invoke(self, member: Member, envelope: ClientEnvelope, body: bytes) -> None:
        rid = new_rid()  # (LLM_TURNS=refuse: the lock is taken before the question has an id)
        fence = None
        if self._turns == "refuse":  # the lock first: a question a busy room refuses is not stored
            fence = await self._lock(member.room, rid, envelope.role)
            if fence is None:
                raise ProtocolError("busy", cid=envelope.cid)
        try:
            stored = await self._appender.append(NewEntry(member.room, envelope.role, body, envelope.cid))
        except BaseException:
            if fence is not None:
                self._release(member.room, rid, fence)
            raise
        if isinstance(stored, Duplicate):  # a resend of an invoke already stored (and asked, or not: see answer)
            member.push(frame_with_id(stored.body, stored.id.decode()))
            if fence is not None:
                await self._adopt(member, fence, stored.id, envelope.role, envelope.cid, once=True)
            else:
                await self.answer(member, stored.id, envelope.role, envelope.cid, resent=True)
            return
        if fence is not None:
            await self._adopt(member, fence, stored, envelope.role, envelope.cid)
        else:
            await self._ask(member, Request(room=member.room, rid=rid_for(member.room, stored),
                                            reply_to=stored.decode(), asker=envelope.role), envelope.cid)

    async def _adopt(self, member: Member, fence: Fence, entry_id: bytes, asker: str, cid: str | None,
                     once: bool = False) -> None:
        """The room's lock, taken under ``fence`` before the question was stored (``LLM_TURNS=refuse``),
        becomes the stored question's (its rid derived from its id, as a mention's: a resend can tell
        whether its first sending was asked), and its request is queued. ``once``: a resend; when its
        first sending was asked, the lock is released and nothing more is done."""
        request = Request(room=member.room, rid=rid_for(member.room, entry_id), reply_to=entry_id.decode(),
                          asker=asker)
        try:
            turn = await self._locks.rename(fence, request.rid, asker, once)
        except Exception as exc:  # stored: asked again in the background (the lock may be renamed already)
            log.warning("room %s: the lock of %s could not be handed to %s (%s); asking again", request.room,
                        fence.rid, request.rid, exc)
            self._later(self._retry_adopt(member, fence, request, cid))
            return
        if turn.asked:
            self._release(member.room, fence.rid, fence)
        elif turn.fence is None:  # the lock lapsed meanwhile: the question takes its turn as a mention does
            await self._ask(member, request, cid, once=once)
        else:
            await self._taken(member, request, turn, cid)

    async def _retry_adopt(self, member: Member, fence: Fence, request: Request, cid: str | None) -> None:
        """(Not once: a turn whose reply was lost is the question's own, taken again; at worst a running
        answer to it is taken over, as when its worker dies, never answered twice.)"""
        await self._retried(lambda: self._locks.release(fence))  # (a no-op when it was renamed)
        await self._retry_answer(member, request, cid)

    async def regenerate(self, member: Member, envelope: ClientEnvelope) -> None:
        """Ask the question the stored answer ``bd.rid`` answered again, as a new generation."""
        old = envelope.bd["rid"]
        reply_to = await self._question_of(member.room, old)
        if reply_to is None:
            raise ProtocolError("unknown_generation", f"No finished answer {old!r} is stored in this room.",
                                envelope.cid)
        request = Request(room=member.room, rid=new_rid(), reply_to=reply_to, asker=envelope.role, regenerates=old)
        await self._taken(member, request, await self._turn(request), envelope.cid)

    async def _turn(self, request: Request, give_up: bool = True, once: bool = False) -> Turn:
        """``request`` asks for the room under the turns policy. When the store fails, the lock or the
        place in the waiting list may have been taken all the same (a lost reply): given up in the
        background (``give_up``), or kept for the caller, who asks again (the same rid's turn is its own)."""
        try:
            return await self._locks.take_turn(request, self._join_ms, self._turns, self._most_waiting,
                                               self._join_ms, once)
        except BaseException:
            if give_up:
                self._release(request.room, request.rid, None)
            raise

    async def _taken(self, member: Member, request: Request, turn: Turn, cid: str | None) -> None:
        """What follows a turn: ``busy`` (raised); or the budgets checked, then the request queued (and, when
        it waits, every member told ``llm.queued`` first; an interrupt cancels the running answer)."""
        if turn.asked:  # (once: its first sending took its turn already)
            return
        for dropped in turn.dropped:
            self._later(self._tell_dropped(request.room, dropped, request.asker, INTERRUPTED))
        if turn.fence is None and not turn.position:
            raise ProtocolError("busy", cid=cid)
        if not await self._admitted(member, request, turn.fence, cid):
            return
        if turn.position:  # before its request is queued: heard before its answer starts
            await self._tell_queued(request, turn.position)
        await self._queue(request, turn.fence)
        if turn.interrupted:
            try:
                await self._locks.cancel(request.room, turn.interrupted, request.asker)
            except Exception as exc:  # the question waits: the running answer ends as it would have
                log.warning("room %s: %s could not interrupt %s (%s)", request.room, request.rid, turn.interrupted,
                            exc)

    async def _tell_queued(self, request: Request, position: int) -> None:
        if self._ephemeral is None:
            return
        frame = llm_queued_frame(request.room, request.rid, request.reply_to, position, request.regenerates)
        try:
            await self._ephemeral.send(request.room, request.reply_to.encode(), frame)
        except Exception as exc:  # it waits all the same: its members hear it start
            log.warning("room %s: llm.queued of %s not sent (%s)", request.room, request.rid, exc)

    async def _tell_dropped(self, room: str, dropped: Queued, by: str, why: str) -> None:
        """Every member hears that the waiting question ``dropped`` will not be answered (not stored)."""
        if self._ephemeral is None:
            return
        frame = llm_error_body(room, dropped.rid, dropped.reply_to, time.time_ns() // 1_000_000, "cancelled", why,
                               cancelled_by=by).decode()
        try:
            await self._ephemeral.send(room, dropped.reply_to.encode(), frame)
        except Exception as exc:
            log.warning("room %s: llm.error of the dropped %s not sent (%s)", room, dropped.rid, exc)

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

    async def _admitted(self, member: Member, request: Request, fence: Fence | None, cid: str | None) -> bool:
        """Whether the bot's budgets let ``request`` be answered (it is counted then); when they do not, the
        room's lock is released (``fence``; None: its place on the waiting list is given up) and the asker
        told ``quota_exceeded``."""
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
            return await self._locks.lock(room, rid, self._join_ms, asker)
        except BaseException:
            self._release(room, rid, None)
            raise

    async def _queue(self, request: Request, fence: Fence | None) -> None:
        """Queue a request whose question is stored and whose lock is taken (``fence``; None: it waits for
        its turn); when the store fails, again in the background (the question keeps its turn meanwhile)."""
        try:
            await self._requests.add(request)
        except asyncio.CancelledError:
            self._release(request.room, request.rid, fence)
            raise
        except Exception as exc:
            log.warning("room %s: the request of %s could not be queued (%s); trying again", request.room,
                        request.rid, exc)
            self._later(self._retry_queue(request, fence))
            return
        await self._confirm(request, fence)

    async def _confirm(self, request: Request, fence: Fence | None) -> None:
        """The request is queued: its turn, taken with the joining lease, is kept for the queued lease
        (again in the background while the store fails: until then the joining lease runs)."""
        try:
            await self._keep(request, fence)
        except Exception as exc:
            log.warning("room %s: the turn of %s could not be kept for its queued lease (%s); trying again",
                        request.room, request.rid, exc)
            self._later(self._retry_confirm(request, fence))

    async def _keep(self, request: Request, fence: Fence | None) -> bool:
        return await self._locks.confirm(request.room, request.rid, fence, self._lease_ms)

    async def _retry_confirm(self, request: Request, fence: Fence | None) -> None:
        if not await self._retried(lambda: self._keep(request, fence)):
            log.warning("room %s: the turn of %s could not be kept for its queued lease: it lapses with its"
                        " joining lease", request.room, request.rid)

    def _release(self, room: str, rid: str, fence: Fence | None) -> None:
        """Release the lock ``rid`` holds (``fence`` None: it may hold it, with a token nobody heard, or wait
        for its turn: given up)."""
        self._later(self._retry_release(room, rid, fence))

    def _later(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retry_release(self, room: str, rid: str, fence: Fence | None) -> None:
        async def release() -> None:
            if fence is not None:
                await self._locks.release(fence)
            else:
                await self._locks.withdraw(room, rid)

        if not await self._retried(release):
            log.warning("room %s: the lock of %s could not be released; it lapses with its lease", room, rid)

    async def _retry_answer(self, member: Member, request: Request, cid: str | None) -> None:
        taken: list[Turn] = []

        async def turn() -> None:  # rid's own turn, taken already if only the reply was lost, is taken again
            taken.append(await self._turn(request, give_up=False))

        if not await self._retried(turn):
            log.error("room %s: the bot could not take a turn for %s: it stays unanswered", request.room,
                      request.rid)
        else:
            try:
                await self._taken(member, request, taken[-1], cid)
            except ProtocolError as refused:
                member.push(error_for(refused))

    async def _retry_queue(self, request: Request, fence: Fence | None) -> None:
        if not await self._retried(lambda: self._requests.add(request)):
            log.error("room %s: the request of %s could not be queued: it stays unanswered", request.room,
                      request.rid)
            await self._retried(lambda: self._locks.release(fence) if fence else self._locks.withdraw(request.room,
                                                                                                      request.rid))
            return
        await self._confirm(request, fence)

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
        done, reply_to = await self._locks.cancel(member.room, rid, envelope.role, self._asker_only)
        if done is Cancel.NOT_RUNNING:
            raise ProtocolError("unknown_generation", f"No generation {rid!r} is running or waiting in this room.",
                                envelope.cid)
        if done is Cancel.NOT_ASKER:
            raise ProtocolError("forbidden", CANCEL_FORBIDDEN, envelope.cid)
        if done is Cancel.DEQUEUED:
            await self._tell_dropped(member.room, Queued(rid, reply_to), envelope.role, DEQUEUED)


def new_rid() -> str:
    return "g-" + secrets.token_hex(8)


def rid_for(room: str, entry_id: bytes) -> str:
    """The rid of the generation answering the stored question ``entry_id`` (a mention, an
    ``llm.invoke``): the same for every sending of it, so that a resend can tell whether its first
    sending took its turn."""
    return "g-" + hashlib.sha256(room.encode() + b" " + entry_id).hexdigest()[:16]

