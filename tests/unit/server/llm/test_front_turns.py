"""The bot's front desk and the cost guard and ``llm.regenerate``, on fakes.

Rules, each named by a test: a question over a budget is stored (a mention, an ``llm.invoke``), its
asker told ``quota_exceeded`` with ``retry_after_s``, the room's lock released, nothing queued; ``busy``
comes before the budget (a busy question is not counted); ``llm.regenerate`` of a stored answer queues
a new generation answering the same question, with ``regenerates``; of an unknown, running or ended
rid it is ``unknown_generation``; it takes a turn (``busy``, ``quota_exceeded``) like any question.
"""

from __future__ import annotations

import pytest

from protocol.codec import llm_error_body, llm_response_body
from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from protocol.names import LLM_ROLE
from server.settings import Budgets
from server.store.ports import NewEntry, Retention
from tests.unit.server.llm.rig import chat_body
from tests.unit.server.llm.test_front import LEASE_MS, Desk

ONE_AN_HOUR = Budgets(generations_per_hour=1)


def regenerate(rid: str, cid: str | None = "r1", role: str = "B") -> ClientEnvelope:
    return ClientEnvelope("llm.regenerate", role, cid, {"rid": rid})


async def store_answer(desk: Desk, rid: str, reply_to: str, text: str = "an answer") -> bytes:
    """The bot's answer ``rid`` to ``reply_to``, stored as the worker stores it (its rid as the cid)."""
    body = llm_response_body("r", rid, reply_to, 0, text, "stop", "m")
    result = await desk.store.log.append_batch([NewEntry("r", LLM_ROLE, body, rid)], Retention(dedupe_s=3600), "w")
    [entry_id] = result.ids
    assert isinstance(entry_id, bytes)
    return entry_id


# -- the cost guard at the front desk -------------------------------------------------------------

async def test_a_mention_over_the_rooms_budget_stays_stored_and_its_asker_gets_quota_exceeded() -> None:
    async with Desk(budgets=ONE_AN_HOUR) as desk:
        await desk.front.answer(desk.member, b"5-0", "A", "c1")
        [first] = desk.queued
        desk.store.locks.drop("r")  # its answer ended
        desk.store.clock.advance(600)
        entry_id = desk.store.log.add("r", chat_body("r", "@llm again"))
        await desk.front.answer(desk.member, entry_id, "A", "c2")
        await desk.front.idle()
        [error] = desk.member.pushed
        assert error["hd"] == {"event": "error"}
        assert (error["bd"]["code"], error["bd"]["cid"], error["bd"]["retry_after_s"]) == ("quota_exceeded", "c2",
                                                                                          3000)
        assert desk.queued == [first] and desk.store.locks.held == {}  # not queued, the room free again
        assert [entry[0] for entry in desk.store.log.streams["r"]] == [entry_id]  # the question stays stored


async def test_an_invoke_over_the_budget_is_stored_and_refused_quota_exceeded() -> None:
    async with Desk(budgets=ONE_AN_HOUR) as desk:
        await desk.invoke(cid="c1")
        desk.store.locks.drop("r")
        await desk.invoke("again", cid="c2")
        await desk.front.idle()
        assert [(f["bd"]["code"], f["bd"]["cid"]) for f in desk.member.pushed] == [("quota_exceeded", "c2")]
        assert len(desk.store.log.streams["r"]) == 2 and len(desk.queued) == 1
        assert desk.store.locks.held == {}


async def test_busy_comes_before_the_budget_and_a_busy_question_is_not_counted() -> None:
    async with Desk(budgets=Budgets(generations_per_hour=2)) as desk:
        await desk.front.answer(desk.member, b"5-0", "A", "c1")
        await desk.front.answer(desk.member, b"6-0", "B", "c2")  # busy: not counted
        assert [f["bd"]["code"] for f in desk.member.pushed] == ["busy"]
        desk.store.locks.drop("r")
        await desk.front.answer(desk.member, b"7-0", "B", "c3")  # the second of the hour
        assert len(desk.queued) == 2 and len(desk.store.usage.accepted["r"]) == 2


