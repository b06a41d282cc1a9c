"""The member's outbound lifecycle, transition by transition, with no socket and no Redis.

A fake ASGI ``send`` records what it is given; a fake outlet (the :class:`DirectOutlet` interface:
``write(frames) -> bool`` and ``writable()``) records its writes and can be made full or gone. Loop
passes are run explicitly: ``await asyncio.sleep(0)`` runs what ``call_soon`` scheduled (a flush),
and a writer task is awaited until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
import pytest

import server.member as member_module
from protocol.close import NORMAL, RATE_LIMIT, SLOW_CONSUMER, STORE_UNAVAILABLE
from protocol.codec import LLM_STREAMING_PREFIX, llm_streaming_frame
from protocol.deltas import DeltaFrame
from protocol.snapshots import Snapshot, SnapshotGate
from server.member import (
    TRANSITIONS,
    WS_1000_NORMAL,
    Member,
    MemberStateError,
    State,
    Trigger,
)
from server.outlet import DirectOutlet, Gone

QUEUE_MAX = 8


class FakeSend:
    """An ASGI ``send``: records messages; can raise OSError, or wait at a gate, for some types."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail: set[str] = set()  # message types that raise OSError (the client went away)
        self.gate: asyncio.Event | None = None  # when set up, every send waits for it

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if message["type"] in self.fail:
            raise OSError("connection lost")
        self.messages.append(message)

    @property
    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages if m["type"] == "websocket.send"]

    @property
    def closes(self) -> list[tuple[int, str]]:
        return [(m["code"], m["reason"]) for m in self.messages if m["type"] == "websocket.close"]


class FakeOutlet(DirectOutlet):
    """A transport that takes every write, or none while ``full``, or raises Gone once ``gone``."""

    def __init__(self) -> None:  # no uvicorn protocol behind it
        self.writes: list[list[str]] = []
        self.full = False
        self.gone = False
        self.ready = asyncio.Event()
        self.ready.set()

    def write(self, frames: Iterable[str]) -> bool:
        if self.gone:
            raise Gone
        if self.full:
            return False
        self.writes.append(list(frames))
        return True

    async def writable(self) -> None:
        await self.ready.wait()

    def stall(self) -> None:
        self.full = True
        self.ready.clear()

    def unstall(self) -> None:
        self.full = False
        self.ready.set()

    @property
    def frames(self) -> list[str]:
        return [frame for write in self.writes for frame in write]


_made: list[Member] = []


@pytest.fixture(autouse=True)
async def _stop_writers() -> AsyncIterator[None]:
    """Cancel the writer tasks a test leaves waiting (a slow or idle member it does not close)."""
    yield
    for member in _made:
        writer = member._writer
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
    _made.clear()



def state(member: Member) -> State:
    """The member's state, read afresh (mypy would keep a narrowed property across calls)."""
    return member.state

def direct_member(queue_max: int = QUEUE_MAX) -> tuple[Member, FakeSend, FakeOutlet]:
    send, outlet = FakeSend(), FakeOutlet()
    member = Member(send, "room", None, queue_max, outlet_for=lambda _send: outlet)
    _made.append(member)
    return member, send, outlet


def asgi_member(queue_max: int = QUEUE_MAX) -> tuple[Member, FakeSend]:
    send = FakeSend()
    member = Member(send, "room", None, queue_max, outlet_for=lambda _send: None)
    _made.append(member)
    return member, send


async def loop_pass() -> None:
    """Let the loop run what was scheduled with call_soon (the flushes) and ready tasks one step."""
    await asyncio.sleep(0)


async def writer_ended(member: Member) -> None:
    writer = member._writer
    assert writer is not None
    await writer


async def writer_idle(member: Member) -> None:
    """Run the ASGI writer task until it waits for frames (it clears _awake just before)."""
    while member._awake:
        await loop_pass()


async def slow_member() -> tuple[Member, FakeSend, FakeOutlet]:
    member, send, outlet = direct_member()
    member.start()
    outlet.stall()
    member.push("a")
    await loop_pass()  # the flush finds the transport full
    assert state(member) is State.SLOW
    return member, send, outlet


