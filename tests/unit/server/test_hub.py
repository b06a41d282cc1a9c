"""Fan-out to real members (on a recording outlet) and the hub's join/leave, on a feed over fake ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

import orjson
import pytest

from protocol.codec import llm_streaming_frame
from server.hub import Fanout, Hub, Room
from server.member import Member
from server.store.ports import StoreUnavailable
from tests.unit.fakes import FakeBus, FakeStore
from tests.unit.server.helpers import (
    QUEUE_MAX,
    Node,
    RecordingOutlet,
    body,
    member,
    no_leftover_tasks,
    noop_send,
    passes,
    until,
)


@pytest.fixture(autouse=True)
async def _clean() -> AsyncIterator[None]:
    async with no_leftover_tasks():
        yield


class CountingBus(FakeBus):
    """The fake bus, counting follows per room."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.follows: list[str] = []

    async def follow(self, rooms: Sequence[str], node: str, ttl_s: int) -> list[str]:
        if len(rooms) == 1:  # one room: a feed's follow (the heartbeat passes them all)
            self.follows.append(rooms[0])
        return await super().follow(rooms, node, ttl_s)


async def hub_on(store: FakeStore | None = None) -> tuple[Hub, Fanout, Node]:
    store = store or FakeStore()
    fanout = Fanout()
    node = Node(store, sink=fanout)
    await node.start()
    return Hub(fanout, node.feed), fanout, node


def ids_of(frames: list[str]) -> list[str]:
    return [orjson.loads(frame)["hd"]["id"] for frame in frames]


# -- Fanout -----------------------------------------------------------------------------------------

async def test_each_entry_goes_to_every_member_of_its_room_in_order_with_its_id() -> None:
    fanout = Fanout()
    (one, out1), (two, out2), (elsewhere, out3) = member(), member(), member("other")
    hub_room = await _room(fanout, "r", one, two)
    await _room(fanout, "other", elsewhere)
    fanout.deliver("r", [(b"1-0", body("a")), (b"2-0", body("b"))])
    await passes(1)
    assert ids_of(out1.frames) == ids_of(out2.frames) == ["1-0", "2-0"]
    assert [orjson.loads(frame)["bd"]["text"] for frame in out1.frames] == ["a", "b"]
    assert out3.frames == [] and hub_room.members == {one, two}


async def test_an_entry_frame_is_built_once_for_all_members() -> None:
    fanout = Fanout()
    (one, out1), (two, out2) = member(), member()
    await _room(fanout, "r", one, two)
    fanout.deliver("r", [(b"1-0", body("a"))])
    await passes(1)
    assert out1.frames[0] is out2.frames[0]


async def test_an_entry_whose_body_is_not_json_is_skipped_and_the_rest_delivered() -> None:
    fanout = Fanout()
    one, out = member()
    await _room(fanout, "r", one)
    fanout.deliver("r", [(b"1-0", b"not json"), (b"2-0", body("b"))])
    await passes(1)
    assert ids_of(out.frames) == ["2-0"]


def test_delivering_to_a_room_without_members_here_does_nothing() -> None:
    fanout = Fanout()
    fanout.deliver("nobody", [(b"1-0", body("a"))])
    fanout.deliver_frame("nobody", "{}", None)
    assert fanout.counts() == (0, 0)


async def test_an_unstored_frame_goes_to_every_member_but_skip() -> None:
    fanout = Fanout()
    (one, out1), (two, out2) = member(), member()
    await _room(fanout, "r", one, two)
    fanout.deliver_frame("r", '{"hd":{"event":"presence.join"},"bd":{}}', one)
    fanout.deliver_frame("r", '{"hd":{"event":"presence.leave"},"bd":{}}', None)
    await passes(1)
    assert out1.events() == ["presence.leave"]
    assert out2.events() == ["presence.join", "presence.leave"]


async def test_counts_members_and_all_members() -> None:
    fanout = Fanout()
    (one, _), (two, _), (three, _) = member(start=False), member(start=False), member("other", start=False)
    await _room(fanout, "r", one, two)
    await _room(fanout, "other", three)
    assert fanout.counts() == (3, 2)
    assert set(fanout.members("r")) == {one, two} and fanout.members("none") == []
    assert set(fanout.all_members()) == {one, two, three}


async def _room(fanout: Fanout, name: str, *members: Member) -> Room:
    """A room the feed follows, holding ``members``."""

    async def followed() -> None:
        return None

    ready = asyncio.get_running_loop().create_task(followed())
    await ready
    room = Room(name, ready)
    room.members.update(members)
    fanout.rooms[name] = room
    return room


# -- Hub ----------------------------------------------------------------------------------------------

async def test_the_first_member_makes_the_feed_follow_the_room() -> None:
    hub, fanout, node = await hub_on()
    one, _ = member()
    assert await hub.join(one) == b"0-0"
    assert node.feed.rooms() == ["r"] and "n1" in node.store.bus.alive("r")
    assert fanout.members("r") == [one]


async def test_join_returns_the_last_entry_delivered_before_the_member_joined() -> None:
    store = FakeStore()
    old = store.log.add("r", body("old"))
    hub, _, node = await hub_on(store)
    one, out = member()
    assert await hub.join(one) == old
    node.feed.appended("r", old, [(b"1800000000000-0", body("new"))])
    await passes(1)
    assert ids_of(out.frames) == ["1800000000000-0"]  # every later entry, live


