"""Turns for two humans (``LLM_TURNS``), from outside: real server processes on one real Redis.

``queue`` (the default): a question asked while the bot answers is stored, every member hears
``llm.queued`` with its position, and it is answered after the running one, never two answers
streaming at once, whichever node asked; at most ``LLM_QUEUE_PER_ROOM`` wait (one more is ``busy``);
``llm.cancel`` of a waiting question takes it off the queue (``llm.error`` ``cancelled`` to every
member, not stored, never answered); ``session.ready`` lists the waiting questions. ``interrupt``: the
running answer is cancelled by the new question's asker and the new question is answered.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from server.store.keys import llm_lock_key, llm_requests_key, stream_key
from tests.conftest import RUN
from tests.server.test_llm import END, one_generation_at_a_time
from tests.support.client import Client
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange

LONG = "@llm #long tell me everything"


async def frames_until(client: Client, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or not done(frames):
        frames.append(await client.recv())
    return frames


def ended(rid: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda frames: frames[-1]["hd"]["event"] in END and frames[-1]["hd"].get("rid") == rid


async def ask(client: Client, text: str, cid: str) -> dict[str, Any]:
    """Send a question; its stored entry, as its sender receives it."""
    await client.chat(text, cid=cid)
    while True:
        frame = await client.recv()
        if frame["hd"].get("cid") == cid and frame["hd"]["event"] == "chat.message":
            return frame


async def first_delta(client: Client) -> dict[str, Any]:
    while (frame := await client.recv())["hd"]["event"] != "llm.streaming":
        pass
    return frame


async def long_answer(asker: Client, cid: str) -> dict[str, Any]:
    """Ask the long question; the first delta of its answer, once it came."""
    await ask(asker, LONG, cid)
    return await first_delta(asker)


async def refusal(client: Client) -> tuple[str, str]:
    """``(code, cid)`` of the client's next error frame."""
    error = (await frames_until(client, lambda f: f[-1]["hd"]["event"] == "error"))[-1]
    return error["bd"]["code"], error["bd"]["cid"]