# -- the table itself -------------------------------------------------------------------------

def test_every_state_is_reachable_and_every_trigger_used() -> None:
    assert {state for state, _ in TRANSITIONS} | set(TRANSITIONS.values()) == set(State)
    assert {trigger for _, trigger in TRANSITIONS} == set(Trigger)


def test_the_docstring_presents_the_table() -> None:
    assert member_module.__doc__ is not None
    rows = re.findall(r"^([A-Z_]+) +([A-Z_]+) +([A-Z_]+) +\S", member_module.__doc__, re.MULTILINE)
    documented = {(State[state], Trigger[trigger]): State[after] for state, trigger, after in rows}
    assert documented == TRANSITIONS


def test_the_normal_close_code_stays_importable_from_member() -> None:
    assert WS_1000_NORMAL == NORMAL.code == 1000


REFUSED = [pair for pair in itertools.product(State, Trigger) if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "trigger"), REFUSED, ids=[f"{s.name}-{t.name}" for s, t in REFUSED])
def test_refused_pair_raises_and_keeps_the_state(state: State, trigger: Trigger) -> None:
    member, _, _ = direct_member()
    member._state = state
    with pytest.raises(MemberStateError, match=f"can't handle {trigger.name} in state {state.name}"):
        member._fire(trigger)
    assert member.state is state


async def test_start_twice_is_refused() -> None:
    member, _, _ = direct_member()
    member.start()
    with pytest.raises(MemberStateError, match="START_DIRECT in state DIRECT"):
        member.start()


# -- one test per row ---------------------------------------------------------------------------

async def test_new_start_direct_to_direct() -> None:
    member, _, outlet = direct_member()
    assert state(member) is State.NEW and not member.closing
    member.start()
    assert state(member) is State.DIRECT
    member.push("a")
    await loop_pass()
    assert outlet.writes == [["a"]]
    assert member._writer is None  # direct writes need no task


async def test_new_start_asgi_to_asgi() -> None:
    member, send = asgi_member()
    member.start()
    assert state(member) is State.ASGI
    member.push("a")
    await writer_idle(member)
    assert send.texts == ["a"]


async def test_new_close_to_close_requested() -> None:
    member, send, _ = direct_member()
    member.close(RATE_LIMIT.code, "bye")
    assert state(member) is State.CLOSE_REQUESTED and member.closing
    await member.wait_closed()  # never started: nothing to wait for, nothing sent
    assert send.messages == []


async def test_direct_stall_to_slow() -> None:
    member, _, outlet = await slow_member()
    member.push("b")  # queued for the writer task: no flush is scheduled
    await loop_pass()
    assert outlet.writes == []
    assert list(member._queue.frames) == ["a", "b"]


async def test_direct_close_to_closing() -> None:
    member, send, _ = direct_member()
    member.start()
    member.close(WS_1000_NORMAL)
    assert state(member) is State.CLOSING and member.closing
    await member.wait_closed()
    assert send.closes == [(1000, "")]


async def test_direct_gone_to_closed() -> None:
    member, send, outlet = direct_member()
    member.start()
    outlet.gone = True
    member.push("a")
    await loop_pass()
    assert state(member) is State.CLOSED
    assert not member._queue
    member.push("b")
    member.close(WS_1000_NORMAL)  # the session's finally: nothing is left to send it to
    await member.wait_closed()
    assert send.messages == [] and not member._queue


async def test_slow_writable_to_direct() -> None:
    member, _, outlet = await slow_member()
    member.push("b")
    outlet.unstall()
    await writer_ended(member)
    assert state(member) is State.DIRECT
    assert outlet.writes == [["a", "b"]]
    member.push("c")  # direct writes again
    await loop_pass()
    assert outlet.writes == [["a", "b"], ["c"]]


async def test_slow_close_to_closing() -> None:
    member, send, outlet = await slow_member()
    member.close(WS_1000_NORMAL, "done")
    assert state(member) is State.CLOSING
    outlet.unstall()
    await member.wait_closed()
    assert state(member) is State.CLOSED
    assert outlet.frames == ["a"] and send.closes == [(1000, "done")]