# -- llm.regenerate --------------------------------------------------------------------------------

async def test_regenerate_queues_a_new_generation_answering_the_same_question() -> None:
    async with Desk() as desk:
        question = desk.store.log.add("r", chat_body("r", "@llm hi"))
        await store_answer(desk, "g-old", question.decode())
        await desk.front.regenerate(desk.member, regenerate("g-old"))
        [request] = desk.queued
        assert (request.reply_to, request.regenerates, request.asker) == (question.decode(), "g-old", "B")
        assert request.rid != "g-old" and request.rid.startswith("g-")
        assert desk.store.locks.held == {"r": request.rid} and desk.member.pushed == []
        assert len(desk.store.log.streams["r"]) == 2  # nothing stored for the regenerate itself


async def test_regenerate_of_a_regenerated_answer_answers_the_first_question() -> None:
    async with Desk() as desk:
        question = desk.store.log.add("r", chat_body("r", "@llm hi"))
        await store_answer(desk, "g-2", question.decode())
        await desk.front.regenerate(desk.member, regenerate("g-2"))
        [request] = desk.queued
        assert (request.reply_to, request.regenerates) == (question.decode(), "g-2")


@pytest.mark.parametrize("case", ["unknown", "running", "ended", "trimmed", "another room's"])
async def test_regenerate_of_an_answer_the_room_does_not_hold_is_unknown_generation(case: str) -> None:
    async with Desk() as desk:
        question = desk.store.log.add("r", chat_body("r", "@llm hi"))
        if case == "running":  # (its answer is not stored yet: unknown, not busy)
            assert await desk.store.locks.lock("r", "g-old", LEASE_MS)
        elif case == "ended":  # with llm.error: no answer to regenerate
            body = llm_error_body("r", "g-old", question.decode(), 0, "provider_error", "x")
            await desk.store.log.append_batch([NewEntry("r", LLM_ROLE, body, "g-old")], Retention(dedupe_s=3600), "w")
        elif case == "trimmed":
            await store_answer(desk, "g-old", question.decode())
            desk.store.log.trim("r", 0)
            desk.store.log.add("r", chat_body("r", "later"))  # (the same epoch)
        elif case == "another room's":
            body = llm_response_body("other", "g-old", "1-0", 0, "x", "stop", "m")
            await desk.store.log.append_batch([NewEntry("other", LLM_ROLE, body, "g-old")], Retention(dedupe_s=60), "w")
        with pytest.raises(ProtocolError) as refused:
            await desk.front.regenerate(desk.member, regenerate("g-old", cid="r7"))
        assert (refused.value.code, refused.value.cid) == ("unknown_generation", "r7")
        assert desk.queued == [] and desk.store.locks.held == ({"r": "g-old"} if case == "running" else {})


async def test_regenerate_while_the_bot_answers_is_busy() -> None:
    async with Desk() as desk:
        question = desk.store.log.add("r", chat_body("r", "@llm hi"))
        await store_answer(desk, "g-old", question.decode())
        assert await desk.store.locks.lock("r", "g-other", LEASE_MS)
        with pytest.raises(ProtocolError) as refused:
            await desk.front.regenerate(desk.member, regenerate("g-old", cid="r2"))
        assert (refused.value.code, refused.value.cid) == ("busy", "r2") and desk.queued == []


async def test_regenerate_over_the_budget_is_quota_exceeded_and_leaves_the_room_free() -> None:
    async with Desk(budgets=ONE_AN_HOUR) as desk:
        question = desk.store.log.add("r", chat_body("r", "@llm hi"))
        await desk.front.answer(desk.member, question, "A", "c1")
        [first] = desk.queued
        desk.store.locks.drop("r")
        await store_answer(desk, first.rid, question.decode())
        await desk.front.regenerate(desk.member, regenerate(first.rid, cid="r3"))
        await desk.front.idle()
        [error] = desk.member.pushed
        assert (error["bd"]["code"], error["bd"]["cid"], error["bd"]["retry_after_s"]) == ("quota_exceeded", "r3",
                                                                                          3600)
        assert desk.queued == [first] and desk.store.locks.held == {}