def streamed(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The frames but the ``llm.queued`` notices (which come while another answer streams)."""
    return [f for f in frames if f["hd"]["event"] != "llm.queued"]


def queued(frames: list[dict[str, Any]]) -> bool:
    return bool(frames[-1]["hd"]["event"] == "llm.queued")


def bot_answers(rdb: redis.Redis, room: str) -> list[dict[str, Any]]:
    bodies = [orjson.loads(fields["body"]) for _, fields in xrange(rdb, stream_key(room))]
    return [body for body in bodies if body["hd"]["role"] == "llm"]


@pytest.fixture(scope="module")
def queueing(start_server: Callable[..., ServerProcess], redis_url: str) -> tuple[ServerProcess, ServerProcess]:
    """Two relays of one deployment with the default turns (``queue``), at most two questions waiting."""
    queue = f"t{RUN}-turns"
    env = {"REDIS_URL": redis_url, "LLM_QUEUE": queue, "LLM_QUEUE_PER_ROOM": "2", "LLM_SCRIPTED_DELAY_MS": "20"}
    return start_server(**env), start_server(**env)


async def test_two_humans_questions_are_answered_in_turn_on_two_nodes(
        queueing: tuple[ServerProcess, ServerProcess], room: str, rdb: redis.Redis) -> None:
    one, two = queueing
    async with await Client.open(one.ws(room, role="A")) as a, await Client.open(two.ws(room, role="B")) as b:
        first = await ask(a, LONG, "qa")
        running = await first_delta(a)
        second = await ask(b, "@llm and mine?", "qb")
        notices = [await frames_until(client, queued) for client in (a, b)]
        for frames in notices:
            notice = frames[-1]
            assert notice["hd"]["reply_to"] == second["hd"]["id"] and notice["hd"]["position"] == 1
            assert notice["hd"]["role"] == "llm" and notice["bd"] == {} and "id" not in notice["hd"]
        waiting_rid = notices[0][-1]["hd"]["rid"]
        assert notices[1][-1]["hd"]["rid"] == waiting_rid != running["hd"]["rid"]
        seen = {client: [*frames] for client, frames in zip((a, b), notices, strict=True)}
        for client in (a, b):
            seen[client] += await frames_until(client, ended(waiting_rid))
    for client, frames in seen.items():
        one_generation_at_a_time(streamed(frames))  # never two answers streaming at once, to either member
        ends = [f for f in frames if f["hd"]["event"] in END]
        assert [f["hd"]["rid"] for f in ends][-2:] == [running["hd"]["rid"], waiting_rid], client
        assert ends[-1]["hd"]["reply_to"] == second["hd"]["id"] and ends[-1]["bd"]["finish_reason"] == "stop"
    answers = bot_answers(rdb, room)
    assert [(x["hd"]["reply_to"], x["hd"]["event"]) for x in answers] == [
        (first["hd"]["id"], "llm.response"), (second["hd"]["id"], "llm.response")]


async def test_at_most_llm_queue_per_room_questions_wait_and_one_more_is_busy(
        queueing: tuple[ServerProcess, ServerProcess], room: str, rdb: redis.Redis) -> None:
    one, two = queueing
    async with await Client.open(one.ws(room, role="A")) as a, await Client.open(two.ws(room, role="B")) as b:
        running = await long_answer(a, "q0")
        positions = []
        for n in (1, 2):
            await ask(b, f"@llm question {n}", f"q{n}")
            positions.append((await frames_until(b, queued))[-1]["hd"]["position"])
        assert positions == [1, 2]
        await b.chat("@llm one too many", cid="q3")
        refused = await frames_until(b, lambda f: f[-1]["hd"]["event"] == "error")
        assert (refused[-1]["bd"]["code"], refused[-1]["bd"]["cid"]) == ("busy", "q3")
        assert any(f["hd"].get("cid") == "q3" and f["hd"]["event"] == "chat.message" for f in refused)  # stored
        await b.send({"event": "llm.cancel", "cid": "stop"}, {"rid": running["hd"]["rid"]})
        frames = await frames_until(b, lambda f: len([x for x in f if x["hd"]["event"] in END]) == 3)
    one_generation_at_a_time(streamed(frames))
    assert len(bot_answers(rdb, room)) == 3  # the running one (cancelled) and the two that waited


async def test_cancelling_a_waiting_question_takes_it_off_the_queue_for_every_member(
        queueing: tuple[ServerProcess, ServerProcess], room: str, rdb: redis.Redis) -> None:
    one, two = queueing
    async with await Client.open(one.ws(room, role="A")) as a, await Client.open(two.ws(room, role="B")) as b:
        running = await long_answer(a, "qa")
        dropped = await ask(b, "@llm never mind", "qb")
        notice = (await frames_until(b, queued))[-1]
        async with await Client.open(two.ws(room, role="B")) as late:  # enters while it waits
            assert late.ready["bd"]["generations"][-1] == {"rid": notice["hd"]["rid"], "reply_to": dropped["hd"]["id"],
                                                           "state": "queued", "position": 1}
        await b.send({"event": "llm.cancel", "cid": "c"}, {"rid": notice["hd"]["rid"]})
        for client in (a, b):
            frames = await frames_until(client, lambda f: f[-1]["hd"]["event"] == "llm.error")
            error = frames[-1]
            assert (error["hd"]["rid"], error["hd"]["reply_to"]) == (notice["hd"]["rid"], dropped["hd"]["id"])
            assert error["bd"]["code"] == "cancelled" and error["bd"]["cancelled_by"] == "B" and "id" not in error["hd"]
        rest = await frames_until(a, ended(running["hd"]["rid"]))
        assert rest[-1]["bd"]["finish_reason"] == "stop"
        await b.send({"event": "llm.cancel", "cid": "again"}, {"rid": notice["hd"]["rid"]})
        assert await refusal(b) == ("unknown_generation", "again")
        await ask(a, "@llm still there?", "after")  # the room is free: answered at once, not after the dropped one
        after = await frames_until(a, lambda f: f[-1]["hd"]["event"] in END)
        assert after[-1]["hd"]["event"] == "llm.response" and after[-1]["hd"]["rid"] != notice["hd"]["rid"]
    assert [x["hd"]["rid"] for x in bot_answers(rdb, room)] == [running["hd"]["rid"], after[-1]["hd"]["rid"]]


async def test_only_the_asker_may_take_its_waiting_question_off_the_queue_with_llm_cancel_asker(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_CANCEL="asker", LLM_QUEUE=f"t{RUN}-asker-{secrets.token_hex(3)}")
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b:
        running = await long_answer(a, "qa")
        await ask(b, "@llm mine", "qb")
        notice = (await frames_until(b, queued))[-1]
        await a.send({"event": "llm.cancel", "cid": "not-yours"}, {"rid": notice["hd"]["rid"]})
        assert await refusal(a) == ("forbidden", "not-yours")
        await b.send({"event": "llm.cancel", "cid": "stop-running"}, {"rid": running["hd"]["rid"]})
        assert await refusal(b) == ("forbidden", "stop-running")
        await a.send({"event": "llm.cancel"}, {"rid": running["hd"]["rid"]})  # the asker may
        frames = await frames_until(a, ended(notice["hd"]["rid"]))
    ends = [f for f in frames if f["hd"]["event"] in END]
    assert ends[0]["bd"]["finish_reason"] == "cancelled" and ends[0]["bd"]["cancelled_by"] == "A"
    assert ends[-1]["hd"]["event"] == "llm.response" and ends[-1]["bd"]["finish_reason"] == "stop"


async def test_interrupt_cancels_the_running_answer_for_the_new_question(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_TURNS="interrupt", LLM_QUEUE=f"t{RUN}-int-{secrets.token_hex(3)}")
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b:
        running = await long_answer(a, "qa")
        newer = await ask(b, "@llm stop, answer me", "qb")
        frames = await frames_until(a, lambda f: f[-1]["hd"]["event"] in END
                                    and f[-1]["hd"]["reply_to"] == newer["hd"]["id"])
    one_generation_at_a_time(streamed(frames))
    ends = [f for f in frames if f["hd"]["event"] in END]
    assert ends[0]["hd"]["rid"] == running["hd"]["rid"]
    assert ends[0]["bd"]["finish_reason"] == "cancelled" and ends[0]["bd"]["cancelled_by"] == "B"
    assert ends[-1]["hd"]["event"] == "llm.response" and ends[-1]["bd"]["finish_reason"] == "stop"
    assert [x["bd"].get("finish_reason") for x in bot_answers(rdb, room)] == ["cancelled", "stop"]


async def test_a_relay_dying_before_it_queued_a_question_holds_the_room_only_for_the_joining_lease(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    """The question took its turn (the room's lock), its request could not be queued (the queue's key
    refuses it), and its relay was killed while it retried: the next question is answered once the
    joining lease (``LLM_JOIN_LEASE_S``) runs out, not the queued lease (``LLM_QUEUE_LEASE_S``, 600 s)."""
    queue = f"t{RUN}-join-{secrets.token_hex(3)}"
    env = {"REDIS_URL": redis_url, "LLM_QUEUE": queue, "LLM_JOIN_LEASE_S": "2", "LLM_SCRIPTED_DELAY_MS": "20"}
    rdb.set(llm_requests_key(queue), "not a stream")  # XADD refused: WRONGTYPE
    try:
        dying = start_server(**env, LLM_WORKERS="0")
        async with await Client.open(dying.ws(room, role="A")) as a:
            await ask(a, "@llm are you there?", "q1")
            deadline = time.monotonic() + 10
            while not rdb.exists(llm_lock_key(room)):  # its turn is taken (then its queueing fails)
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            dying.kill()
    finally:
        rdb.delete(llm_requests_key(queue))
    live = start_server(**env)
    async with await Client.open(live.ws(room, role="B")) as b:
        second = await ask(b, "@llm anyone?", "q2")
        frames = await frames_until(b, lambda f: f[-1]["hd"]["event"] in END)
    assert (frames[-1]["hd"]["event"], frames[-1]["hd"]["reply_to"]) == ("llm.response", second["hd"]["id"])