async def test_slow_gone_to_closed() -> None:
    member, send, outlet = await slow_member()
    outlet.gone = True
    outlet.ready.set()
    await writer_ended(member)
    assert state(member) is State.CLOSED and member.closing
    assert not member._queue and send.messages == []


async def test_asgi_close_to_closing() -> None:
    member, send = asgi_member()
    member.start()
    member.push("a")
    await writer_idle(member)
    member.close(WS_1000_NORMAL)
    assert state(member) is State.CLOSING
    await member.wait_closed()
    assert send.messages == [{"type": "websocket.send", "text": "a"},
                             {"type": "websocket.close", "code": 1000, "reason": ""}]


async def test_asgi_gone_to_closed() -> None:
    member, send = asgi_member()
    send.fail.add("websocket.send")
    member.start()
    member.push("a")
    member.push("b")
    await writer_ended(member)
    assert state(member) is State.CLOSED
    assert not member._queue
    member.push("c")
    assert not member._queue


async def test_close_requested_start_direct_to_closing() -> None:
    member, send, outlet = direct_member()
    member.push("a")
    member.close(WS_1000_NORMAL, "early")
    member.start()
    assert state(member) is State.CLOSING
    await member.wait_closed()
    assert state(member) is State.CLOSED
    assert outlet.frames == ["a"] and send.closes == [(1000, "early")]


async def test_close_requested_start_asgi_to_closing() -> None:
    member, send = asgi_member()
    member.push("a")
    member.close(STORE_UNAVAILABLE.code, "early")
    member.start()
    assert state(member) is State.CLOSING
    await member.wait_closed()
    assert send.texts == ["a"] and send.closes == [(1011, "early")]


async def test_close_requested_close_stays() -> None:
    member, send, _ = direct_member()
    member.close(SLOW_CONSUMER.code, "first")
    member.close(WS_1000_NORMAL)
    assert state(member) is State.CLOSE_REQUESTED
    member.start()
    await member.wait_closed()
    assert send.closes == [(1013, "first")]


async def test_closing_close_stays() -> None:
    member, send, _ = direct_member()
    member.start()
    member.close(RATE_LIMIT.code, "first")
    member.close(WS_1000_NORMAL)
    assert state(member) is State.CLOSING
    await member.wait_closed()
    assert send.closes == [(1008, "first")]


async def test_closing_close_sent_to_closed() -> None:
    member, send = asgi_member()
    member.start()
    member.close(WS_1000_NORMAL)
    await writer_ended(member)
    assert state(member) is State.CLOSED
    assert send.closes == [(1000, "")]


async def test_closing_gone_to_closed() -> None:
    member, send, _ = direct_member()
    send.fail.add("websocket.close")
    member.start()
    member.close(WS_1000_NORMAL)
    await member.wait_closed()
    assert state(member) is State.CLOSED and send.messages == []


async def test_closing_gone_when_wait_closed_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(member_module, "CLOSE_TIMEOUT_S", 0)
    member, send, _ = direct_member()
    send.gate = asyncio.Event()  # the close frame never gets through
    member.start()
    member.close(WS_1000_NORMAL)
    await loop_pass()  # the writer task waits in send
    await member.wait_closed()  # gives up at once and cancels the writer
    with pytest.raises(asyncio.CancelledError):
        await writer_ended(member)
    assert state(member) is State.CLOSED


async def test_closed_close_stays() -> None:
    member, send, _ = direct_member()
    member.start()
    member.close(WS_1000_NORMAL)
    await member.wait_closed()
    member.close(STORE_UNAVAILABLE.code)
    assert state(member) is State.CLOSED
    await member.wait_closed()
    assert send.closes == [(1000, "")]


# -- behaviours ---------------------------------------------------------------------------------

async def test_frames_queued_before_start_are_written_after_it() -> None:
    member, _, outlet = direct_member()
    member.push("a")
    member.push("b")
    await loop_pass()
    assert outlet.writes == []  # not accepted yet
    member.start()
    await loop_pass()
    assert outlet.writes == [["a", "b"]]


async def test_frames_queued_before_start_are_sent_after_it_through_asgi() -> None:
    member, send = asgi_member()
    member.push("a")
    member.push("b")
    member.start()
    await writer_idle(member)
    assert send.texts == ["a", "b"]


