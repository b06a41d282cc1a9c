"""The LLM worker on fakes: what the room hears and what is stored, in which order, and the loops.

Ordering and fencing rules, each named by a test:

- deltas go to the room in ``seq`` order, each after the triggering message;
- every node hears a generation's deltas before its answer is appended (and announced);
- the room's lock is released by the answer's own store (one step): the room is free before anyone
  hears the answer; the request is acknowledged after it;
- an answer is stored with ``cid = rid``: a request retaken after its answer was stored (or after
  its llm.error was sent) is only acknowledged, never answered twice;
- a request delivered more than ``MAX_ATTEMPTS`` times ends with ``llm.error`` and is acknowledged;
- exactly one terminal event per question: an ``llm.response`` (stored) when any text was streamed or
  the answer finished, else one ``llm.error`` (after the triggering message, nothing stored);
- fencing: the worker takes the room's lock over with a new token; a worker whose token is stale
  (another worker took the request over, or its lease lapsed) sends no frame, stores no answer and
  sends no llm.error, and leaves the request to the worker that holds it;
- a final store that fails is retried (same cid: stored once); one that keeps failing ends with
  ``llm.error`` ``store_failed``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from protocol.names import LLM_ROLE
from server.llm.provider import Outcome, ProviderError
from server.llm.scripted import MODEL as SCRIPTED_MODEL
from server.llm.worker import ANSWER_DEDUPE_S, FINAL_WRITE_ATTEMPTS, MAX_ATTEMPTS, State
from server.settings import LLMSettings
from server.store.ports import Cancel, Request, StoreRefused, StoreUnavailable
from server.supervise import backoff
from tests.unit.server.llm.rig import Rig, Ticks, chat_body, instant, settle


def retake(request: Request, attempt: int) -> Request:
    return Request(request.room, request.rid, request.reply_to, request.asker, request.entry_id, attempt)


def events(rig: Rig, room: str = "r") -> list[str]:
    return [heard.event for heard in rig.heard(room)]


def deltas(rig: Rig, room: str = "r") -> list[str]:
    return [frame["bd"]["delta"] for frame in rig.frames(room) if frame["hd"]["event"] == "llm.streaming"]


# -- what the room hears, in order ---------------------------------------------------------------

async def test_deltas_go_to_the_room_in_seq_order_after_the_triggering_message() -> None:
    async with Rig() as rig:
        rig.provider.script("a", "b", "c", Outcome("stop", "m", None))
        request = await rig.ask()
        await rig.serve(request)
        streamed = [heard for heard in rig.heard() if heard.event == "llm.streaming"]
        assert [heard.frame["hd"]["seq"] for heard in streamed] == [0, 1, 2]
        assert [heard.frame["bd"]["delta"] for heard in streamed] == ["a", "b", "c"]
        assert {heard.id for heard in streamed} == {request.reply_to}  # each held until the question is delivered
        hd = streamed[0].frame["hd"]
        assert (hd["role"], hd["sid"], hd["rid"], hd["reply_to"]) == (LLM_ROLE, "r", request.rid, request.reply_to)
        assert "attempt" not in hd


async def test_the_answer_is_announced_after_all_its_deltas() -> None:
    async with Rig() as rig:
        rig.provider.script("a", "b", Outcome("stop", "m", None))
        await rig.serve(await rig.ask())
        [(answer_id, _)] = rig.answers()
        assert events(rig) == ["llm.streaming", "llm.streaming", "entry"]
        assert rig.heard()[-1].id == answer_id


async def test_every_node_hears_the_deltas_before_the_answer_is_appended() -> None:
    async with Rig() as rig:
        rig.store.locks.frames_gate = asyncio.Event()  # the deltas' publish is slow
        rig.provider.script("a", "b", Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(generation.text) == 2 and not rig.provider.scripts)
        for _ in range(20):
            await asyncio.sleep(0)
        assert rig.answers() == [] and rig.store.log.batches == []  # waits for the deltas' send
        assert rig.store.locks.held == {"r": request.rid}
        rig.store.locks.frames_gate.set()
        await task
        assert events(rig) == ["llm.streaming", "llm.streaming", "entry"]


async def test_the_answer_is_stored_and_the_lock_released_in_one_step_so_the_room_is_free_when_heard() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.gate = asyncio.Event()  # the append waits
        go_on.set()
        await settle(lambda: generation.state is State.STORING)
        assert await rig.store.locks.lock("r", "g-next", 60_000) is None  # the room is still answering
        rig.store.log.gate.set()
        await task
        [stored] = rig.store.log.batches[-1]
        assert stored.fence is not None and stored.fence.rid == request.rid  # the append checked the token
        assert len(rig.answers()) == 1 and rig.store.locks.held == {}
        assert await rig.store.locks.lock("r", "g-next", 60_000)  # free as soon as the answer is stored


async def test_the_request_is_acknowledged_only_after_the_answer_is_stored() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.gate = asyncio.Event()
        go_on.set()
        await settle(lambda: generation.state is State.STORING)
        assert rig.queue.acked == [] and request.entry_id in rig.queue.pending
        rig.store.log.gate.set()
        await task
        assert rig.queue.acked == [request.entry_id] and rig.queue.pending == {}


async def test_deltas_lost_on_the_bus_do_not_stop_the_answer() -> None:
    async with Rig() as rig:
        rig.provider.script("a", "b", Outcome("stop", "m", None))
        request = await rig.ask()
        rig.store.bus.failing = StoreUnavailable("publish failed")
        generation = await rig.serve(request)
        assert generation.state is State.DONE
        [(_, answer)] = rig.answers()
        assert answer["bd"]["text"] == "ab"
        assert rig.queue.acked == [request.entry_id]


# -- the stored answer ------------------------------------------------------------------------------

async def test_the_answer_is_stored_as_llm_response_with_the_text_model_and_usage() -> None:
    async with Rig() as rig:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        rig.provider.script("Hel", "lo", Outcome("length", SCRIPTED_MODEL, usage))
        request = await rig.ask()
        await rig.serve(request)
        [(_, answer)] = rig.answers()
        hd, bd = answer["hd"], answer["bd"]
        assert (hd["event"], hd["role"], hd["sid"], hd["rid"], hd["reply_to"]) == (
            "llm.response", LLM_ROLE, "r", request.rid, request.reply_to)
        assert hd["ts"].endswith("Z") and "attempt" not in hd
        assert bd == {"text": "Hello", "finish_reason": "length", "model": SCRIPTED_MODEL, "usage": usage}


async def test_a_finished_answer_names_the_model_asked_for_not_the_one_the_upstream_names() -> None:
    openai = LLMSettings(provider="openai", openai_api_key="k", model="gpt-x")
    async with Rig(settings=openai) as rig:
        rig.provider.script("Hi", Outcome("stop", "gpt-x-2024-07-18", None))
        await rig.serve(await rig.ask())
        [(_, answer)] = rig.answers()
        assert answer["bd"]["model"] == "gpt-x"


async def test_a_failed_answer_names_the_model_asked_for() -> None:
    openai = LLMSettings(provider="openai", openai_api_key="k", model="gpt-x")
    async with Rig(settings=openai) as rig:
        rig.provider.script("Hi", ProviderError("provider_unavailable"))
        await rig.serve(await rig.ask())
        [(_, answer)] = rig.answers()
        assert (answer["bd"]["finish_reason"], answer["bd"]["model"]) == ("error", "gpt-x")


async def test_a_failed_generation_logs_one_warning_with_its_code_status_and_message(
        caplog: pytest.LogCaptureFixture) -> None:
    async with Rig() as rig:
        rig.provider.script(ProviderError("provider_auth", "Refused. HTTP 401: bad key sk-***", 401))
        request = await rig.ask()
        with caplog.at_level(logging.WARNING, logger="server.llm.worker"):
            await rig.serve(request)
        assert [(r.levelname, r.getMessage()) for r in caplog.records if "failed" in r.getMessage()] == [
            ("WARNING", f"room r: generation {request.rid} failed: provider_auth (HTTP 401): "
                        "Refused. HTTP 401: bad key sk-***")]
        assert [frame["bd"]["code"] for frame in rig.frames() if frame["hd"]["event"] == "llm.error"] == [
            "provider_auth"]


async def test_the_answer_is_stored_with_cid_rid_so_it_is_stored_once() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        await rig.serve(request)
        [[entry]] = rig.store.log.batches
        assert (entry.participant, entry.cid, entry.dedupe_s) == (LLM_ROLE, request.rid, ANSWER_DEDUPE_S)
        assert rig.store.log.cids[("r", LLM_ROLE, request.rid)][1] == rig.answers()[0][0].encode()


async def test_a_retake_after_the_answer_was_stored_is_only_acknowledged() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        await rig.serve(request)
        frames_before = len(rig.heard())
        generation = await rig.serve(retake(request, 2))
        assert generation.state is State.SKIPPED
        assert len(rig.answers()) == 1 and len(rig.heard()) == frames_before  # nothing more said
        assert len(rig.provider.asked) == 1
        assert rig.queue.acked == [request.entry_id] * 2


async def cancelled_answer(settings: LLMSettings) -> dict[str, object]:
    async with Rig(settings=settings) as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", go_on)
        generation, task = rig.start(await rig.ask())
        await settle(lambda: len(rig.frames()) == 1)
        generation.cancel.set()
        await task
        [(_, answer)] = rig.answers()
        bd: dict[str, object] = answer["bd"]
        return bd


async def test_a_cancelled_answer_names_the_model_asked_for() -> None:
    assert await cancelled_answer(LLMSettings()) == {"text": "a", "finish_reason": "cancelled", "model": SCRIPTED_MODEL}
    openai = LLMSettings(provider="openai", openai_api_key="k", model="gpt-x")
    assert await cancelled_answer(openai) == {"text": "a", "finish_reason": "cancelled", "model": "gpt-x"}


async def test_the_model_sees_the_system_prompt_and_the_last_turns_up_to_the_question() -> None:
    settings = LLMSettings(history_turns=2, system_prompt="Be brief.")
    async with Rig(settings=settings) as rig:
        rig.store.log.add("r", chat_body("r", "first"))
        rig.store.log.add("r", chat_body("r", "second", role="B"), participant="B")
        request = await rig.ask(text="@llm third")
        rig.store.log.add("r", chat_body("r", "after the question"))
        await rig.serve(request)
        assert rig.provider.asked == [[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "B: second"},
            {"role": "user", "content": "A: @llm third"},
        ]]


async def test_the_model_sees_its_earlier_answers_and_invokes_as_turns() -> None:
    async with Rig() as rig:
        rig.provider.script("Hello", " there", Outcome("stop", "m", None))
        await rig.serve(await rig.ask(text="@llm hi"))
        invoke = rig.store.log.add("r", chat_body("r", "and then?", role="B", event="llm.invoke"), participant="B")
        await rig.serve(await rig.ask_about(invoke))
        assert rig.provider.asked[1][1:] == [
            {"role": "user", "content": "A: @llm hi"},
            {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "B: and then?"},
        ]


# -- attempts ----------------------------------------------------------------------------------------

async def test_a_request_delivered_more_than_max_attempts_times_ends_with_llm_error_and_is_acked() -> None:
    async with Rig() as rig:
        request = retake(await rig.ask(), MAX_ATTEMPTS + 1)
        generation = await rig.serve(request)
        assert generation.state is State.GAVE_UP
        [error] = rig.frames()  # stored: every member hears it, one away at the time included
        assert error["hd"]["reply_to"] == request.reply_to and error["hd"]["event"] == "llm.error"
        assert error["bd"]["code"] == "provider_error"
        assert str(MAX_ATTEMPTS) in error["bd"]["message"]
        assert error["hd"]["attempt"] == MAX_ATTEMPTS + 1
        assert rig.store.locks.held == {} and rig.queue.acked == [request.entry_id]
        assert rig.provider.asked == [] and rig.answers() == []


async def test_the_last_allowed_attempt_still_generates_and_says_its_attempt() -> None:
    async with Rig() as rig:
        rig.provider.script("a", "b", Outcome("stop", "m", None))
        request = retake(await rig.ask(), MAX_ATTEMPTS)
        generation = await rig.serve(request)
        assert generation.state is State.DONE
        assert [f["hd"]["seq"] for f in rig.frames()] == [0, 1]  # a retake starts again at seq 0
        assert {f["hd"]["attempt"] for f in rig.frames()} == {MAX_ATTEMPTS}
        assert rig.answers()[0][1]["hd"]["attempt"] == MAX_ATTEMPTS


# -- cancellation and failures -------------------------------------------------------------------

async def test_a_generation_cancelled_while_queued_stores_nothing_and_ends_with_llm_error_cancelled() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        assert (await rig.store.locks.cancel("r", request.rid, "B"))[0] is Cancel.CANCELLED  # while it waited
        generation = await rig.serve(request)
        assert generation.state is State.CANCELLED
        assert rig.provider.asked == [] and deltas(rig) == [] and rig.answers() == []
        [error] = rig.frames()
        assert error["hd"]["reply_to"] == request.reply_to and error["hd"]["event"] == "llm.error"
        assert error["bd"]["code"] == "cancelled"
        assert error["bd"]["cancelled_by"] == "B"
        assert rig.store.locks.held == {} and rig.queue.acked == [request.entry_id]


async def test_a_cancel_before_the_first_delta_stores_nothing_and_ends_with_one_llm_error_cancelled() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script(go_on, "never", Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.provider.asked) == 1)
        generation.cancel.set()
        await task
        assert generation.state is State.CANCELLED and rig.provider.ended == ["stopped"]
        assert rig.answers() == []  # no llm.response: the one stored entry is the llm.error
        assert [(f["hd"]["event"], f["bd"]["code"]) for f in rig.frames()] == [("llm.error", "cancelled")]
        assert rig.store.locks.held == {} and rig.queue.acked == [request.entry_id]


async def test_cancel_mid_stream_stores_the_partial_text_and_closes_the_model_stream() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hel", "lo", go_on, " never", Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 2)
        generation.cancel.set()
        await task
        assert rig.provider.ended == ["stopped"]
        assert deltas(rig) == ["Hel", "lo"]
        [(_, answer)] = rig.answers()
        assert answer["bd"]["text"] == "Hello" and answer["bd"]["finish_reason"] == "cancelled"
        assert events(rig) == ["llm.streaming", "llm.streaming", "entry"]
        assert rig.queue.acked == [request.entry_id]


async def test_a_provider_error_after_deltas_stores_the_partial_text_with_the_error_as_its_one_terminal_event(
) -> None:
    async with Rig() as rig:
        rig.provider.script("Hel", "lo", ProviderError("provider_unavailable"))
        request = await rig.ask()
        generation = await rig.serve(request)
        assert generation.state is State.FAILED
        [(_, answer)] = rig.answers()
        assert answer["bd"]["text"] == "Hello" and answer["bd"]["finish_reason"] == "error"
        assert answer["bd"]["error"]["code"] == "provider_unavailable" and answer["bd"]["error"]["message"]
        assert events(rig) == ["llm.streaming", "llm.streaming", "entry"]  # no llm.error after it
        assert rig.queue.acked == [request.entry_id] and rig.store.locks.held == {}


async def test_a_provider_error_before_any_delta_says_llm_error_only() -> None:
    async with Rig() as rig:
        rig.provider.script(ProviderError("provider_rate_limited", "slow down"))
        request = await rig.ask()
        generation = await rig.serve(request)
        assert generation.state is State.FAILED
        assert rig.answers() == []
        [error] = rig.frames()
        assert error["hd"]["reply_to"] == request.reply_to
        assert error["bd"] == {"code": "provider_rate_limited", "message": "slow down"}
        assert rig.queue.acked == [request.entry_id] and rig.store.locks.held == {}


async def test_a_stream_that_ends_without_an_outcome_fails_as_provider_unavailable() -> None:
    async with Rig() as rig:
        rig.provider.script("a")
        generation = await rig.serve(await rig.ask())
        assert generation.state is State.FAILED
        [(_, answer)] = rig.answers()
        assert answer["bd"]["finish_reason"] == "error" and answer["bd"]["error"]["code"] == "provider_unavailable"


async def test_an_llm_error_that_cannot_be_sent_leaves_the_request_queued() -> None:
    async with Rig(sleep=instant) as rig:
        go_on = asyncio.Event()
        rig.provider.script(go_on, ProviderError("provider_timeout"))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.provider.asked) == 1)
        rig.store.log.failing_rooms["r"] = StoreUnavailable("down")
        go_on.set()
        await task
        assert generation.state is State.ABANDONED
        assert rig.queue.acked == [] and request.entry_id in rig.queue.pending
        assert rig.frames() == []


# -- fencing ------------------------------------------------------------------------------------------

async def test_the_worker_takes_the_lock_over_with_a_new_token_and_the_running_lease() -> None:
    settings = LLMSettings(reclaim_after_s=1)
    async with Rig(settings=settings) as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", go_on, Outcome("stop", "m", None))
        request = await rig.ask()  # the front's lock: token 1, the queued lease
        assert rig.store.locks.tokens["r"] == 1
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        assert generation.fence is not None and generation.fence.token == 2 and rig.store.locks.tokens["r"] == 2
        assert rig.store.locks.until["r"] == rig.store.clock.now_ms + settings.running_lease_ms
        go_on.set()
        await task


async def test_a_queued_question_keeps_its_room_longer_than_the_running_lease() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        rig.store.clock.advance(rig.settings.running_lease_ms / 1000 * 5)  # every worker slot was busy
        assert await rig.store.locks.lock("r", "g-second", rig.settings.queue_lease_ms) is None  # busy
        generation = await rig.serve(request)
        assert generation.state is State.DONE and len(rig.answers()) == 1


async def test_a_worker_whose_token_is_stale_sends_no_frame_stores_nothing_and_does_not_ack() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("one", go_on, "two", "three", Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        taken = await rig.store.locks.start("r", request.rid, 60_000)  # a second worker took it over
        assert taken.fence is not None and taken.fence.token == 3
        go_on.set()
        await task
        assert generation.state is State.FENCED
        assert deltas(rig) == ["one"] and rig.answers() == []
        assert rig.queue.acked == [] and request.entry_id in rig.queue.pending  # the second worker's now
        assert rig.store.locks.held == {"r": request.rid} and rig.store.locks.tokens["r"] == 3


async def test_a_renewal_that_finds_the_token_stale_stops_the_generation() -> None:
    ticks = Ticks()
    async with Rig(sleep=ticks) as rig:
        go_on = asyncio.Event()
        rig.provider.script("one", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.clock.advance(rig.settings.running_lease_ms / 1000 + 1)  # its worker stalled: the lease lapsed
        rig.spawn(rig.worker._keepalive_loop())
        await settle(lambda: len(ticks.asked) == 1)
        ticks.tick()
        await task
        assert generation.state is State.FENCED and rig.provider.ended == ["stopped"]
        assert rig.answers() == [] and rig.queue.acked == []


async def test_a_retake_after_its_llm_error_was_sent_is_only_acknowledged() -> None:
    async with Rig() as rig:
        rig.provider.script(ProviderError("provider_timeout"))
        request = await rig.ask()
        await rig.serve(request)
        generation = await rig.serve(retake(request, 2))
        assert generation.state is State.SKIPPED and len(rig.provider.asked) == 1
        assert [f["hd"]["event"] for f in rig.frames()] == ["llm.error"]


async def test_a_failed_final_store_is_retried_with_the_same_cid_and_stored_once() -> None:
    async with Rig(sleep=instant) as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.failing_rooms["r"] = StoreUnavailable("down")
        go_on.set()
        await settle(lambda: len(rig.store.log.batches) >= 2)  # tried, failed, tried again
        del rig.store.log.failing_rooms["r"]
        await task
        assert generation.state is State.DONE and len(rig.answers()) == 1
        assert {entry.cid for batch in rig.store.log.batches for entry in batch} == {request.rid}
        assert [f["hd"]["event"] for f in rig.frames()] == ["llm.streaming"]  # and no llm.error


async def test_a_final_store_that_keeps_failing_ends_with_one_llm_error_store_failed() -> None:
    pauses = 0

    async def recovering(seconds: float) -> None:  # the store takes writes again after the answer gave up
        nonlocal pauses
        pauses += 1
        if pauses == FINAL_WRITE_ATTEMPTS:
            rig.store.log.failing_rooms.clear()
        await asyncio.sleep(0)

    async with Rig(sleep=recovering) as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.failing_rooms["r"] = StoreUnavailable("down")
        go_on.set()
        await task
        assert generation.state is State.FAILED and rig.answers() == []
        assert [(f["hd"]["event"], f.get("bd", {}).get("code")) for f in rig.frames()][-1] == ("llm.error",
                                                                                             "store_failed")
        assert len([f for f in rig.frames() if f["hd"]["event"] == "llm.error"]) == 1
        assert rig.store.locks.held == {} and rig.queue.acked == [request.entry_id]


# -- the loops --------------------------------------------------------------------------------------

async def test_at_most_concurrency_generations_run_and_a_freed_slot_reads_again() -> None:
    async with Rig(concurrency=2) as rig:
        gates = {room: asyncio.Event() for room in ("r1", "r2", "r3")}
        for room in gates:
            rig.provider.script("x", gates[room], Outcome("stop", "m", None))
            await rig.store.bus.follow([room], "n2", 3600)
            await rig.queue_request(room, rig.store.log.add(room, chat_body(room, "@llm")).decode())
        rig.spawn(rig.worker._read_loop())
        await settle(lambda: len(rig.worker._running) == 2)
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(rig.worker._running) == 2 and len(rig.queue.new) == 1  # the third waits for a slot
        first = next(iter(rig.worker._running.values())).request.room
        gates[first].set()
        await settle(lambda: len(rig.queue.acked) == 1 and len(rig.worker._running) == 2 and not rig.queue.new)
        for gate in gates.values():
            gate.set()
        await settle(lambda: len(rig.queue.acked) == 3)
        assert [len(rig.answers(room)) for room in gates] == [1, 1, 1]


async def test_an_abandoned_generation_frees_its_slot_and_the_read_loop_reads_again() -> None:
    async with Rig(concurrency=1) as rig:
        for room in ("r1", "r2"):
            await rig.store.bus.follow([room], "n2", 3600)
            await rig.queue_request(room, rig.store.log.add(room, chat_body(room, "@llm")).decode())
        rig.store.locks.failing = StoreUnavailable("down")  # the first start fails
        rig.spawn(rig.worker._read_loop())
        await settle(lambda: len(rig.queue.new) == 1 and not rig.worker._running)
        rig.store.locks.failing = None
        await settle(lambda: len(rig.queue.acked) == 1)
        assert rig.answers("r1") == [] and len(rig.answers("r2")) == 1
        assert [p.request.room for p in rig.queue.pending.values()] == ["r1"]  # left for a retake


async def test_a_request_already_running_is_not_started_twice() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        _, task = rig.start(request)
        rig.worker._start([retake(request, 2)])
        assert len(rig.worker._tasks) == 1
        go_on.set()
        await task
        assert len(rig.provider.asked) == 1 and len(rig.answers()) == 1


async def test_keepalive_renews_the_running_generations_locks_and_touches_their_claims() -> None:
    ticks = Ticks()
    async with Rig(sleep=ticks) as rig:
        gates = [asyncio.Event(), asyncio.Event()]
        requests = []
        for room, gate in zip(("r1", "r2"), gates, strict=True):
            rig.provider.script("x", gate, Outcome("stop", "m", None))
            requests.append(await rig.ask(room))
            rig.start(requests[-1])
        rig.spawn(rig.worker._keepalive_loop())
        await settle(lambda: len(ticks.asked) == 1)
        assert ticks.asked == [rig.settings.keepalive_s]  # min(reclaim_after_s / 3, 5)
        rig.store.clock.advance(8)
        ticks.tick()
        await settle(lambda: len(ticks.asked) == 2)
        assert rig.store.locks.renewed == [("r1", requests[0].rid), ("r2", requests[1].rid)]
        assert [rig.queue.pending[r.entry_id].idle_since_ms for r in requests] == [rig.store.clock.now_ms] * 2
        for gate in gates:
            gate.set()
        await settle(lambda: not rig.worker._running)
        ticks.tick()
        await settle(lambda: len(ticks.asked) == 3)
        assert len(rig.store.locks.renewed) == 2  # nothing running: nothing renewed


async def test_reclaim_takes_over_a_dead_workers_request_as_the_next_attempt() -> None:
    ticks = Ticks()
    settings = LLMSettings(reclaim_after_s=30)
    async with Rig(settings=settings, sleep=ticks) as rig:
        request = await rig.ask(consumer="w-dead")
        rig.store.clock.advance(31)
        rig.spawn(rig.worker._reclaim_loop())
        await settle(lambda: len(ticks.asked) == 1)
        assert ticks.asked == [5.0]  # min(reclaim_after_s / 3, 5)
        ticks.tick()
        await settle(lambda: rig.queue.acked == [request.entry_id])
        assert {f["hd"]["attempt"] for f in rig.frames()} == {2}
        assert rig.answers()[0][1]["hd"]["attempt"] == 2


async def test_reclaim_takes_nothing_while_every_slot_is_taken() -> None:
    ticks = Ticks()
    async with Rig(concurrency=1, sleep=ticks) as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", go_on, Outcome("stop", "m", None))
        rig.start(await rig.ask("r1"))
        idle = await rig.ask("r2", consumer="w-dead")
        rig.store.clock.advance(60)
        rig.spawn(rig.worker._reclaim_loop())
        await settle(lambda: len(ticks.asked) == 1)
        ticks.tick()
        await settle(lambda: len(ticks.asked) == 2)
        assert rig.queue.pending[idle.entry_id].consumer == "w-dead"
        go_on.set()
        await settle(lambda: not rig.worker._running)
        ticks.tick()
        await settle(lambda: rig.queue.pending.get(idle.entry_id) is None)
        assert len(rig.answers("r2")) == 1


async def test_a_cancel_heard_on_the_channel_stops_the_running_generation() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        loop = rig.spawn(rig.worker._cancel_loop())
        await settle(lambda: bool(rig.store.locks.listeners) and rig.store.locks.listeners[0].subscribed
                     and len(rig.frames()) == 1)
        assert (await rig.store.locks.cancel("r", "g-elsewhere", "B"))[0] is Cancel.NOT_RUNNING
        rig.store.locks.listeners[0].put(b"g-not-here B")  # a generation of another worker: ignored
        assert (await rig.store.locks.cancel("r", request.rid, "B"))[0] is Cancel.CANCELLED
        await task
        assert generation.state is State.CANCELLED
        [(_, answer)] = rig.answers()
        assert (answer["bd"]["finish_reason"], answer["bd"]["cancelled_by"]) == ("cancelled", "B")
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        assert rig.store.locks.listeners[0].closed


async def test_stop_ends_running_generations_as_cancelled_and_starts_no_more() -> None:
    async with Rig() as rig:
        gates = [asyncio.Event(), asyncio.Event()]
        for room, gate in zip(("r1", "r2"), gates, strict=True):
            rig.provider.script(f"{room} partial", gate, Outcome("stop", "m", None))
            await rig.store.bus.follow([room], "n2", 3600)
            await rig.queue_request(room, rig.store.log.add(room, chat_body(room, "@llm")).decode())
        rig.spawn(rig.worker._read_loop())
        await settle(lambda: len(rig.frames("r1")) == 1 and len(rig.frames("r2")) == 1)
        await rig.worker.stop(timeout_s=5)
        assert rig.worker._running == {} and len(rig.queue.acked) == 2
        for room in ("r1", "r2"):
            [(_, answer)] = rig.answers(room)
            assert answer["bd"]["text"] == f"{room} partial" and answer["bd"]["finish_reason"] == "cancelled"
        # A read already waiting when stop() was called may still return a request: it is not started
        # but left pending, for a live worker to take over.
        late = await rig.queue_request("r3", rig.store.log.add("r3", chat_body("r3", "@llm")).decode())
        await settle(lambda: not rig.queue.new)
        for _ in range(20):
            await asyncio.sleep(0)
        assert rig.worker._running == {} and len(rig.provider.asked) == 2 and rig.answers("r3") == []
        [pending] = rig.queue.pending.values()
        assert pending.request.rid == late.rid


async def test_stop_with_nothing_running_returns_at_once() -> None:
    async with Rig() as rig:
        await rig.worker.stop(timeout_s=5)
        assert rig.worker._free() == 0


async def test_forget_leaves_the_group_only_when_nothing_is_pending() -> None:
    async with Rig() as rig:
        await rig.ask()  # read by w1, not acknowledged
        await rig.worker.forget()
        assert rig.queue.forgotten == []
        rig.queue.pending.clear()
        await rig.worker.forget()
        assert rig.queue.forgotten == ["w1"]


async def test_run_restarts_its_loops_with_the_injected_sleep_when_the_store_is_down() -> None:
    ticks = Ticks()
    async with Rig(sleep=ticks) as rig:
        rig.queue.failing = StoreUnavailable("down")
        rig.spawn(rig.worker.run())
        await settle(lambda: backoff(0) in ticks.asked)  # the read loop failed and waits its backoff
        rig.queue.failing = None
        for _ in range(len(ticks.asked)):
            ticks.tick()
        await settle(lambda: len(rig.worker._tasks) == 0)
        request = await rig.queue_request("r", rig.store.log.add("r", chat_body("r", "@llm")).decode())
        await rig.store.bus.follow(["r"], "n2", 3600)
        await settle(lambda: rig.queue.acked == [f"{rig.queue._ids}-0"], passes=1000)
        assert rig.answers()[0][1]["hd"]["rid"] == request.rid


async def test_every_worker_loop_is_supervised_and_a_refused_read_is_down_until_it_reads_again() -> None:
    ticks = Ticks()
    async with Rig(sleep=ticks) as rig:
        supervisor = rig.worker._supervisor
        rig.queue.failing = StoreRefused("READONLY You can't write against a read only replica.")  # a failover
        rig.spawn(rig.worker.run())
        await settle(lambda: backoff(0) in ticks.asked)  # the read loop failed and waits its backoff
        assert [name for name, _, _ in supervisor.loops()] == sorted(rig.worker.loop_names())
        assert supervisor.down() == ["llm-read"]
        rig.queue.failing = None
        await rig.store.bus.follow(["r"], "n2", 3600)
        request = await rig.queue_request("r", rig.store.log.add("r", chat_body("r", "@llm")).decode())
        for _ in range(len(ticks.asked)):
            ticks.tick()
        await settle(lambda: supervisor.down() == [] and rig.queue.acked == [f"{rig.queue._ids}-0"], passes=1000)
        assert rig.answers()[0][1]["hd"]["rid"] == request.rid
        assert ("llm-read", True, 1) in supervisor.loops()


async def test_a_worker_loop_that_raises_anything_is_started_again() -> None:
    ticks = Ticks()
    async with Rig(sleep=ticks) as rig:
        supervisor = rig.worker._supervisor
        rig.store.locks.failing = RuntimeError("bug")  # the cancel listener's subscription fails
        subscribe = rig.store.locks.cancellations

        def failing() -> Any:
            subscription = subscribe()
            if rig.store.locks.failing is not None:
                subscription.lose(rig.store.locks.failing)
            return subscription

        rig.store.locks.cancellations = failing  # type: ignore[method-assign]
        rig.spawn(rig.worker.run())
        await settle(lambda: "llm-cancel" in supervisor.down())
        rig.store.locks.failing = None
        for _ in range(10):  # one pause at a time (whichever loop takes it), until the backoff's has passed
            if supervisor.is_up("llm-cancel"):
                break
            asked = len(ticks.asked)
            ticks.tick()
            await settle(lambda asked=asked: len(ticks.asked) > asked or supervisor.is_up("llm-cancel"))  # type: ignore[misc]
        assert ("llm-cancel", True, 1) in supervisor.loops()


# -- the text so far, for members entering mid-answer (llm.snapshot) ----------------------------------------

async def test_the_text_so_far_is_kept_with_the_seq_of_the_last_delta_sent_until_the_answer_is_stored() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("a", "b", go_on, "c", Outcome("stop", "m", None))
        request = await rig.ask()
        _, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 2)
        [running] = rig.store.locks.running("r")
        assert (running.rid, running.reply_to, running.attempt, running.seq, running.text) == (
            request.rid, request.reply_to, 1, 1, "ab")
        go_on.set()
        await task
        assert rig.store.locks.running("r") == () and rig.store.locks.partials == {}


async def test_a_retaken_generation_keeps_its_attempts_text_only() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("x", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        _, task = rig.start(retake(request, 2))
        await settle(lambda: len(rig.frames()) == 1)
        [running] = rig.store.locks.running("r")
        assert (running.attempt, running.seq, running.text) == (2, 0, "x")
        go_on.set()
        await task