async def test_more_members_share_one_follow() -> None:
    store = FakeStore()
    store.bus = CountingBus(store.clock)
    store.log.bus = store.bus
    hub, fanout, _ = await hub_on(store)
    (one, _), (two, _), (three, _) = member(), member(), member()
    await asyncio.gather(hub.join(one), hub.join(two))  # concurrent: the second waits for the same follow
    await hub.join(three)
    assert store.bus.follows == ["r"]
    assert set(fanout.members("r")) == {one, two, three}


async def test_members_joined_receive_what_the_feed_delivers_sender_included() -> None:
    hub, _, node = await hub_on()
    (one, out1), (two, out2) = member(), member()
    await hub.join(one)
    await hub.join(two)
    node.feed.appended("r", b"0-0", [(b"1800000000000-0", body("hi"))])
    await passes(1)
    assert ids_of(out1.frames) == ids_of(out2.frames) == ["1800000000000-0"]


async def test_the_last_member_leaving_unfollows_the_room() -> None:
    hub, fanout, node = await hub_on()
    (one, _), (two, _) = member(), member()
    await hub.join(one)
    await hub.join(two)
    hub.leave(one)
    assert node.feed.rooms() == ["r"] and fanout.members("r") == [two]
    hub.leave(two)
    await passes()
    assert node.feed.rooms() == [] and fanout.counts() == (0, 0)
    assert node.store.bus.alive("r") == []


async def test_leaving_twice_or_without_joining_changes_nothing() -> None:
    hub, fanout, node = await hub_on()
    (one, _), (two, _) = member(), member()
    await hub.join(one)
    hub.leave(two)  # never joined
    hub.leave(one)
    hub.leave(one)
    assert fanout.counts() == (0, 0) and node.feed.rooms() == []
    await hub.join(two)  # the room can be joined again
    assert fanout.members("r") == [two] and node.feed.rooms() == ["r"]


async def test_a_failed_follow_raises_and_leaves_the_hub_unchanged() -> None:
    hub, fanout, node = await hub_on()
    node.store.bus.failing = StoreUnavailable("down")
    one, _ = member()
    with pytest.raises(StoreUnavailable):
        await hub.join(one)
    assert fanout.rooms == {} and node.feed.rooms() == []


async def test_a_join_after_a_failed_follow_follows_again() -> None:
    hub, fanout, node = await hub_on()
    node.store.bus.failing = StoreUnavailable("down")
    (one, _), (two, _) = member(), member()
    with pytest.raises(StoreUnavailable):
        await hub.join(one)
    node.store.bus.failing = None
    assert await hub.join(two) == b"0-0"
    assert fanout.members("r") == [two] and node.feed.rooms() == ["r"]


async def test_every_joiner_waiting_on_a_failed_follow_is_refused() -> None:
    hub, fanout, node = await hub_on()
    node.store.log.gate = asyncio.Event()
    node.store.log.failing = StoreUnavailable("down")
    (one, _), (two, _) = member(), member()
    joins = asyncio.gather(hub.join(one), hub.join(two), return_exceptions=True)
    await passes()
    node.store.log.gate.set()
    assert [type(result) for result in await joins] == [StoreUnavailable, StoreUnavailable]
    assert fanout.rooms == {}


async def test_a_joiner_cancelled_while_the_follow_is_pending_does_not_stop_the_others() -> None:
    hub, fanout, node = await hub_on()
    node.store.log.gate = asyncio.Event()
    (one, _), (two, _) = member(), member()
    first = asyncio.get_running_loop().create_task(hub.join(one))
    second = asyncio.get_running_loop().create_task(hub.join(two))
    await passes()
    first.cancel()
    await passes()
    node.store.log.gate.set()
    assert await second == b"0-0"
    assert first.cancelled() and fanout.members("r") == [two]
    hub.leave(two)  # the cancelled joiner's reference was given back: the room is unfollowed
    assert fanout.rooms == {} and node.feed.rooms() == []


async def test_deltas_reach_a_prompt_member_as_they_came_and_a_slow_one_merged() -> None:
    fanout = Fanout()
    prompt, out = member()
    slow_outlet = StallingOutlet()
    slow = Member(noop_send, "r", None, QUEUE_MAX, outlet_for=lambda _send: slow_outlet)
    slow.start()
    await _room(fanout, "r", prompt, slow)
    fanout.deliver_frame("r", "presence", None)
    await passes(1)  # the slow member's flush finds its transport full
    assert fanout.backed_up() == 1
    frames = [llm_streaming_frame("r", "g-1", "1-0", seq, f"<{seq}>") for seq in range(4)]
    for frame in frames:
        fanout.deliver_frame("r", frame, None)
    await passes(1)
    assert out.frames == ["presence", *frames]
    slow_outlet.ready.set()
    await until(lambda: len(slow_outlet.frames) == 2)
    merged = orjson.loads(slow_outlet.frames[1])
    assert (merged["hd"]["first_seq"], merged["hd"]["seq"], merged["bd"]["delta"]) == (0, 3, "<0><1><2><3>")
    assert fanout.backed_up() == 0


class StallingOutlet(RecordingOutlet):
    """Takes nothing until ``ready`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = asyncio.Event()

    def write(self, frames: Iterable[str]) -> bool:
        return self.ready.is_set() and super().write(frames)

    async def writable(self) -> None:
        await self.ready.wait()
