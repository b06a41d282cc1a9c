"""The bot's front desk on fakes: which messages trigger it, and the lock and queue rules of a request.

Fencing rules, each named by a test: a request is queued only while it holds the room's lock (one
generation per room); the lock is released whenever the request does not end up queued, in the
background and again until the store answers (a turn never leaks: not even a lock whose reply was
lost); a stored question that could not be queued keeps its room and is queued once the store is back;
an ``llm.invoke`` is refused ``busy`` before anything is stored.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from protocol.codec import frame_with_id
from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from server.appender import Appender
from server.llm.front import CANCEL_FORBIDDEN, LLMFront, new_rid, rid_for
from server.llm.quota import CostGuard
from server.member import Member
from server.settings import Budgets, CancelScope, Trigger
from server.store.ports import Fence, NewEntry, Request, Retention, StoreUnavailable
from tests.unit.fakes import FakeLocks, FakeStore
from tests.unit.server.llm.rig import chat_body

LEASE_MS = 600_000  # the queued lease (LLM_QUEUE_LEASE_S)


class RecordingMember(Member):
    """A member that records the frames pushed to it (no connection)."""

    def __init__(self, room: str = "r") -> None:
        super().__init__(self._no_send, room, None, 8, outlet_for=lambda _send: None)
        self.pushed: list[dict[str, Any]] = []

    @staticmethod
    async def _no_send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent")

    def push(self, frame: str) -> None:
        self.pushed.append(orjson.loads(frame))


class Desk:
    """A front on fakes, with a running appender. Use as ``async with Desk() as desk``."""

    def __init__(self, trigger: Trigger = "mention", cancel: CancelScope = "any",
                 budgets: Budgets | None = None) -> None:
        self.store = FakeStore()
        self.guard = None if budgets is None else CostGuard(self.store.usage, budgets,
                                                            lambda: self.store.clock.now_ms / 1000)
        self.queue = self.store.requests("default")
        self.appender = Appender(self.store.log, Retention(dedupe_s=3600), "n1", lambda *_: None)
        self.pauses: list[float] = []  # the background retries' pauses
        self._paused = asyncio.Event()
        self.front = LLMFront(self.store.locks, self.queue, self.appender, trigger, LEASE_MS, cancel,
                              sleep=self._pause, guard=self.guard, room_log=self.store.log)
        self.member = RecordingMember()
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Desk:
        self._flusher = asyncio.ensure_future(self.appender.run())
        return self

    async def _pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self._paused.set()
        await asyncio.sleep(0)

    async def until_paused(self, times: int = 1) -> None:
        """Until the background work has paused ``times`` times (failed that often)."""
        while len(self.pauses) < times:
            self._paused.clear()
            await self._paused.wait()

    async def __aexit__(self, *exc: object) -> None:
        await self.front.aclose()
        assert self._flusher is not None
        self._flusher.cancel()
        await asyncio.gather(self._flusher, return_exceptions=True)

    @property
    def queued(self) -> list[Request]:
        return list(self.queue.new)

    async def invoke(self, prompt: str = "hi", cid: str | None = "c1", role: str = "A") -> None:
        envelope = ClientEnvelope("llm.invoke", role, cid, {"prompt": prompt})
        await self.front.invoke(self.member, envelope, chat_body("r", prompt, role, event="llm.invoke"))


def chat(text: str | None) -> ClientEnvelope:
    return ClientEnvelope("chat.message", "A", None, {} if text is None else {"text": text})


def front(trigger: Trigger) -> LLMFront:
    store = FakeStore()
    return LLMFront(store.locks, store.requests("q"), Appender(store.log, Retention(), "n1", lambda *_: None), trigger,
                    LEASE_MS)


# -- which messages trigger the bot ------------------------------------------------------------

@pytest.mark.parametrize("text", ["@llm hi", "hey @llm", "@LLM what?", "ask @llm, please", "(@llm)"])
def test_a_mention_of_at_llm_triggers(text: str) -> None:
    assert front("mention").triggers(chat(text))


@pytest.mark.parametrize("text", ["hello", "llm", "@llmbot", "@llm_2", "@llm2", "@ llm", ""])
def test_a_mention_needs_at_llm_as_a_whole_word(text: str) -> None:
    assert not front("mention").triggers(chat(text))


def test_a_message_without_text_mentions_nobody() -> None:
    assert not front("mention").triggers(chat(None))


def test_explicit_means_only_llm_invoke_asks_the_bot() -> None:
    explicit = front("explicit")
    assert not explicit.triggers(chat("@llm hi")) and not explicit.triggers(chat("hello"))


def test_always_means_every_chat_message_asks_the_bot() -> None:
    always = front("always")
    assert always.triggers(chat("hello")) and always.triggers(chat("@llm")) and always.triggers(chat(None))


def test_rids_are_fresh_and_prefixed() -> None:
    rids = {new_rid() for _ in range(100)}
    assert len(rids) == 100 and all(rid.startswith("g-") and len(rid) == 18 for rid in rids)


# -- answer: a stored chat message that triggers the bot ----------------------------------------

async def test_answer_takes_the_rooms_lock_and_queues_a_request_for_the_message() -> None:
    async with Desk() as desk:
        await desk.front.answer(desk.member, b"5-0", "B", "c1")
        [request] = desk.queued
        assert (request.room, request.reply_to, request.asker, request.attempt) == ("r", "5-0", "B", 1)
        assert request.rid.startswith("g-")
        assert desk.store.locks.held == {"r": request.rid}
        assert desk.member.pushed == []


async def test_the_front_takes_the_lock_with_the_long_queued_lease_and_a_fresh_token() -> None:
    async with Desk() as desk:
        await desk.front.answer(desk.member, b"5-0", "B", "c1")
        locks = desk.store.locks
        assert locks.until["r"] == locks.log.clock.now_ms + LEASE_MS and locks.tokens["r"] == 1
        locks.log.clock.advance(LEASE_MS / 1000 - 1)  # the question may wait that long for a worker
        await desk.front.answer(desk.member, b"6-0", "A", "c2")
        assert [error["bd"]["code"] for error in desk.member.pushed] == ["busy"]


async def test_answer_in_a_busy_room_tells_the_sender_busy_and_leaves_the_message_stored() -> None:
    async with Desk() as desk:
        assert await desk.store.locks.lock("r", "g-other", LEASE_MS)
        entry_id = desk.store.log.add("r", chat_body("r", "@llm hi"))
        await desk.front.answer(desk.member, entry_id, "A", "c7")
        assert desk.queued == []
        [error] = desk.member.pushed
        assert error["hd"]["event"] == "error" and error["bd"]["code"] == "busy" and error["bd"]["cid"] == "c7"
        assert desk.store.locks.held == {"r": "g-other"}  # the running generation keeps it
        assert [entry[0] for entry in desk.store.log.streams["r"]] == [entry_id]


async def test_a_mention_whose_lock_cannot_be_taken_is_answered_once_the_store_is_back() -> None:
    async with Desk() as desk:
        desk.store.locks.failing = StoreUnavailable("down")
        await desk.front.answer(desk.member, b"5-0", "A", "c1")  # nothing to tell the sender: it is stored
        assert desk.member.pushed == [] and desk.queued == []
        await desk.until_paused()
        desk.store.locks.failing = None
        await desk.front.idle()
        [request] = desk.queued
        assert request.reply_to == "5-0" and desk.store.locks.held == {"r": request.rid}


async def test_a_mention_whose_lock_is_taken_late_in_a_busy_room_tells_the_sender_busy() -> None:
    async with Desk() as desk:
        desk.store.locks.failing = StoreUnavailable("down")
        await desk.front.answer(desk.member, b"5-0", "A", "c1")
        await desk.until_paused()
        desk.store.locks.failing = None
        assert await desk.store.locks.lock("r", "g-other", LEASE_MS)  # another question came first
        await desk.front.idle()
        assert [(f["bd"]["code"], f["bd"]["cid"]) for f in desk.member.pushed] == [("busy", "c1")]
        assert desk.queued == []


async def test_a_stored_question_that_cannot_be_queued_keeps_its_room_and_is_queued_once_the_store_is_back(
        ) -> None:
    async with Desk() as desk:
        desk.queue.failing = StoreUnavailable("down")
        await desk.front.answer(desk.member, b"5-0", "A", None)  # nothing to tell the sender: it is stored
        assert desk.member.pushed == [] and desk.queued == []
        [rid] = desk.store.locks.held.values()
        await desk.until_paused()
        desk.queue.failing = None
        await desk.front.idle()
        [request] = desk.queued
        assert (request.rid, request.reply_to) == (rid, "5-0") and desk.store.locks.held == {"r": rid}


# -- invoke ---------------------------------------------------------------------------------------

async def test_invoke_stores_the_frame_then_queues_a_request_answering_it() -> None:
    async with Desk() as desk:
        await desk.invoke("what time is it", cid="c1", role="B")
        [(entry_id, fields)] = desk.store.log.streams["r"]
        assert fields[b"participant"] == b"B"
        assert orjson.loads(fields[b"body"])["bd"] == {"prompt": "what time is it"}
        [[entry]] = desk.store.log.batches
        assert entry.cid == "c1"  # stored once per cid
        [request] = desk.queued
        assert (request.reply_to, request.asker) == (entry_id.decode(), "B")
        assert desk.store.locks.held == {"r": request.rid}


async def test_invoke_in_a_busy_room_is_refused_before_anything_is_stored() -> None:
    async with Desk() as desk:
        assert await desk.store.locks.lock("r", "g-other", LEASE_MS)
        with pytest.raises(ProtocolError) as refused:
            await desk.invoke(cid="c9")
        assert (refused.value.code, refused.value.cid) == ("busy", "c9")
        assert desk.store.log.batches == [] and desk.queued == []
        assert desk.store.locks.held == {"r": "g-other"}


async def test_invoke_releases_the_lock_when_the_append_fails() -> None:
    async with Desk() as desk:
        desk.store.log.failing = StoreUnavailable("down")
        with pytest.raises(StoreUnavailable):
            await desk.invoke()
        await desk.front.idle()
        assert desk.store.locks.held == {} and desk.queued == []


async def test_invoke_releases_the_lock_when_the_append_is_cancelled() -> None:
    async with Desk() as desk:
        desk.store.log.gate = asyncio.Event()  # the append hangs
        task = asyncio.ensure_future(desk.invoke())
        for _ in range(5):
            await asyncio.sleep(0)
        assert desk.store.locks.held != {}
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await desk.front.idle()
        assert desk.store.locks.held == {}
        desk.store.log.gate.set()


async def test_a_duplicate_invoke_releases_its_lock_and_answers_the_sender_with_the_original() -> None:
    async with Desk() as desk:
        await desk.invoke("first", cid="c1")
        [first] = desk.queued
        desk.store.locks.drop("r")  # its generation ended
        await desk.invoke("first (resent)", cid="c1")
        await desk.front.idle()
        assert desk.queued == [first]  # not asked twice
        assert desk.store.locks.held == {}
        [(entry_id, fields)] = desk.store.log.streams["r"]
        assert desk.member.pushed == [orjson.loads(frame_with_id(fields[b"body"], entry_id.decode()))]


async def test_a_resent_invoke_while_its_answer_is_running_is_busy() -> None:
    async with Desk() as desk:
        await desk.invoke(cid="c1")
        with pytest.raises(ProtocolError, match="busy"):
            await desk.invoke(cid="c1")
        assert len(desk.queued) == 1 and len(desk.store.log.streams["r"]) == 1


async def test_an_invoke_stored_but_not_queued_is_queued_once_the_store_is_back() -> None:
    async with Desk() as desk:
        desk.queue.failing = StoreUnavailable("down")
        await desk.invoke()
        assert len(desk.store.log.streams["r"]) == 1  # the question itself is stored (and broadcast)
        await desk.until_paused()
        desk.queue.failing = None
        await desk.front.idle()
        [request] = desk.queued
        assert desk.store.locks.held == {"r": request.rid}


class LostReplyLocks(FakeLocks):
    """Locks whose next ``lock`` is taken in Redis but its reply is lost (a timeout, a dropped connection)."""

    lose_next = True

    async def lock(self, room: str, rid: str, lease_ms: int, asker: str = "") -> Fence | None:
        fence = await super().lock(room, rid, lease_ms, asker)
        if self.lose_next:
            self.lose_next = False
            raise StoreUnavailable("no reply from Redis within 10 s")
        return fence


async def test_a_lock_whose_reply_was_lost_is_released_in_the_background() -> None:
    async with Desk() as desk:
        locks = LostReplyLocks(desk.store.log)
        desk.front = LLMFront(locks, desk.queue, desk.appender, "mention", LEASE_MS, sleep=desk._pause)
        with pytest.raises(StoreUnavailable):
            await desk.invoke()
        await desk.front.idle()
        assert locks.held == {} and desk.store.log.batches == []


async def test_a_release_that_fails_is_tried_again_until_the_store_answers() -> None:
    async with Desk() as desk:
        desk.store.log.failing = StoreUnavailable("down")
        with pytest.raises(StoreUnavailable):
            await desk.invoke()  # its lock is taken, its append fails...
        desk.store.locks.failing = StoreUnavailable("down")  # ...and so does the release, at first
        await desk.until_paused(3)
        assert desk.store.locks.held != {}
        desk.store.locks.failing = None
        await desk.front.idle()
        assert desk.store.locks.held == {}


async def test_a_release_that_keeps_failing_gives_up_within_the_queued_lease() -> None:
    async with Desk() as desk:
        desk.store.log.failing = StoreUnavailable("down")
        with pytest.raises(StoreUnavailable):
            await desk.invoke()
        desk.store.locks.failing = StoreUnavailable("down")
        await desk.front.idle()
        assert 0 < sum(desk.pauses) <= LEASE_MS / 1000  # then the lock lapses with its lease
        assert desk.store.locks.held != {}


# -- cancel ---------------------------------------------------------------------------------------

async def test_cancel_of_a_generation_not_running_is_unknown_generation() -> None:
    async with Desk() as desk:
        for held in ({}, {"r": "g-other"}):
            desk.store.locks.held = dict(held)
            with pytest.raises(ProtocolError) as refused:
                await desk.front.cancel(desk.member, ClientEnvelope("llm.cancel", "A", "c3", {"rid": "g-1"}))
            assert (refused.value.code, refused.value.cid) == ("unknown_generation", "c3")
            assert "'g-1'" in refused.value.message
        assert desk.store.locks.cancelled == {}


async def test_cancel_marks_the_running_generation_cancelled_and_tells_every_worker() -> None:
    async with Desk() as desk:
        heard = desk.store.locks.cancellations()
        await heard.subscribe()
        await desk.invoke()
        [request] = desk.queued
        await desk.front.cancel(desk.member, ClientEnvelope("llm.cancel", "B", None, {"rid": request.rid}))
        assert desk.store.locks.cancelled == {("r", request.rid): "B"}
        assert [await heard.next(1), await heard.next(1)] == [("subscribe", b""),
                                                              ("message", f"{request.rid} B".encode())]
        assert desk.store.locks.held == {"r": request.rid}  # the worker releases it when the answer ends


def cancel_of(rid: str, role: str, cid: str | None = None) -> ClientEnvelope:
    return ClientEnvelope("llm.cancel", role, cid, {"rid": rid})


async def test_the_lock_records_who_asked_an_invoke_and_a_mention() -> None:
    async with Desk() as desk:
        await desk.invoke(role="B")
        [invoked] = desk.queued
        assert desk.store.locks.askers[("r", invoked.rid)] == "B"
        assert invoked.rid == rid_for("r", invoked.reply_to.encode())  # the stored question's, as a mention's
        desk.store.locks.held.clear()
        await desk.front.answer(desk.member, b"5-0", "A", None)
        asked = desk.queued[-1]
        assert desk.store.locks.askers[("r", asked.rid)] == "A" == asked.asker


async def test_with_cancel_any_another_human_may_cancel() -> None:
    async with Desk(cancel="any") as desk:
        await desk.invoke(role="A")
        [request] = desk.queued
        await desk.front.cancel(desk.member, cancel_of(request.rid, "B"))
        assert desk.store.locks.cancelled == {("r", request.rid): "B"}


async def test_with_cancel_asker_another_role_is_refused_forbidden_and_nothing_is_cancelled() -> None:
    async with Desk(cancel="asker") as desk:
        await desk.invoke(role="A")
        [request] = desk.queued
        with pytest.raises(ProtocolError) as refused:
            await desk.front.cancel(desk.member, cancel_of(request.rid, "B", "c9"))
        assert (refused.value.code, refused.value.cid) == ("forbidden", "c9")
        assert refused.value.message == CANCEL_FORBIDDEN
        assert desk.store.locks.cancelled == {}


async def test_with_cancel_asker_the_asker_may_cancel() -> None:
    async with Desk(cancel="asker") as desk:
        await desk.invoke(role="A")
        [request] = desk.queued
        await desk.front.cancel(desk.member, cancel_of(request.rid, "A"))
        assert desk.store.locks.cancelled == {("r", request.rid): "A"}


async def test_with_cancel_asker_a_generation_not_running_is_still_unknown_generation() -> None:
    async with Desk(cancel="asker") as desk:
        with pytest.raises(ProtocolError) as refused:
            await desk.front.cancel(desk.member, cancel_of("g-1", "B"))
        assert refused.value.code == "unknown_generation"


async def test_with_refuse_a_resent_invoke_is_asked_if_its_first_sending_was_stored_but_never_took_its_turn() -> None:
    """Its first sending's append was stored, but the reply was lost (its sender was told
    ``unavailable``, the lock it took was given back): the resend asks, once."""
    async with Desk() as desk:
        body = chat_body("r", "hi", "A", event="llm.invoke")
        [stored] = (await desk.store.log.append_batch([NewEntry("r", "A", body, "c1")], Retention(dedupe_s=3600),
                                                     "n1")).ids
        assert isinstance(stored, bytes)
        await desk.invoke(cid="c1")
        [request] = desk.queued
        assert (request.reply_to, request.rid) == (stored.decode(), rid_for("r", stored))
        assert desk.store.locks.held == {"r": request.rid}
        desk.store.locks.held.clear()  # (its answer ended)
        await desk.invoke(cid="c1")  # sent once more: asked already
        await desk.front.idle()
        assert desk.queued == [request] and desk.store.locks.held == {}
        assert [frame["hd"]["id"] for frame in desk.member.pushed] == [stored.decode()] * 2  # the original, each time


async def test_with_refuse_a_resent_invoke_whose_first_sending_was_asked_is_not_asked_again() -> None:
    async with Desk() as desk:
        await desk.invoke(cid="c1")
        [request] = desk.queued
        desk.store.locks.held.clear()  # (its answer ended)
        await desk.invoke(cid="c1")  # its sender never heard the reply (a dropped connection)
        await desk.front.idle()
        assert desk.queued == [request] and desk.store.locks.held == {}
