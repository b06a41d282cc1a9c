"""The dispatcher on a running appender over the fake log, with real members: the event table, what is
stored, answers to the sender (duplicates, errors), inflight backpressure and the hand-off to the bot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from protocol.codec import message_body
from protocol.envelope import ClientEnvelope
from protocol.errors import ProtocolError
from protocol.names import CLIENT_EVENTS
from server.appender import Appender
from server.dispatch import MAX_INFLIGHT, Dispatcher
from server.llm.front import LLMFront
from server.metrics import COUNTS
from server.settings import Trigger
from server.store.ports import Retention, StoreUnavailable
from tests.unit.fakes import FakeStore
from tests.unit.server.helpers import member, no_leftover_tasks, passes, until

LEASE_MS = 600_000  # the queued lease (LLM_QUEUE_LEASE_S)


@pytest.fixture(autouse=True)
async def _clean() -> AsyncIterator[None]:
    async with no_leftover_tasks():
        yield


class Rig:
    def __init__(self, bot: Trigger | None = None) -> None:
        self.store = FakeStore()
        self.appender = Appender(self.store.log, Retention(dedupe_s=60), "n1", lambda *_: None)
        self.task = asyncio.get_running_loop().create_task(self.appender.run())
        self.queue = self.store.requests("q")
        self.front = None if bot is None else LLMFront(self.store.locks, self.queue, self.appender, bot, LEASE_MS,
                                                       sleep=lambda _s: asyncio.sleep(0))
        self.dispatcher = Dispatcher(self.appender, self.front)

    def stored(self, room: str = "r") -> list[dict[str, Any]]:
        return [orjson.loads(fields[b"body"]) for _, fields in self.store.log.streams.get(room, [])]


def chat(text: str = "hi", cid: str | None = "c1", role: str = "A") -> ClientEnvelope:
    return ClientEnvelope("chat.message", role, cid, {"text": text})


async def test_every_client_event_has_a_handler() -> None:
    rig = Rig()
    assert set(rig.dispatcher._handlers) == CLIENT_EVENTS


async def test_a_chat_message_is_stored_with_the_servers_header_and_the_clients_body() -> None:
    rig = Rig()
    sender, _ = member()
    before = COUNTS.messages_in["chat.message"]
    await rig.dispatcher.dispatch(sender, chat("hello", "c1", "B"))
    await until(lambda: bool(rig.stored()))
    [stored] = rig.stored()
    assert stored["bd"] == {"text": "hello"}
    assert {key: stored["hd"][key] for key in ("event", "role", "sid", "cid")} == {
        "event": "chat.message", "role": "B", "sid": "r", "cid": "c1"}
    assert list(stored["hd"])[:4] == ["event", "role", "sid", "ts"]
    assert rig.store.log.streams["r"][0][1][b"participant"] == b"B"
    assert COUNTS.messages_in["chat.message"] == before + 1


def test_a_header_has_no_cid_when_the_client_gave_none() -> None:
    body = message_body("chat.message", "A", "r", 1_700_000_000_123, None, {"text": "hi"})
    assert orjson.loads(body)["hd"] == {"event": "chat.message", "role": "A", "sid": "r",
                                        "ts": "2023-11-14T22:13:20.123Z"}


async def test_the_sender_gets_no_direct_answer_for_a_stored_message() -> None:
    rig = Rig()
    sender, outlet = member()
    await rig.dispatcher.dispatch(sender, chat())
    await until(lambda: bool(rig.stored()))
    await passes()
    assert outlet.frames == []  # its broadcast comes from the feed, like everyone's


async def test_a_resent_message_is_answered_to_the_sender_alone_with_the_original_entry() -> None:
    rig = Rig()
    sender, outlet = member()
    await rig.dispatcher.dispatch(sender, chat("first", "c1"))
    await until(lambda: sender.inflight == 0)
    original = rig.store.log.last("r")
    await rig.dispatcher.dispatch(sender, chat("resent", "c1"))
    await until(lambda: bool(outlet.frames))
    [answer] = outlet.bodies()
    assert answer["hd"]["id"] == original.decode() and answer["bd"] == {"text": "first"}
    assert len(rig.stored()) == 1


@pytest.mark.parametrize(("error", "code"), [(StoreUnavailable("down"), "unavailable"),
                                             (RuntimeError("bug"), "internal")])
async def test_a_failed_append_is_answered_with_an_error_frame_carrying_the_cid(error: Exception,
                                                                                code: str) -> None:
    rig = Rig()
    rig.store.log.failing = error
    sender, outlet = member()
    await rig.dispatcher.dispatch(sender, chat(cid="c7"))
    await until(lambda: bool(outlet.frames))
    [answer] = outlet.bodies()
    assert answer["hd"] == {"event": "error"}
    assert answer["bd"]["code"] == code and answer["bd"]["cid"] == "c7"
    assert sender.inflight == 0


async def test_a_message_short_of_replicas_is_stored_but_answered_unavailable_and_its_resend_finds_it() -> None:
    rig = Rig()
    rig.store.log.unreplicated_rooms.add("r")
    sender, outlet = member()
    await rig.dispatcher.dispatch(sender, chat("first", "c1"))
    await until(lambda: bool(outlet.frames))
    [answer] = outlet.bodies()
    assert answer["bd"]["code"] == "unavailable" and answer["bd"]["cid"] == "c1"
    assert [stored["bd"] for stored in rig.stored()] == [{"text": "first"}]  # it is on the primary
    rig.store.log.unreplicated_rooms.clear()  # the replica is back
    await rig.dispatcher.dispatch(sender, chat("first", "c1"))
    await until(lambda: len(outlet.frames) == 2)
    resent = outlet.bodies()[1]
    assert resent["hd"]["id"] == rig.store.log.last("r").decode() and resent["bd"] == {"text": "first"}
    assert len(rig.stored()) == 1


async def test_llm_events_without_a_bot_are_unknown_events() -> None:
    rig = Rig(bot=None)
    sender, _ = member()
    for envelope in (ClientEnvelope("llm.invoke", "A", "c2", {"text": "q"}),
                     ClientEnvelope("llm.cancel", "A", "c3", {"rid": "g-1"})):
        with pytest.raises(ProtocolError) as refused:
            await rig.dispatcher.dispatch(sender, envelope)
        assert refused.value.code == "unknown_event" and refused.value.cid == envelope.cid
    assert rig.stored() == []


async def test_inflight_counts_a_members_appends_until_the_store_answers() -> None:
    rig = Rig()
    rig.store.log.gate = asyncio.Event()
    sender, _ = member()
    for n in range(3):
        await rig.dispatcher.dispatch(sender, chat(cid=f"c{n}"))
    assert sender.inflight == 3
    rig.store.log.gate.set()
    await until(lambda: sender.inflight == 0)


async def test_a_member_with_max_inflight_appends_waits_until_they_drain() -> None:
    rig = Rig()
    rig.store.log.gate = asyncio.Event()
    sender, _ = member()
    other, _ = member()
    for n in range(MAX_INFLIGHT - 1):
        await rig.dispatcher.dispatch(sender, chat(cid=f"c{n}"))  # returns at once
    blocked = asyncio.get_running_loop().create_task(rig.dispatcher.dispatch(sender, chat(cid="last")))
    await passes()
    assert not blocked.done() and sender.inflight == MAX_INFLIGHT
    await asyncio.wait_for(rig.dispatcher.dispatch(other, chat(cid="x")), 1)  # others are not held up
    rig.store.log.gate.set()
    await until(blocked.done)
    assert sender.inflight < MAX_INFLIGHT // 2
    assert sender not in rig.dispatcher._drained


# -- the hand-off to the bot -------------------------------------------------------------------------

async def test_a_message_mentioning_the_bot_queues_a_request_answering_the_stored_entry() -> None:
    rig = Rig(bot="mention")
    sender, outlet = member()
    await rig.dispatcher.dispatch(sender, chat("@llm what time is it?", "c1", "B"))
    await until(lambda: bool(rig.queue.new))
    [request] = rig.queue.new
    assert (request.room, request.reply_to, request.asker) == ("r", rig.store.log.last("r").decode(), "B")
    assert rig.store.locks.held["r"] == request.rid
    assert outlet.frames == []


async def test_a_message_not_mentioning_the_bot_queues_nothing() -> None:
    rig = Rig(bot="mention")
    sender, _ = member()
    await rig.dispatcher.dispatch(sender, chat("just us"))
    await until(lambda: sender.inflight == 0)
    await passes()
    assert not rig.queue.new and rig.store.locks.held == {}


async def test_a_bot_question_in_a_busy_room_is_stored_and_answered_busy() -> None:
    rig = Rig(bot="always")
    rig.store.locks.held["r"] = "g-other"
    sender, outlet = member()
    await rig.dispatcher.dispatch(sender, chat("hello", "c5"))
    await until(lambda: bool(outlet.frames))
    [answer] = outlet.bodies()
    assert answer["bd"]["code"] == "busy" and answer["bd"]["cid"] == "c5"
    assert len(rig.stored()) == 1 and not rig.queue.new


async def test_a_hand_off_to_the_bot_the_store_fails_is_no_error_for_the_sender_and_is_made_once_it_is_back(
        ) -> None:
    rig = Rig(bot="always")
    rig.store.locks.failing = StoreUnavailable("down")
    sender, outlet = member()
    await rig.dispatcher.dispatch(sender, chat("hello", "c6"))
    await until(lambda: sender.inflight == 0)
    await passes()
    assert not outlet.frames and not rig.queue.new  # the message is stored: nothing to refuse
    rig.store.locks.failing = None
    await until(lambda: bool(rig.queue.new))
    assert rig.queue.new[0].asker == "A"


async def test_a_resent_question_does_not_ask_the_bot_again() -> None:
    rig = Rig(bot="always")
    sender, _ = member()
    await rig.dispatcher.dispatch(sender, chat("q", "c1"))
    await until(lambda: bool(rig.queue.new))
    rig.store.locks.held.clear()
    await rig.dispatcher.dispatch(sender, chat("q", "c1"))
    await until(lambda: sender.inflight == 0)
    await passes()
    assert len(rig.queue.new) == 1


async def test_llm_invoke_and_cancel_go_to_the_bot() -> None:
    rig = Rig(bot="explicit")
    sender, _ = member()
    await rig.dispatcher.dispatch(sender, ClientEnvelope("llm.invoke", "A", "c1", {"text": "q"}))
    [request] = rig.queue.new
    assert rig.stored()[0]["hd"]["event"] == "llm.invoke"
    await rig.dispatcher.dispatch(sender, ClientEnvelope("llm.cancel", "A", "c2", {"rid": request.rid}))
    assert ("r", request.rid) in rig.store.locks.cancelled
    with pytest.raises(ProtocolError) as refused:
        await rig.dispatcher.dispatch(sender, ClientEnvelope("llm.cancel", "A", "c3", {"rid": "g-none"}))
    assert refused.value.code == "unknown_generation" and refused.value.cid == "c3"


async def test_llm_regenerate_goes_to_the_bot() -> None:
    rig = Rig(bot="explicit")
    sender, _ = member()
    with pytest.raises(ProtocolError) as refused:  # (the rig's front reads no log: no answer is found)
        await rig.dispatcher.dispatch(sender, ClientEnvelope("llm.regenerate", "A", "c4", {"rid": "g-none"}))
    assert refused.value.code == "unknown_generation" and refused.value.cid == "c4"
    with pytest.raises(ProtocolError) as no_bot:
        await Rig().dispatcher.dispatch(sender, ClientEnvelope("llm.regenerate", "A", "c5", {"rid": "g-1"}))
    assert no_bot.value.code == "unknown_event"