async def test_a_pass_frames_go_out_in_one_write() -> None:
    member, _, outlet = direct_member()
    member.start()
    for frame in "abc":
        member.push(frame)
    await loop_pass()
    member.push("d")
    await loop_pass()
    assert outlet.writes == [["a", "b", "c"], ["d"]]


async def test_plain_send_gets_the_asgi_writer_by_default() -> None:
    send = FakeSend()
    member = Member(send, "room", None, QUEUE_MAX)  # outlet_for: the real one, which knows only uvicorn
    member.start()
    assert state(member) is State.ASGI
    member.close(WS_1000_NORMAL)
    await member.wait_closed()
    assert send.closes == [(1000, "")]


async def test_a_full_queue_closes_with_1013_and_drops_the_queue() -> None:
    member, send, outlet = await slow_member()
    for n in range(QUEUE_MAX - 1):
        member.push(str(n))
    assert state(member) is State.SLOW
    member.push("one too many")
    assert state(member) is State.CLOSING and not member._queue
    member.push("after")
    assert not member._queue
    outlet.unstall()
    await member.wait_closed()
    assert outlet.writes == [] and send.closes == [(1013, "slow consumer")]


async def test_held_frames_overflowing_before_start_close_with_1013_once_started() -> None:
    member, send, outlet = direct_member(queue_max=2)
    member.hold()
    for frame in "abc":
        member.push(frame)
    assert state(member) is State.CLOSE_REQUESTED
    assert member._held is None
    member.start()
    await member.wait_closed()
    assert outlet.writes == [] and send.closes == [(1013, "slow consumer")]


async def test_close_after_frames_sends_them_then_the_close_frame() -> None:
    member, send, outlet = direct_member()
    member.start()
    member.push("a")
    member.push("b")
    member.close(WS_1000_NORMAL, "bye")  # before the flush: the writer task sends them
    await member.wait_closed()
    assert outlet.frames == ["a", "b"] and send.closes == [(1000, "bye")]


async def test_release_puts_held_frames_after_history() -> None:
    member, _, outlet = direct_member()
    member.hold()
    member.push("live 1")
    member.start()
    member.push("live 2")
    await member.push_history(["old 1", "old 2"])
    await member.push_history(["ready"])
    member.release()
    member.push("live 3")
    await loop_pass()
    assert outlet.frames == ["old 1", "old 2", "ready", "live 1", "live 2", "live 3"]


