"""A generation's lifecycle (:mod:`server.llm.worker`'s table), transition by transition, on fakes.

Each row of :data:`TRANSITIONS` is driven through a real worker: the ports are the in-memory fakes, and
gates (the log's, the bus's, a lock fake's, the provider's events) hold the generation in the state a
test looks at.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Sequence

import pytest

import server.llm.worker as worker_module
from server.llm.provider import Outcome, ProviderError
from server.llm.worker import (
    FINAL_STATES,
    MAX_ATTEMPTS,
    TRANSITIONS,
    Generation,
    GenerationStateError,
    State,
    Trigger,
)
from server.store.ports import Request, Started, StoreUnavailable
from tests.unit.fakes import FakeLocks
from tests.unit.server.llm.rig import Rig, instant, settle


def state_of(generation: Generation) -> State:
    return generation.state  # (a call: mypy does not narrow it from one assert to the next)


def a_generation() -> Generation:
    return Generation(Request(room="r", rid="g-1", reply_to="1-0", asker="A"))


class GatedLocks(FakeLocks):
    """Locks whose ``start`` waits at ``gate`` while it is set to an unset event."""

    gate: asyncio.Event | None = None

    async def start(self, room: str, rid: str, lease_ms: int) -> Started:
        if self.gate is not None:
            await self.gate.wait()
        return await super().start(room, rid, lease_ms)


def gated_locks(rig: Rig) -> GatedLocks:
    locks = GatedLocks(rig.store.log)
    rig.store.locks = rig.store.log.locks = locks
    rig.worker._locks = locks
    return locks


# -- the table itself -------------------------------------------------------------------------

def test_every_state_is_reachable_and_every_trigger_used() -> None:
    assert {state for state, _ in TRANSITIONS} | set(TRANSITIONS.values()) == set(State)
    assert {trigger for _, trigger in TRANSITIONS} == set(Trigger)


def test_final_states_have_no_way_out_and_the_others_all_lead_to_one() -> None:
    assert set(TRANSITIONS.values()) - {state for state, _ in TRANSITIONS} == FINAL_STATES
    for state in set(State) - FINAL_STATES - {State.CLAIMED}:  # (CLAIMED does nothing but start)
        assert TRANSITIONS[state, Trigger.ERROR] is State.ABANDONED  # any step may fail: left queued
    for state in {State.STARTING, State.STREAMING, State.STORING}:
        assert TRANSITIONS[state, Trigger.FENCE] is State.FENCED  # any write may find the token stale


def test_the_docstring_presents_the_table() -> None:
    assert worker_module.__doc__ is not None
    rows = re.findall(r"^([A-Z_]+) +([A-Z_]+) +([A-Z_]+) +\S", worker_module.__doc__, re.MULTILINE)
    documented = {(State[state], Trigger[trigger]): State[after] for state, trigger, after in rows}
    assert documented == TRANSITIONS


def test_a_generation_starts_claimed() -> None:
    assert a_generation().state is State.CLAIMED


@pytest.mark.parametrize(("state", "trigger"), list(TRANSITIONS), ids=[f"{s.name}-{t.name}" for s, t in TRANSITIONS])
def test_fire_moves_to_the_tables_next_state(state: State, trigger: Trigger) -> None:
    generation = a_generation()
    generation.state = state
    assert generation.fire(trigger) is TRANSITIONS[state, trigger]
    assert generation.state is TRANSITIONS[state, trigger]


REFUSED: Sequence[tuple[State, Trigger]] = [pair for pair in itertools.product(State, Trigger)
                                            if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "trigger"), REFUSED, ids=[f"{s.name}-{t.name}" for s, t in REFUSED])
def test_refused_pair_raises_and_keeps_the_state(state: State, trigger: Trigger) -> None:
    generation = a_generation()
    generation.state = state
    with pytest.raises(GenerationStateError, match=f"g-1 of room r: can't handle {trigger.name} in state {state.name}"):
        generation.fire(trigger)
    assert generation.state is state


# -- one test per row, through the worker ------------------------------------------------------

async def test_claimed_start_to_starting() -> None:
    async with Rig() as rig:
        locks = gated_locks(rig)
        locks.gate = asyncio.Event()
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: state_of(generation) is State.STARTING)
        assert rig.provider.asked == []
        locks.gate.set()
        await task
        assert state_of(generation) is State.DONE


async def test_starting_give_up_to_gave_up_after_max_attempts() -> None:
    async with Rig() as rig:
        asked = await rig.ask()
        request = Request(asked.room, asked.rid, asked.reply_to, asked.asker, asked.entry_id, MAX_ATTEMPTS + 1)
        generation = await rig.serve(request)
        assert generation.state is State.GAVE_UP
        assert rig.store.locks.held == {}  # released in the llm.error's step
        assert [f["hd"]["event"] for f in rig.frames()] == ["llm.error"]
        assert rig.queue.acked == [request.entry_id]
        assert rig.provider.asked == []


async def test_starting_lapsed_to_expired_when_another_question_holds_the_room() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        rig.store.locks.drop("r")  # its lease lapsed...
        assert await rig.store.locks.lock("r", "g-next", 60_000)  # ...and another question took the room
        generation = await rig.serve(request)
        assert generation.state is State.EXPIRED
        assert [(f["hd"]["event"], f["bd"]["code"]) for f in rig.frames()] == [("llm.error", "expired")]
        assert rig.store.locks.held == {"r": "g-next"} and rig.provider.asked == []  # the other keeps it
        assert rig.queue.acked == [request.entry_id]


async def test_starting_fence_to_fenced_when_another_worker_took_it_over() -> None:
    async with Rig() as rig:
        locks = gated_locks(rig)
        asked = await rig.ask()
        request = Request(asked.room, asked.rid, asked.reply_to, asked.asker, asked.entry_id, MAX_ATTEMPTS + 1)
        rig.store.log.gate = asyncio.Event()  # its llm.error's append waits
        generation, task = rig.start(request)
        await settle(lambda: locks.held.get("r") == request.rid and locks.tokens["r"] == 2)
        await locks.start("r", request.rid, 60_000)  # another worker takes it over: token 3
        rig.store.log.gate.set()
        await task
        assert state_of(generation) is State.FENCED
        assert rig.frames() == [] and rig.queue.acked == []  # the other worker owns it


async def test_starting_error_to_abandoned_when_giving_up_fails() -> None:
    async with Rig(sleep=instant) as rig:
        asked = await rig.ask()
        request = Request(asked.room, asked.rid, asked.reply_to, asked.asker, asked.entry_id, MAX_ATTEMPTS + 1)
        rig.store.log.failing_rooms["r"] = StoreUnavailable("down")  # the llm.error cannot be stored
        generation = await rig.serve(request)
        assert generation.state is State.ABANDONED
        assert rig.queue.acked == [] and request.entry_id in rig.queue.pending  # left queued
        assert rig.frames() == []


async def test_starting_answered_to_skipped() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        await rig.serve(request)
        again = Request(request.room, request.rid, request.reply_to, request.asker, request.entry_id, 2)
        generation = await rig.serve(again)
        assert generation.state is State.SKIPPED
        assert len(rig.answers()) == 1 and len(rig.provider.asked) == 1
        assert rig.queue.acked == [request.entry_id, request.entry_id]


async def test_starting_stream_to_streaming() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hel", go_on, "lo", Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        assert state_of(generation) is State.STREAMING
        assert rig.store.locks.held == {"r": request.rid}
        go_on.set()
        await task
        assert state_of(generation) is State.DONE


async def test_starting_error_to_abandoned_when_the_locks_are_unreachable() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        rig.store.locks.failing = StoreUnavailable("down")
        generation = await rig.serve(request)
        assert generation.state is State.ABANDONED
        assert rig.queue.acked == [] and rig.worker._running == {}
        assert rig.provider.asked == []


async def test_streaming_end_to_storing_with_the_lock_held_until_the_answer_is_stored() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, Outcome("stop", "m", None))
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.gate = asyncio.Event()  # the answer's append waits
        go_on.set()
        await settle(lambda: state_of(generation) is State.STORING)
        assert rig.store.locks.held == {"r": request.rid}  # released by the answer's own step
        assert rig.answers() == []
        rig.store.log.gate.set()
        await task
        assert state_of(generation) is State.DONE
        assert rig.store.locks.held == {}


async def test_streaming_fence_to_fenced_when_another_worker_took_it_over() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, " there", Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        await rig.store.locks.start("r", request.rid, 60_000)  # another worker took the request over
        go_on.set()
        await task
        assert state_of(generation) is State.FENCED
        assert [f["bd"]["delta"] for f in rig.frames()] == ["Hi"]  # " there" was refused
        assert rig.answers() == [] and rig.queue.acked == []
        assert rig.provider.ended == ["stopped"]


async def test_streaming_error_to_abandoned_when_the_history_is_unreadable() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        rig.store.log.failing = StoreUnavailable("down")
        generation = await rig.serve(request)
        assert generation.state is State.ABANDONED
        assert rig.queue.acked == [] and rig.provider.asked == []
        assert rig.store.locks.held == {"r": request.rid}  # not released: it expires (nothing renews it)


async def test_storing_finish_to_done() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        generation = await rig.serve(request)
        assert generation.state is State.DONE
        [(_, answer)] = rig.answers()
        assert answer["bd"]["finish_reason"] == "stop"


async def test_storing_cancel_to_cancelled() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, "never", Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        generation.cancel.set()
        await task
        assert generation.state is State.CANCELLED
        [(_, answer)] = rig.answers()
        assert answer["bd"]["finish_reason"] == "cancelled"


async def test_storing_fail_to_failed() -> None:
    async with Rig() as rig:
        rig.provider.script(ProviderError("provider_timeout"))
        generation = await rig.serve(await rig.ask())
        assert generation.state is State.FAILED
        assert [f["bd"]["code"] for f in rig.frames()] == ["provider_timeout"]


async def test_storing_fence_to_fenced_when_the_answer_is_refused() -> None:
    async with Rig() as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.gate = asyncio.Event()
        go_on.set()
        await settle(lambda: state_of(generation) is State.STORING)
        await rig.store.locks.start("r", request.rid, 60_000)  # another worker took it over meanwhile
        rig.store.log.gate.set()
        await task
        assert state_of(generation) is State.FENCED
        assert rig.answers() == [] and rig.queue.acked == []
        assert rig.store.locks.held == {"r": request.rid} and rig.store.locks.tokens["r"] == 3  # the other's


async def test_storing_error_to_abandoned_when_nothing_can_be_written() -> None:
    async with Rig(sleep=instant) as rig:
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, Outcome("stop", "m", None))
        request = await rig.ask()
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.failing = StoreUnavailable("down")
        go_on.set()
        await task
        assert generation.state is State.ABANDONED
        assert rig.answers() == [] and rig.queue.acked == []
        assert rig.store.locks.held == {"r": request.rid}  # kept: a retake fences it again


async def test_a_failed_ack_keeps_the_final_state_and_the_request_queued() -> None:
    async with Rig() as rig:
        request = await rig.ask()
        go_on = asyncio.Event()
        rig.provider.script("Hi", go_on, Outcome("stop", "m", None))
        generation, task = rig.start(request)
        await settle(lambda: len(rig.frames()) == 1)
        rig.store.log.gate = asyncio.Event()
        go_on.set()
        await settle(lambda: state_of(generation) is State.STORING)
        rig.queue.failing = StoreUnavailable("down")  # the ack will fail
        rig.store.log.gate.set()
        await task
        assert state_of(generation) is State.DONE
        assert request.entry_id in rig.queue.pending and len(rig.answers()) == 1
