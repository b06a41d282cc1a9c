"""Turns for two humans (``LLM_TURNS``), on fakes: the front desk, the store's waiting list, the worker.

Rules, each named by a test:

- queue: a question while another runs waits (``llm.queued`` with its position, to every member, before
  its request is queued); questions are answered one at a time in the order they joined; at most
  ``LLM_QUEUE_PER_ROOM`` wait, one more is ``busy`` (the message stays stored).
- a worker that reads a waiting question parks it (not acknowledged, not counted against its
  concurrency, its claim touched) and starts it when the room's turn passes (told, or by its poll);
  only the head of the waiting list may start.
- cancel of a waiting question takes it off the list (``llm.error`` ``cancelled`` to every member, not
  stored); its worker only acknowledges it; with ``LLM_CANCEL=asker`` only its asker may.
- a waiting question refused by the cost guard gives up its place; one whose request cannot be queued
  keeps it and is queued once the store is back.
- interrupt: the running answer is cancelled by the new question's asker, the waiting ones are dropped
  (``llm.error`` ``cancelled`` each), the new one answers next.
- refuse: a question while another runs is ``busy``; an ``llm.invoke`` is refused before it is stored.
- a waiting question past its deadline (``LLM_QUEUE_LEASE_S``) leaves the list when it reaches its head.
- a question holds its turn (the room's lock, or its place in the waiting list) for the joining lease
  (``LLM_JOIN_LEASE_S``) until its request is queued, and for the queued lease from then on: a relay
  that dies in between holds the room that long at most.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from server.ephemeral import Ephemeral
from server.llm.front import LLMFront
from server.llm.quota import CostGuard
from server.llm.worker import State
from server.settings import Budgets, CancelScope, Turns
from server.store.ports import Request, StoreUnavailable
from tests.unit.server.llm.rig import OTHER_NODE, Rig, chat_body, settle
from tests.unit.server.llm.test_front import LEASE_MS, RecordingMember


class Turnstile:
    """A front (with the given turns policy) and a worker on the same fakes: questions asked through
    the front, answered by the worker."""

    def __init__(self, rig: Rig, turns: Turns = "queue", most: int = 2, cancel: CancelScope = "any",
                 budgets: Budgets | None = None, join_ms: int | None = None) -> None:
        self.rig = rig
        store = rig.store
        self.guard = None if budgets is None else CostGuard(store.usage, budgets, lambda: store.clock.now_ms / 1000)
        self.front = LLMFront(store.locks, rig.queue, rig.appender, "mention", LEASE_MS, cancel, guard=self.guard,
                              turns=turns, queue_per_room=most, ephemeral=Ephemeral(store.bus, "n1", None),
                              join_lease_ms=join_ms)
        self.member = RecordingMember()

    async def ask(self, text: str = "@llm hi", role: str = "A", cid: str | None = None) -> bytes:
        """A stored question that mentions the bot: its id (the front has taken its turn)."""
        await self.rig.store.bus.follow(["r"], OTHER_NODE, 3600)
        entry_id = self.rig.store.log.add("r", chat_body("r", text, role))
        await self.front.answer(self.member, entry_id, role, cid)
        return entry_id

    def notices(self, event: str = "llm.queued") -> list[dict[str, Any]]:
        return [heard.frame for heard in self.rig.heard() if heard.kind == "frame" and heard.event == event]

    async def read(self) -> list[Request]:
        return await self.rig.queue.read("w1", 10, 0)


async def test_a_question_while_another_runs_waits_and_every_member_hears_llm_queued_with_its_position() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        await desk.ask()
        second = await desk.ask("@llm me too", "B")
        third = await desk.ask("@llm and me", "A")
        first, *waiting = await desk.read()
        assert rig.store.locks.held == {"r": first.rid}
        assert [(n["hd"]["reply_to"], n["hd"]["position"]) for n in desk.notices()] == [
            (second.decode(), 1), (third.decode(), 2)]
        assert [n["hd"]["rid"] for n in desk.notices()] == [request.rid for request in waiting]
        assert desk.member.pushed == []


async def test_one_question_more_than_llm_queue_per_room_is_busy_and_stays_stored() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig, most=1)
        await desk.ask()
        await desk.ask("@llm second")
        await desk.ask("@llm third", cid="c3")
        assert [(e["bd"]["code"], e["bd"]["cid"]) for e in desk.member.pushed] == [("busy", "c3")]
        assert len(rig.store.log.streams["r"]) == 3 and len(await desk.read()) == 2


async def test_a_waiting_question_is_parked_by_its_worker_and_starts_when_the_turn_passes() -> None:
    async with Rig(concurrency=1) as rig:
        desk = Turnstile(rig)
        go_on = asyncio.Event()
        rig.provider.script("first", go_on, *["!"])
        await desk.ask()
        await desk.ask("@llm me too", "B")
        first, second = await desk.read()
        running, task = rig.start(first)
        await settle(lambda: running.state is State.STREAMING)
        parked, parked_task = rig.start(second)  # over its concurrency: waiting questions take no slot
        await parked_task
        assert parked.state is State.WAITING and rig.worker._waiting == {second.rid: parked}
        assert rig.queue.acked == [] and rig.worker._free() == 0
        rig.store.clock.advance(5)
        await rig.worker._keepalive()  # its claim kept: no other worker takes it over
        assert rig.queue.pending[second.entry_id].idle_since_ms == rig.store.clock.now_ms
        go_on.set()
        await task
        rig.worker._wake("r")  # (the turns loop does this when told, or by its poll)
        await settle(lambda: not rig.worker._tasks)
        assert parked.state is State.DONE  # type: ignore[comparison-overlap]  # (changed by the wake)
        assert [body["hd"]["reply_to"] for _, body in rig.answers()] == [first.reply_to, second.reply_to]
        assert rig.queue.acked == [first.entry_id, second.entry_id]


async def test_the_room_s_turn_passing_is_told_to_the_workers() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        turns = rig.store.locks.turns()
        await turns.subscribe()
        await desk.ask()
        await desk.ask("@llm me too", "B")
        first, _ = await desk.read()
        await rig.serve(first)
        assert list(turns.messages)[-1] == ("message", b"r")


async def test_only_the_head_of_the_waiting_list_may_start_when_the_room_is_free() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        await desk.ask()
        await desk.ask("@llm second")
        await desk.ask("@llm third")
        first, second, third = await desk.read()
        await rig.serve(first)
        assert (await rig.store.locks.start("r", third.rid, 1000)).waits  # behind the second
        started = await rig.store.locks.start("r", second.rid, 1000)
        assert started.fence is not None and not started.waits
        assert [q.rid for q in rig.store.locks.queued("r")] == [third.rid]


async def test_cancelling_a_waiting_question_tells_every_member_and_its_worker_only_acknowledges_it() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        await desk.ask()
        second = await desk.ask("@llm me too", "B")
        first, waiting = await desk.read()
        await desk.front.cancel(desk.member, ClientEnvelope("llm.cancel", "B", "c", {"rid": waiting.rid}))
        [error] = desk.notices("llm.error")
        assert (error["hd"]["rid"], error["hd"]["reply_to"]) == (waiting.rid, second.decode())
        assert error["bd"]["code"] == "cancelled" and error["bd"]["cancelled_by"] == "B" and "id" not in error["hd"]
        assert rig.store.locks.queued("r") == ()
        generation = await rig.serve(waiting)
        assert generation.state is State.SKIPPED and rig.queue.acked == [waiting.entry_id]
        assert rig.provider.asked == [] and rig.answers() == []
        with pytest.raises(ProtocolError) as again:
            await desk.front.cancel(desk.member, ClientEnvelope("llm.cancel", "B", "c", {"rid": waiting.rid}))
        assert again.value.code == "unknown_generation"
        assert rig.store.locks.held == {"r": first.rid}  # the running one goes on


async def test_with_llm_cancel_asker_only_the_asker_may_take_its_waiting_question_off_the_list() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig, cancel="asker")
        await desk.ask()
        await desk.ask("@llm me too", "B")
        _, waiting = await desk.read()
        with pytest.raises(ProtocolError) as refused:
            await desk.front.cancel(desk.member, ClientEnvelope("llm.cancel", "A", "c", {"rid": waiting.rid}))
        assert refused.value.code == "forbidden" and len(rig.store.locks.queued("r")) == 1
        await desk.front.cancel(desk.member, ClientEnvelope("llm.cancel", "B", "c", {"rid": waiting.rid}))
        assert rig.store.locks.queued("r") == ()


async def test_a_waiting_question_over_budget_gives_up_its_place_and_is_not_queued() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig, budgets=Budgets(generations_per_hour=1))
        await desk.ask()
        await desk.ask("@llm me too", "B", cid="c2")
        await desk.front.idle()
        assert [e["bd"]["code"] for e in desk.member.pushed] == ["quota_exceeded"]
        assert rig.store.locks.queued("r") == () and len(await desk.read()) == 1 and desk.notices() == []


async def test_a_waiting_question_whose_request_cannot_be_queued_keeps_its_place_and_is_queued_later() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        desk.front._sleep = lambda _s: asyncio.sleep(0)
        await desk.ask()
        rig.queue.failing = StoreUnavailable("redis away")
        await desk.ask("@llm me too", "B")
        assert len(rig.store.locks.queued("r")) == 1
        rig.queue.failing = None
        await desk.front.idle()
        assert len(await desk.read()) == 2 and len(rig.store.locks.queued("r")) == 1


async def test_interrupt_cancels_the_running_answer_by_the_new_asker_and_drops_the_waiting_ones() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig, turns="interrupt")
        await desk.ask()
        [first] = await desk.read()
        rig.store.locks.waiting["r"] = [("g-old", "1-0", "A", rig.store.clock.now_ms + LEASE_MS)]
        newer = await desk.ask("@llm stop, me", "B")
        await desk.front.idle()
        assert rig.store.locks.cancelled == {("r", first.rid): "B"}
        [dropped] = desk.notices("llm.error")
        assert (dropped["hd"]["rid"], dropped["bd"]["code"]) == ("g-old", "cancelled")
        assert dropped["bd"]["cancelled_by"] == "B"
        assert [(q.reply_to, n) for n, q in enumerate(rig.store.locks.queued("r"), 1)] == [(newer.decode(), 1)]
        [notice] = desk.notices()
        assert notice["hd"]["position"] == 1


async def test_refuse_answers_busy_and_an_invoke_is_not_stored() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig, turns="refuse")
        await desk.ask()
        await desk.ask("@llm me too", "B", cid="c2")
        assert [(e["bd"]["code"], e["bd"]["cid"]) for e in desk.member.pushed] == [("busy", "c2")]
        with pytest.raises(ProtocolError) as busy:
            await desk.front.invoke(desk.member, ClientEnvelope("llm.invoke", "B", "i", {}),
                                    chat_body("r", "x", "B", event="llm.invoke"))
        assert busy.value.code == "busy" and len(rig.store.log.streams["r"]) == 2 and rig.store.locks.queued("r") == ()


async def test_with_queue_an_invoke_is_stored_then_waits_its_turn() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        await desk.ask()
        await desk.front.invoke(desk.member, ClientEnvelope("llm.invoke", "B", "i", {}),
                                chat_body("r", "x", "B", event="llm.invoke"))
        [invoke] = [entry for entry in rig.store.log.streams["r"]
                    if orjson.loads(entry[1][b"body"])["hd"]["event"] == "llm.invoke"]
        assert [q.reply_to for q in rig.store.locks.queued("r")] == [invoke[0].decode()]


async def test_a_waiting_question_past_its_deadline_leaves_the_list_when_it_reaches_its_head() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        await desk.ask()
        await desk.ask("@llm me too", "B")
        _, waiting = await desk.read()
        rig.store.locks.until.pop("r")  # the running answer holds the room all along (its lease renewed)
        rig.store.clock.advance(LEASE_MS / 1000 + 1)
        assert rig.store.locks.queued("r") == ()
        generation = await rig.serve(waiting)  # its request, read at last: another question holds the room
        assert generation.state is State.EXPIRED


async def test_a_stored_invoke_whose_turn_failed_takes_it_in_the_background_once_the_store_is_back() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)

        async def heal(_seconds: float) -> None:
            rig.store.locks.failing = None
            await asyncio.sleep(0)

        desk.front._sleep = heal
        rig.store.locks.failing = StoreUnavailable("redis away")
        await desk.front.invoke(desk.member, ClientEnvelope("llm.invoke", "B", "i", {}),
                                chat_body("r", "x", "B", event="llm.invoke"))
        await desk.front.idle()
        [request] = await desk.read()  # stored, so its sender was not told it failed: it is answered
        assert desk.member.pushed == [] and rig.store.locks.held == {"r": request.rid}


async def test_a_resent_question_is_asked_only_if_its_first_sending_never_took_its_turn() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig)
        await rig.store.bus.follow(["r"], OTHER_NODE, 3600)
        lost = rig.store.log.add("r", chat_body("r", "@llm first sending's reply lost"))  # stored, never asked
        await desk.front.answer(desk.member, lost, "A", "c1", resent=True)
        [request] = await desk.read()
        assert request.reply_to == lost.decode()
        await desk.front.answer(desk.member, lost, "A", "c1", resent=True)  # asked already: nothing more
        assert await desk.read() == [] and desk.member.pushed == []


JOIN_MS = 30_000  # the joining lease (LLM_JOIN_LEASE_S)


async def test_a_question_whose_request_was_never_queued_holds_its_turn_only_for_the_joining_lease() -> None:
    """Its relay died between taking the turn and queueing the request (here: the queue refuses, and
    the relay's retries die with it)."""
    async with Rig() as rig:
        dead = Turnstile(rig, join_ms=JOIN_MS)
        rig.queue.failing = StoreUnavailable("redis away")
        await dead.ask()
        await dead.front.aclose()
        rig.queue.failing = None
        [stuck] = rig.store.locks.held.values()
        live = Turnstile(rig, join_ms=JOIN_MS)
        rig.store.clock.advance(JOIN_MS / 1000 - 1)
        await live.ask("@llm still there?", "B")
        assert rig.store.locks.holder("r") == stuck and len(rig.store.locks.queued("r")) == 1
        rig.store.clock.advance(2)  # the joining lease ran out: the room is free, the waiting one heads the list
        [waiting] = await live.read()
        assert (await rig.store.locks.start("r", waiting.rid, 1000)).fence is not None


async def test_a_question_whose_request_is_queued_keeps_its_turn_for_the_queued_lease() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig, join_ms=JOIN_MS)
        await desk.ask()
        await desk.ask("@llm me too", "B")
        first, second = await desk.read()
        rig.store.clock.advance(JOIN_MS / 1000 + 1)
        assert rig.store.locks.holder("r") == first.rid  # (no worker has started it yet)
        assert [queued.rid for queued in rig.store.locks.queued("r")] == [second.rid]
        rig.store.clock.advance(LEASE_MS / 1000 - JOIN_MS / 1000 - 2)
        assert rig.store.locks.holder("r") == first.rid and len(rig.store.locks.queued("r")) == 1


async def test_a_turn_whose_keeping_failed_is_kept_in_the_background_once_the_store_is_back() -> None:
    async with Rig() as rig:
        desk = Turnstile(rig, join_ms=JOIN_MS)
        add = rig.queue.add

        async def add_then_fail(request: Request) -> None:  # queued; then Redis goes away
            await add(request)
            rig.store.locks.failing = StoreUnavailable("redis away")

        async def heal(_seconds: float) -> None:
            rig.store.locks.failing = None
            await asyncio.sleep(0)

        rig.queue.add = add_then_fail  # type: ignore[method-assign]
        desk.front._sleep = heal
        await desk.ask()
        await desk.front.idle()
        [request] = await desk.read()
        rig.store.clock.advance(JOIN_MS / 1000 + 1)
        assert rig.store.locks.holder("r") == request.rid