async def test_push_history_waits_while_the_queue_is_more_than_half_full() -> None:
    member, _, outlet = await slow_member()
    member.hold()
    await member.push_history([str(n) for n in range(QUEUE_MAX // 2)])  # a + 4 queued
    waiting = asyncio.ensure_future(member.push_history(["later"]))
    await loop_pass()
    assert not waiting.done()
    outlet.unstall()
    await writer_ended(member)  # wrote everything: the replay goes on
    await waiting
    await loop_pass()
    assert outlet.frames == ["a", "0", "1", "2", "3", "later"]


async def test_push_history_stops_waiting_when_the_connection_is_gone() -> None:
    member, _, outlet = await slow_member()
    await member.push_history([str(n) for n in range(QUEUE_MAX // 2)])
    waiting = asyncio.ensure_future(member.push_history(["later"]))
    await loop_pass()
    outlet.gone = True
    outlet.ready.set()
    await waiting
    assert member.closing and not member._queue


async def test_push_after_close_is_ignored() -> None:
    member, send, outlet = direct_member()
    member.start()
    member.close(WS_1000_NORMAL)
    member.push("late")
    await member.push_history(["late history"])
    member.hold()
    member.push("late held")
    member.release()
    await member.wait_closed()
    member.push("later")
    assert outlet.writes == [] and send.messages == [{"type": "websocket.close", "code": 1000, "reason": ""}]


async def test_wait_closed_returns() -> None:
    for make in (direct_member, asgi_member):
        made = make()
        member = made[0]
        member.start()
        member.push("a")
        member.close(WS_1000_NORMAL)
        await member.wait_closed()
        assert member._writer is not None and member._writer.done()
        assert state(member) is State.CLOSED


async def test_wait_closed_on_a_member_never_started_returns() -> None:
    member, _, _ = direct_member()
    await member.wait_closed()
    assert state(member) is State.NEW


# -- llm.streaming deltas -----------------------------------------------------------------------

def delta(seq: int, rid: str = "g-1") -> DeltaFrame:
    return DeltaFrame(llm_streaming_frame("room", rid, "1-0", seq, f"<{seq}>"))


def spans(frames: Iterable[str]) -> list[Any]:
    """Each frame as ``(first_seq, seq, delta)`` for a delta, itself otherwise."""
    out: list[Any] = []
    for frame in frames:
        if frame.startswith(LLM_STREAMING_PREFIX):
            parsed = orjson.loads(str(frame))
            out.append((parsed["hd"]["first_seq"], parsed["hd"]["seq"], parsed["bd"]["delta"]))
        else:
            out.append(frame)
    return out


async def test_a_prompt_reader_gets_every_delta_as_it_came() -> None:
    member, _, outlet = direct_member()
    member.start()
    frames = [delta(seq) for seq in range(5)]
    for frame in frames[:3]:
        member.push_delta(frame)
    member.push("m")
    for frame in frames[3:]:
        member.push_delta(frame)
    await loop_pass()
    assert outlet.writes == [[*frames[:3], "m", *frames[3:]]]
    assert all(a is b for a, b in zip(outlet.writes[0][:3], frames, strict=False))
    assert not member.backed_up


async def test_a_prompt_reader_through_asgi_gets_every_delta_as_it_came() -> None:
    member, send = asgi_member()
    member.start()
    await writer_idle(member)
    for seq in range(4):
        member.push_delta(delta(seq))
    await writer_idle(member)
    assert spans(send.texts) == [(seq, seq, f"<{seq}>") for seq in range(4)]
    assert all(type(text) is str for text in send.texts)


async def test_a_slow_member_gets_consecutive_deltas_merged_around_other_frames() -> None:
    member, _, outlet = await slow_member()  # "a" is waiting for the transport
    assert member.backed_up
    for seq in range(10):
        member.push_delta(delta(seq))
    member.push("m")
    for seq in range(10, 13):
        member.push_delta(delta(seq))
    outlet.unstall()
    await writer_ended(member)
    assert spans(outlet.frames) == ["a", (0, 9, "".join(f"<{n}>" for n in range(10))), "m",
                                    (10, 12, "<10><11><12>")]
    assert state(member) is State.DIRECT and not member.backed_up
    member.push_delta(delta(13))  # keeping up again: as it came
    await loop_pass()
    assert spans(outlet.writes[-1]) == [(13, 13, "<13>")]


async def test_a_slow_member_never_gets_two_generations_merged() -> None:
    member, _, outlet = await slow_member()
    for frame in (delta(0, "g-1"), delta(1, "g-1"), delta(0, "g-2"), delta(1, "g-2"), delta(2, "g-1")):
        member.push_delta(frame)
    outlet.unstall()
    await writer_ended(member)
    rids = [orjson.loads(str(frame))["hd"]["rid"] for frame in outlet.frames[1:]]
    assert rids == ["g-1", "g-2", "g-1"]
    assert spans(outlet.frames) == ["a", (0, 1, "<0><1>"), (0, 1, "<0><1>"), (2, 2, "<2>")]


async def test_deltas_never_count_toward_queue_max_only_stored_frames_do() -> None:
    member, send, outlet = await slow_member()  # one frame counted
    for n in range(QUEUE_MAX - 2):
        member.push(f"m{n}")
    for seq in range(10 * QUEUE_MAX):
        member.push_delta(delta(seq))  # one generation: merged
    for n in range(10 * QUEUE_MAX):
        member.push_delta(delta(0, rid=f"g-{n}"))  # as many generations: nothing merges, nothing counts
    member.push("last that fits")
    assert state(member) is State.SLOW
    member.push("one too many")
    assert state(member) is State.CLOSING
    outlet.unstall()
    await member.wait_closed()
    assert send.closes == [(1013, "slow consumer")]


async def test_a_member_that_falls_behind_through_asgi_gets_deltas_merged_while_a_send_waits() -> None:
    member, send = asgi_member()
    member.start()
    await writer_idle(member)
    send.gate = asyncio.Event()  # the client stops reading: the next send waits
    member.push("m")
    await loop_pass()  # the writer is in the send of "m"
    assert member.backed_up
    for seq in range(6):
        member.push_delta(delta(seq))
    send.gate.set()
    await writer_idle(member)
    assert spans(send.texts) == ["m", (0, 5, "".join(f"<{n}>" for n in range(6)))]
    assert not member.backed_up


async def test_deltas_held_during_a_resume_stay_one_a_frame_for_the_snapshot_gate() -> None:
    member, _, outlet = direct_member()
    member.hold()
    member.start()
    member.push_delta(delta(0))  # held while the member keeps up: as it came
    outlet.stall()
    await member.push_history(["h0"])
    await loop_pass()  # the flush finds the transport full
    assert state(member) is State.SLOW
    for seq in range(1, 5):
        member.push_delta(delta(seq))
    member.push("live")
    member.push_delta(delta(5))
    member.release()
    outlet.unstall()
    await writer_ended(member)
    assert spans(outlet.frames) == ["h0", *((seq, seq, f"<{seq}>") for seq in range(5)), "live", (5, 5, "<5>")]


async def test_deltas_pushed_after_close_are_ignored() -> None:
    member, send, outlet = direct_member()
    member.start()
    member.close(WS_1000_NORMAL)
    member.push_delta(delta(0))
    await member.wait_closed()
    assert outlet.writes == [] and send.closes == [(1000, "")]


# -- a member that joined mid-answer: the deltas its llm.snapshot holds are dropped -----------------------

def snapshot_gate(seq: int, rid: str = "g-1") -> SnapshotGate:
    return SnapshotGate([Snapshot(rid, "1-0", 1, seq, "".join(f"<{n}>" for n in range(seq + 1)))])


async def test_release_drops_the_held_deltas_the_snapshot_holds_and_keeps_the_rest_in_order() -> None:
    member, _, outlet = direct_member()
    member.hold()
    member.start()
    for seq in range(5):
        member.push_delta(delta(seq))
    member.push("live")
    member.push_delta(delta(0, rid="g-2"))  # another generation: no snapshot of it
    member.push_delta(delta(5))
    await member.push_history(["session.ready", "snapshot"])
    member.release(snapshot_gate(3))
    await loop_pass()
    assert spans(outlet.frames) == ["session.ready", "snapshot", (4, 4, "<4>"), "live", (0, 0, "<0>"), (5, 5, "<5>")]


async def test_deltas_the_snapshot_holds_that_come_after_the_release_are_dropped_too() -> None:
    """A delta sent before the snapshot was read may reach this node after the member's session started
    (in flight on the node's channel, or from a worker in this process): it is in the snapshot."""
    member, _, outlet = direct_member()
    member.hold()
    member.start()
    member.push_delta(delta(1))
    await member.push_history(["session.ready", "snapshot"])
    member.release(snapshot_gate(3))
    for seq in (2, 3, 4, 5):
        member.push_delta(delta(seq))
    await loop_pass()
    assert spans(outlet.frames) == ["session.ready", "snapshot", (4, 4, "<4>"), (5, 5, "<5>")]
    assert member._gate is None  # the first delta after the snapshot ended the gate


async def test_a_slow_member_merges_only_the_deltas_after_its_snapshot() -> None:
    """Deltas are gated one by one before any merge: no merged frame straddles the snapshot's seq."""
    member, _, outlet = direct_member()
    member.hold()
    member.start()
    outlet.stall()
    for seq in range(3):
        member.push_delta(delta(seq))
    await member.push_history(["session.ready", "snapshot"])
    await loop_pass()  # the flush finds the transport full
    assert state(member) is State.SLOW
    member.release(snapshot_gate(4))
    for seq in range(3, 9):
        member.push_delta(delta(seq))
    outlet.unstall()
    await writer_ended(member)
    assert spans(outlet.frames) == ["session.ready", "snapshot", (5, 8, "<5><6><7><8>")]
