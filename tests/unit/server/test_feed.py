"""The room feed, with fake ports and a fake sleep: ordering (local batches, catch-up reads,
announcements early or late, held frames), the cursor's state table row by row, the heartbeat and the
listen loop. The loop is driven by explicit passes; the fake log's gate holds reads in flight."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import pytest

import server.feed as feed_module
from server.feed import (
    ANNOUNCEMENTS,
    CATCH_UP,
    HEARTBEAT,
    TRANSITIONS,
    CursorState,
    CursorTrigger,
    FeedStateError,
    _Cursor,
    id_tuple,
)
from server.store.ports import NewEntry, Retention, StoreRefused, StoreUnavailable
from server.supervise import backoff
from tests.unit.fakes import FakeStore, FakeSubscription
from tests.unit.server.helpers import (
    Node,
    no_leftover_tasks,
    other_node_appends,
    passes,
    started_node,
    until,
)

LIVE, CATCHING_UP, HOLDING, UNFOLLOWED = CursorState
BEAT_S = 10.0  # the heartbeat's interval for node_ttl_s=30
FAR = b"99999999999999-0"  # an id no entry has


@pytest.fixture(autouse=True)
async def _clean() -> AsyncIterator[None]:
    async with no_leftover_tasks():
        yield


async def local_append(node: Node, room: str, *bodies: bytes) -> list[bytes]:
    """This node appends ``bodies`` in one batch and tells its feed, as the appender does."""
    result = await node.store.log.append_batch([NewEntry(room, "A", body) for body in bodies], Retention(), node.id)
    ids = [entry_id for entry_id in result.ids if isinstance(entry_id, bytes)]
    node.feed.appended(room, result.before[room], list(zip(ids, bodies, strict=True)))
    return ids


async def sleeping(node: Node, seconds: float) -> None:
    await until(lambda: seconds in node.sleep.sleeping())


def s(*ids: bytes) -> list[str]:
    return [entry_id.decode() for entry_id in ids]


def gate(node: Node) -> asyncio.Event:
    """Hold every read (and append) of the fake log until the event is set."""
    node.store.log.gate = asyncio.Event()
    return node.store.log.gate


async def reading(node: Node, room: str = "r") -> None:
    """Run the loop until the room's reader waits at the log's gate."""
    await until(lambda: node.feed.state(room) in (CATCHING_UP, HOLDING))
    await passes()


# -- the cursor's table -------------------------------------------------------------------------

def test_every_cursor_state_is_reachable_and_every_trigger_used() -> None:
    assert {state for state, _ in TRANSITIONS} | set(TRANSITIONS.values()) == set(CursorState)
    assert {trigger for _, trigger in TRANSITIONS} == set(CursorTrigger)


def test_the_feed_docstring_presents_the_cursor_table() -> None:
    assert feed_module.__doc__ is not None
    rows = re.findall(r"^([A-Z_]+) +([A-Z_]+) +([A-Z_]+) +\S", feed_module.__doc__, re.MULTILINE)
    documented = {(CursorState[state], CursorTrigger[trigger]): CursorState[after] for state, trigger, after in rows}
    assert documented == TRANSITIONS


REFUSED = [pair for pair in itertools.product(CursorState, CursorTrigger) if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "trigger"), REFUSED, ids=[f"{s.name}-{t.name}" for s, t in REFUSED])
def test_a_refused_cursor_transition_raises_and_keeps_the_state(state: CursorState, trigger: CursorTrigger) -> None:
    cursor = _Cursor("r", b"0-0")
    cursor.state = state
    with pytest.raises(FeedStateError, match=f"room r: can't handle {trigger.name} in state {state.name}"):
        cursor.fire(trigger)
    assert cursor.state is state


def test_a_frame_cannot_be_held_with_no_reader_to_release_it() -> None:
    assert (LIVE, CursorTrigger.HOLD) not in TRANSITIONS
    assert (LIVE, CursorTrigger.RELEASED) not in TRANSITIONS


def test_a_new_cursor_is_live() -> None:
    assert _Cursor("r", b"5-0").state is LIVE


# -- one test per row ---------------------------------------------------------------------------

async def test_live_gap_to_catching_up_when_another_node_appended() -> None:
    node = await started_node()
    opened = gate(node)
    entry = node.store.log.add("r", b"x")
    node.announce("r", entry)
    await reading(node)
    assert node.feed.state("r") is CATCHING_UP
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == s(entry)
    assert node.sink.states == [CATCHING_UP]  # delivered by the reader


async def test_live_unfollow_to_unfollowed() -> None:
    node = await started_node()
    cursor = node.feed._cursors["r"]
    node.feed.unfollow("r")
    assert cursor.state is UNFOLLOWED
    assert node.feed.state("r") is None and node.feed.cursor("r") is None and node.feed.rooms() == []


async def test_catching_up_gap_moves_the_readers_target_on() -> None:
    node = await started_node()
    opened = gate(node)
    first = node.store.log.add("r", b"x")
    node.announce("r", first)
    await reading(node)
    second = node.store.log.add("r", b"y")
    third = node.store.log.add("r", b"z")  # in the stream, not heard of
    node.announce("r", second)
    await passes()
    assert node.feed.state("r") is CATCHING_UP
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == s(first, second)  # up to the newest heard of, not to the end
    assert node.feed.cursor("r") == second
    node.announce("r", third)
    await until(lambda: node.feed.cursor("r") == third)


async def test_catching_up_hold_to_holding_for_a_frame_after_an_undelivered_entry() -> None:
    node = await started_node()
    opened = gate(node)
    entry = node.store.log.add("r", b"x")
    node.announce("r", entry)
    await reading(node)
    node.feed.frame("r", entry, "F")
    assert node.feed.state("r") is HOLDING
    assert node.sink.seen() == []
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == [entry.decode(), "F"]


async def test_catching_up_caught_up_to_live_when_the_target_is_reached() -> None:
    node = await started_node()
    entry = node.store.log.add("r", b"x")
    node.announce("r", entry)
    await until(lambda: node.sink.seen() == s(entry))
    await passes()
    assert node.feed.state("r") is LIVE
    assert node.feed._cursors["r"].reader is None and node.feed._cursors["r"].target is None
    [local] = await local_append(node, "r", b"y")  # live again: from memory
    assert node.sink.seen() == s(entry, local)


async def test_catching_up_unfollow_to_unfollowed_and_the_reader_delivers_nothing() -> None:
    node = await started_node()
    opened = gate(node)
    node.announce("r", node.store.log.add("r", b"x"))
    await reading(node)
    cursor = node.feed._cursors["r"]
    node.feed.unfollow("r")
    assert cursor.state is UNFOLLOWED
    opened.set()
    await until(lambda: cursor.reader is None)
    assert node.sink.seen() == [] and cursor.state is UNFOLLOWED


async def test_holding_gap_stays_holding_and_moves_the_target_on() -> None:
    node = await started_node()
    opened = gate(node)
    first = node.store.log.add("r", b"x")
    node.announce("r", first)
    await reading(node)
    node.feed.frame("r", first, "F")
    second = node.store.log.add("r", b"y")
    node.announce("r", second)
    await passes()
    assert node.feed.state("r") is HOLDING
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == [first.decode(), "F", second.decode()]


async def test_holding_hold_queues_a_frame_behind_the_held_ones_even_when_its_entry_was_delivered() -> None:
    node = await started_node()
    opened = gate(node)
    first = node.store.log.add("r", b"x")
    second = node.store.log.add("r", b"y")
    node.announce("r", second)
    await reading(node)
    node.feed.frame("r", second, "F-after-second")
    node.feed.frame("r", b"0-0", "F-after-nothing")  # follows the cursor, but others wait before it
    assert node.feed.state("r") is HOLDING
    assert node.sink.seen() == []
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == [first.decode(), second.decode(), "F-after-second", "F-after-nothing"]


async def test_holding_released_to_catching_up_once_every_held_frame_is_out() -> None:
    node = await started_node()
    opened = gate(node)
    first, second, third = (node.store.log.add("r", body) for body in (b"x", b"y", b"z"))
    node.announce("r", third)
    await reading(node)
    node.feed.frame("r", first, "F1")
    node.feed.frame("r", second, "F2")
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == [first.decode(), "F1", second.decode(), "F2", third.decode()]
    assert node.sink.states == [HOLDING, HOLDING, HOLDING, HOLDING, CATCHING_UP]  # released after F2


async def test_holding_caught_up_to_live_releases_frames_whose_entries_are_gone() -> None:
    node = await started_node()
    opened = gate(node)
    entry = node.store.log.add("r", b"x")
    node.announce("r", entry)
    await reading(node)
    node.feed.frame("r", entry, "F")
    del node.store.log.streams["r"]  # the stream was deleted (or trimmed) before the reader read it
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == ["F"]
    assert node.feed.cursor("r") == b"0-0"


async def test_holding_unfollow_to_unfollowed_drops_the_held_frames() -> None:
    node = await started_node()
    opened = gate(node)
    node.feed.frame("r", FAR, "F")
    assert node.feed.state("r") is HOLDING
    cursor = node.feed._cursors["r"]
    node.feed.unfollow("r")
    assert cursor.state is UNFOLLOWED
    opened.set()
    await until(lambda: cursor.reader is None)
    assert node.sink.seen() == [] and cursor.state is UNFOLLOWED


async def test_unfollowed_caught_up_stays_unfollowed_and_leaves_the_new_cursor_alone() -> None:
    node = await started_node()
    opened = gate(node)
    node.feed.frame("r", FAR, "F")
    cursor = node.feed._cursors["r"]
    node.feed.unfollow("r")
    following = asyncio.get_running_loop().create_task(node.feed.follow("r"))  # followed again meanwhile
    opened.set()
    await following
    await until(lambda: cursor.reader is None)
    assert cursor.state is UNFOLLOWED
    assert node.feed.state("r") is LIVE and node.feed._cursors["r"] is not cursor
    assert node.sink.seen() == []  # the old cursor's held frame is not released into the room


# -- local batches: the fast path -----------------------------------------------------------------

async def test_a_local_batch_is_delivered_from_memory_when_nothing_was_appended_in_between() -> None:
    node = await started_node()
    ids = await local_append(node, "r", b"x", b"y")
    assert node.sink.calls == [s(*ids)]  # at once, in one delivery: no read
    assert node.feed.cursor("r") == ids[-1] and node.feed.state("r") is LIVE


async def test_a_local_batch_needs_no_read_of_the_stream() -> None:
    node = await started_node()
    [entry] = await local_append(node, "r", b"x")
    gate(node)  # a read would wait here
    node.feed.appended("r", entry, [(b"1800000000000-0", b"y")])
    assert node.sink.seen() == [entry.decode(), "1800000000000-0"]


async def test_consecutive_local_batches_all_take_the_fast_path() -> None:
    node = await started_node()
    first = await local_append(node, "r", b"a")
    second = await local_append(node, "r", b"b", b"c")
    assert node.sink.calls == [s(*first), s(*second)]


async def test_a_local_batch_of_resends_only_catches_up_to_the_newest_id_it_found() -> None:
    # REDIS_MIN_REPLICAS: an entry whose batch fell short of replicas was stored, not delivered; its resend's
    # batch (replicated) says the room stands at it: the feed reads up to there, and no further.
    node = await started_node()
    [held_back] = [node.store.log.add("r", b"x")]  # stored, never announced nor handed to the feed
    later = node.store.log.add("r", b"y")  # another node's, not replicated yet: not announced
    node.feed.appended("r", held_back, [])
    await until(lambda: node.feed.state("r") is LIVE and node.sink.seen() != [])
    await passes()
    assert node.sink.seen() == s(held_back)
    assert later.decode() not in node.sink.seen()


async def test_a_local_batch_of_resends_reads_nothing_when_the_room_was_delivered_that_far() -> None:
    node = await started_node()
    [entry] = await local_append(node, "r", b"x")
    gate(node)  # a read would wait here
    node.feed.appended("r", entry, [])
    assert node.feed.state("r") is LIVE and node.sink.seen() == s(entry)


async def test_a_local_batch_after_another_nodes_append_is_caught_up_from_the_stream_in_order() -> None:
    node = await started_node()
    theirs = await other_node_appends(node.store, "r", b"x")
    mine = await local_append(node, "r", b"y")
    assert node.sink.seen() == []  # before != cursor: not from memory
    assert node.feed.state("r") is CATCHING_UP
    await until(lambda: node.feed.state("r") is LIVE)
    await passes()
    assert node.sink.seen() == s(*theirs, *mine)  # each once: the announcement adds nothing


async def test_a_local_batch_while_catching_up_waits_for_the_reader_and_is_delivered_once() -> None:
    node = await started_node()
    opened = gate(node)
    node.store.bus.forget("r")
    node.sleep.wake(BEAT_S)  # the heartbeat finds the room forgotten: catch up to the end
    await reading(node)
    entry = node.store.log.add("r", b"x")
    node.feed.appended("r", b"0-0", [(entry, b"x")])  # before == cursor, but a reader runs
    assert node.sink.seen() == []
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    await passes()
    assert node.sink.seen() == s(entry)


async def test_a_batch_for_a_room_not_followed_is_ignored() -> None:
    node = await started_node()
    node.feed.appended("other", b"0-0", [(b"1-0", b"x")])
    assert node.sink.delivered == [] and node.feed.rooms() == ["r"]


# -- announcements --------------------------------------------------------------------------------

async def test_an_announcement_arriving_late_delivers_nothing_twice() -> None:
    node = await started_node()
    node.channel.hold()
    theirs = await other_node_appends(node.store, "r", b"x")
    mine = await local_append(node, "r", b"y")
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == s(*theirs, *mine)
    node.channel.hold(False)  # the announcement of their entry, after both were delivered
    await passes()
    assert node.sink.seen() == s(*theirs, *mine)
    assert node.feed.state("r") is LIVE


async def test_an_announcement_arriving_before_the_local_batch_is_reported_keeps_the_order() -> None:
    node = await started_node()
    opened = gate(node)
    theirs = node.store.log.add("r", b"x")
    node.announce("r", theirs)
    await reading(node)
    mine = node.store.log.add("r", b"y")
    node.feed.appended("r", theirs, [(mine, b"y")])  # the appender reports while the reader reads
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == s(theirs, mine)


async def test_an_announcement_of_an_id_already_delivered_starts_no_reader() -> None:
    node = await started_node()
    [mine] = await local_append(node, "r", b"x")
    node.announce("r", mine)
    await passes()
    assert node.feed.state("r") is LIVE and node.sink.seen() == s(mine)


async def test_an_announcement_for_a_room_not_followed_is_ignored() -> None:
    node = await started_node()
    node.announce("elsewhere", node.store.log.add("elsewhere", b"x"))
    node.store.bus.send("n1", b"r")  # no id at all
    await passes()
    assert node.sink.delivered == [] and node.feed.rooms() == ["r"]


async def test_a_catch_up_delivers_only_up_to_the_newest_id_heard_of() -> None:
    node = await started_node()
    first = node.store.log.add("r", b"x")
    second = node.store.log.add("r", b"y")
    node.announce("r", first)
    await until(lambda: node.sink.seen() == s(first))
    await passes()
    assert node.sink.seen() == s(first) and node.feed.cursor("r") == first
    node.announce("r", second)
    await until(lambda: node.sink.seen() == s(first, second))


async def test_an_entry_announced_after_a_frame_is_not_delivered_before_it() -> None:
    node = await started_node()
    first = node.store.log.add("r", b"x")
    second = node.store.log.add("r", b"y")  # already in the stream when the first is read
    node.announce("r", first)
    await until(lambda: node.feed.cursor("r") == first)
    node.store.bus.send("n1", b"r " + first + b" F")  # the other node's frame, then its next append
    node.announce("r", second)
    await until(lambda: node.feed.cursor("r") == second)
    assert node.sink.seen() == [first.decode(), "F", second.decode()]


async def test_a_frame_from_another_node_is_delivered_whole_with_its_spaces() -> None:
    node = await started_node()
    node.store.bus.send("n1", b'r 0-0 {"hd": {"event": "x"}, "bd": {}}')
    await until(lambda: bool(node.sink.delivered))
    assert node.sink.seen() == ['{"hd": {"event": "x"}, "bd": {}}']
    assert node.sink.skips == [None]


async def test_a_frame_from_another_node_waits_for_the_entry_it_follows() -> None:
    node = await started_node()
    entry = node.store.log.add("r", b"x")
    node.store.bus.send("n1", b"r " + entry + b" F")  # its announcement was lost: the frame says enough
    await until(lambda: node.feed.state("r") is LIVE and bool(node.sink.delivered))
    assert node.sink.seen() == [entry.decode(), "F"]


# -- unstored frames -------------------------------------------------------------------------------

async def test_a_frame_following_the_cursor_is_delivered_at_once_to_all_but_skip() -> None:
    node = await started_node()
    skip = object()
    node.feed.frame("r", b"0-0", "F", skip)
    assert node.sink.seen() == ["F"] and node.sink.skips == [skip]
    assert node.feed.state("r") is LIVE


async def test_a_frame_after_an_entry_not_yet_delivered_starts_a_reader_and_waits() -> None:
    node = await started_node()
    entry = node.store.log.add("r", b"x")
    node.feed.frame("r", entry, "F")
    assert node.sink.seen() == [] and node.feed.state("r") is HOLDING
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == [entry.decode(), "F"]


async def test_a_frame_following_the_cursor_while_catching_up_goes_out_at_once() -> None:
    node = await started_node()
    opened = gate(node)
    entry = node.store.log.add("r", b"x")
    node.announce("r", entry)
    await reading(node)
    node.feed.frame("r", b"0-0", "F")
    assert node.sink.seen() == ["F"] and node.feed.state("r") is CATCHING_UP
    opened.set()
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == ["F", entry.decode()]


async def test_held_frames_keep_their_arrival_order_and_skips() -> None:
    node = await started_node()
    entry = node.store.log.add("r", b"x")
    one, two = object(), object()
    node.feed.frame("r", entry, "F1", one)
    node.feed.frame("r", entry, "F2", two)
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == [entry.decode(), "F1", "F2"] and node.sink.skips == [one, two]


async def test_a_frame_for_a_room_not_followed_is_dropped() -> None:
    node = await started_node()
    node.feed.frame("other", b"0-0", "F")
    assert node.sink.delivered == []


async def test_a_frame_after_an_id_that_never_comes_is_released_when_the_reader_finds_nothing() -> None:
    node = await started_node()
    node.feed.frame("r", FAR, "F")
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == ["F"] and node.feed.cursor("r") == b"0-0"


# -- reading the stream when Redis is unreachable ------------------------------------------------

async def test_a_reader_retries_with_growing_backoff_and_resumes_from_its_cursor() -> None:
    node = await started_node()
    first = await local_append(node, "r", b"a")
    second = node.store.log.add("r", b"x")
    node.store.log.failing = StoreUnavailable("down")
    node.announce("r", second)
    await until(lambda: node.sleep.sleeping().count(backoff(0)) == 1)
    node.sleep.wake(backoff(0))
    await until(lambda: backoff(1) in node.sleep.sleeping())
    node.store.log.failing = None
    node.sleep.wake(backoff(1))
    await until(lambda: node.feed.state("r") is LIVE)
    assert node.sink.seen() == s(*first, second)
    assert [call for call in node.sleep.calls if call != BEAT_S] == [0.05, 0.1]


def test_backoff_grows_then_stays_at_its_cap() -> None:
    assert [backoff(n) for n in range(8)] == [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_an_id_without_a_sequence_number_is_sequence_0() -> None:
    assert id_tuple(b"5") == (5, 0)
    assert id_tuple(b"5-3") == (5, 3)
    assert id_tuple(b"10-0") > id_tuple(b"9-99")  # numeric, not textual


# -- following and unfollowing -----------------------------------------------------------------------

async def test_follow_starts_the_cursor_at_the_streams_newest_entry() -> None:
    store = FakeStore()
    old = store.log.add("r", b"x")
    node = await started_node(store)
    assert node.feed.cursor("r") == old and node.feed.rooms() == ["r"]
    assert node.sink.delivered == []  # what was there before is history, not live


async def test_follow_joins_the_followers_before_the_cursor_is_read() -> None:
    node = await started_node(rooms=())
    opened = gate(node)
    following = asyncio.get_running_loop().create_task(node.feed.follow("r"))
    await passes()
    assert "n1" in node.store.bus.alive("r")  # already announced to, while the cursor is read
    entry = node.store.log.add("r", b"x")  # another node appends now: announced to this node
    node.announce("r", entry)
    opened.set()
    await following
    await passes()
    assert node.feed.cursor("r") == entry
    assert node.sink.delivered == []  # behind the cursor: not delivered, and not delivered twice


async def test_follow_raises_and_follows_nothing_when_the_store_is_unavailable() -> None:
    node = await started_node(rooms=())
    node.store.bus.failing = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        await node.feed.follow("r")
    assert node.feed.rooms() == [] and node.feed.cursor("r") is None


async def test_follow_waits_for_the_feed_to_listen_and_gives_up_after_a_while_as_unavailable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "READY_TIMEOUT_S", 0.01)
    node = Node(FakeStore())  # not started
    with pytest.raises(StoreUnavailable, match="not listening"):  # the client is told unavailable, not internal
        await node.feed.follow("r")
    assert node.feed.rooms() == []


async def test_follow_of_a_followed_room_replaces_its_cursor_and_unfollows_the_old_one() -> None:
    node = await started_node()
    old = node.feed._cursors["r"]
    await node.feed.follow("r")
    assert old.state is UNFOLLOWED and node.feed.state("r") is LIVE


async def test_unfollow_leaves_the_rooms_followers() -> None:
    node = await started_node()
    node.feed.unfollow("r")
    await passes()
    assert "n1" not in node.store.bus.alive("r")
    node.feed.unfollow("r")  # again: nothing to do
    assert node.feed.rooms() == []


async def test_following_again_before_the_unfollow_is_sent_keeps_the_node_a_follower() -> None:
    node = await started_node()
    node.feed.unfollow("r")
    await node.feed.follow("r")
    await passes()
    assert "n1" in node.store.bus.alive("r") and node.feed.rooms() == ["r"]


# -- the heartbeat ----------------------------------------------------------------------------------

async def test_the_heartbeat_renews_the_node_in_every_room_every_third_of_its_ttl() -> None:
    node = await started_node(rooms=("r", "s"))
    assert node.sleep.sleeping() == [BEAT_S]
    beat = asyncio.get_running_loop().create_task(node.feed.next_beat())
    node.store.clock.advance(25)
    node.sleep.wake(BEAT_S)
    await until(beat.done)
    node.store.clock.advance(25)  # 50 s after the follow, 25 after the beat
    assert node.store.bus.alive("r") == ["n1"] and node.store.bus.alive("s") == ["n1"]
    assert node.sleep.sleeping() == [BEAT_S] and node.restorer.calls == []


async def test_a_heartbeat_that_finds_a_room_forgotten_restores_its_roster_and_catches_it_up() -> None:
    node = await started_node(rooms=("r", "s"))
    node.store.bus.forget("r")
    missed = await other_node_appends(node.store, "r", b"x")  # not announced: n1 was not a follower
    node.sleep.wake(BEAT_S)
    await until(lambda: node.sink.seen() == s(*missed))
    assert node.restorer.calls == [["r"]]
    await until(lambda: node.feed.state("r") is LIVE)


REFUSED_WRITE = StoreRefused("NOREPLICAS Not enough good replicas to write.")


@pytest.mark.parametrize("error", [StoreUnavailable("down"), REFUSED_WRITE, RuntimeError("bug")],
                         ids=["unreachable", "refused", "bug"])
async def test_a_failed_heartbeat_is_restarted_after_a_backoff_and_the_node_is_down_until_it_beats(
        error: Exception) -> None:
    node = await started_node()
    beat = asyncio.get_running_loop().create_task(node.feed.next_beat())
    node.store.bus.failing = error
    node.sleep.wake(BEAT_S)
    await sleeping(node, backoff(0))
    assert node.supervisor.down() == [HEARTBEAT] and not beat.done()
    node.sleep.wake(backoff(0))  # started again: it waits its interval, then beats
    await sleeping(node, BEAT_S)
    node.store.bus.failing = None
    node.sleep.wake(BEAT_S)
    await until(beat.done)
    assert node.supervisor.down() == []


async def test_a_room_forgotten_while_writes_were_refused_is_restored_at_the_first_beat_that_can() -> None:
    """Redis forgot the node (its time ran out while writes were refused); the beat that follows it
    again fails to restore the roster: the next beats try again until the roster is back."""
    node = await started_node(rooms=("r", "s"))
    node.store.bus.forget("r")
    restore = node.restorer.restore
    refusals = [REFUSED_WRITE]

    async def refusing(rooms: list[str]) -> None:
        if refusals:
            raise refusals.pop()
        await restore(rooms)

    node.restorer.restore = refusing  # type: ignore[method-assign,assignment]
    node.sleep.wake(BEAT_S)  # follows "r" again (reported lost once), then the restore is refused
    await sleeping(node, backoff(0))
    assert node.restorer.calls == [] and node.supervisor.down() == [HEARTBEAT]
    assert "n1" in node.store.bus.alive("r")  # followed again: the next follow reports nothing lost
    node.sleep.wake(backoff(0))
    await sleeping(node, BEAT_S)
    node.sleep.wake(BEAT_S)
    await until(lambda: node.restorer.calls == [["r"]])
    assert node.supervisor.down() == []


async def test_a_forgotten_room_is_caught_up_even_when_its_restore_fails() -> None:
    node = await started_node(rooms=("r",))
    node.store.bus.forget("r")
    missed = await other_node_appends(node.store, "r", b"x")  # not announced: n1 was not a follower

    async def refusing(rooms: list[str]) -> None:
        raise REFUSED_WRITE

    node.restorer.restore = refusing  # type: ignore[method-assign,assignment]
    node.sleep.wake(BEAT_S)
    await until(lambda: node.sink.seen() == s(*missed))


async def test_the_heartbeat_waits_while_the_channel_is_down() -> None:
    node = await started_node()
    beat = asyncio.get_running_loop().create_task(node.feed.next_beat())
    node.channel.lose()
    await until(lambda: backoff(0) in node.sleep.sleeping())
    node.store.clock.advance(25)
    node.sleep.wake(BEAT_S)
    await passes()
    assert not beat.done()
    node.store.clock.advance(10)
    assert node.store.bus.alive("r") == []  # not renewed while not listening


# -- the listen loop -------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [REFUSED_WRITE, RuntimeError("bug")], ids=["refused", "bug"])
async def test_a_listener_whose_beat_fails_on_subscribing_is_restarted_and_becomes_ready_once_it_beats(
        error: Exception) -> None:
    """The fault seen from outside: the subscription reconnects while Redis refuses writes (a
    failover), so the beat it starts with fails. The listener used to die, and the heartbeat with it."""
    node = await started_node(rooms=("r",))
    node.store.bus.failing = error
    node.channel.lose()
    await sleeping(node, backoff(0))
    node.sleep.wake(backoff(0))  # resubscribes; its beat is refused
    await sleeping(node, backoff(1))
    assert not node.feed._ready.is_set() and node.supervisor.down() == [ANNOUNCEMENTS]
    missed = await other_node_appends(node.store, "r", b"x")
    node.store.bus.failing = None
    node.sleep.wake(backoff(1))
    await until(lambda: node.feed._ready.is_set())
    assert node.supervisor.down() == [] and "n1" in node.store.bus.alive("r")
    await until(lambda: node.sink.seen() == s(*missed))
    assert node.task is not None and not node.task.done()


async def test_a_catch_up_reader_retries_any_failure_and_the_node_is_down_meanwhile() -> None:
    node = await started_node()
    node.store.log.failing = REFUSED_WRITE  # BUSY refuses reads too: any error is retried
    entry = node.store.log.add("r", b"x")
    node.announce("r", entry)
    await sleeping(node, backoff(0))
    assert node.supervisor.down() == [CATCH_UP]
    node.store.log.failing = None
    node.sleep.wake(backoff(0))
    await until(lambda: node.sink.seen() == s(entry))
    assert node.supervisor.down() == []


async def test_a_failing_reader_of_a_room_unfollowed_stops_and_is_no_longer_down() -> None:
    node = await started_node()
    node.store.log.failing = RuntimeError("bug")
    node.announce("r", node.store.log.add("r", b"x"))
    await sleeping(node, backoff(0))
    node.feed.unfollow("r")
    node.sleep.wake(backoff(0))
    await until(lambda: node.supervisor.down() == [])
    assert node.sink.seen() == []


async def test_subscribing_beats_then_becomes_ready() -> None:
    node = Node(FakeStore())
    await node.start()
    assert node.channel.subscribed
    await node.feed.follow("r")  # ready: follows at once
    assert node.feed.rooms() == ["r"]


async def test_a_lost_channel_reconnects_after_a_backoff_and_catches_every_room_up_to_the_end() -> None:
    node = await started_node(rooms=("r", "s"))
    lost = node.channel
    lost.lose()
    await until(lambda: backoff(0) in node.sleep.sleeping())
    assert not node.feed._ready.is_set()
    missed_r = await other_node_appends(node.store, "r", b"x")  # announced to nobody listening
    missed_s = await other_node_appends(node.store, "s", b"y", b"z")
    node.sleep.wake(backoff(0))
    await until(lambda: node.feed._ready.is_set())
    assert lost.closed and node.channel is not lost and node.channel.subscribed
    await until(lambda: node.feed.state("r") is LIVE and node.feed.state("s") is LIVE)
    await passes()
    assert node.sink.seen("r") == s(*missed_r) and node.sink.seen("s") == s(*missed_s)


async def test_a_catch_up_to_the_end_that_finds_the_streams_newest_entry_older_than_the_cursor_moves_it_back() -> None:
    """Redis lost entries delivered here (restarted from an older snapshot, or failed over to a replica
    that lagged, its clock behind): after the channel reconnects, the cursor is the stream's newest
    entry again, not a lost one, and entries stored later with ids below the lost ones are delivered."""
    node = await started_node()
    kept = await local_append(node, "r", b"kept")
    lost = await local_append(node, "r", b"lost 1", b"lost 2")
    node.store.log.lose_newest("r", 2, generated_too=True)
    node.channel.lose()
    await until(lambda: backoff(0) in node.sleep.sleeping())
    node.sleep.wake(backoff(0))
    await until(lambda: node.feed._ready.is_set() and node.feed.state("r") is LIVE)
    await until(lambda: node.feed.cursor("r") == kept[0])
    after = await other_node_appends(node.store, "r", b"after")
    assert id_tuple(kept[0]) < id_tuple(after[0]) < id_tuple(lost[-1])  # the clock is behind
    await until(lambda: node.sink.seen() == s(*kept, *lost, *after))
    assert node.feed.cursor("r") == after[0]


async def test_a_catch_up_to_the_end_reads_again_when_an_entry_was_appended_between_its_two_reads() -> None:
    """The reader found nothing after the cursor, then the stream's newest id beyond it: an append
    landed between the two reads (a local one included, reported while the reader ran, so it did not
    take the fast path). The reader reads again: that entry is delivered, not skipped."""
    node = await started_node()
    before = await local_append(node, "r", b"before")
    last_id = node.store.log.last_id
    appended: list[bytes] = []

    async def append_first(room: str) -> bytes:  # the sender's append lands between the reader's reads
        if not appended:
            appended.extend(await local_append(node, room, b"after"))
        return await last_id(room)

    node.store.log.last_id = append_first  # type: ignore[method-assign]
    node.channel.lose()
    await until(lambda: backoff(0) in node.sleep.sleeping())
    node.sleep.wake(backoff(0))
    await until(lambda: bool(appended) and node.feed.state("r") is LIVE)
    await passes()
    assert node.sink.seen() == s(*before, *appended)
    assert node.feed.cursor("r") == appended[0]


async def test_a_catch_up_to_the_end_keeps_a_cursor_whose_entry_the_stream_holds() -> None:
    node = await started_node()
    ids = await local_append(node, "r", b"one", b"two")
    node.channel.lose()
    await until(lambda: backoff(0) in node.sleep.sleeping())
    node.sleep.wake(backoff(0))
    await until(lambda: node.feed._ready.is_set() and node.feed.state("r") is LIVE)
    await passes()
    assert node.feed.cursor("r") == ids[-1] and node.sink.seen() == s(*ids)


async def test_reconnecting_backs_off_more_after_each_failure_and_starts_over_once_connected() -> None:
    store = FakeStore()
    down: list[bool] = [False]
    subscription = store.bus.subscription

    def failing_subscription(node_id: str) -> FakeSubscription:
        made = subscription(node_id)
        if down[0]:
            made.lose()
        return made

    store.bus.subscription = failing_subscription  # type: ignore[method-assign,assignment]
    node = await started_node(store)
    down[0] = True
    node.channel.lose()
    for failures in range(3):
        await sleeping(node, backoff(failures))
        node.sleep.wake(backoff(failures))
    await sleeping(node, backoff(3))
    down[0] = False
    node.sleep.wake(backoff(3))
    await until(lambda: node.feed._ready.is_set())
    node.channel.lose()
    await until(lambda: backoff(0) in node.sleep.sleeping())
    assert [call for call in node.sleep.calls if call != BEAT_S] == [0.05, 0.1, 0.25, 0.5, 0.05]


async def test_a_follow_while_the_channel_is_down_waits_for_it() -> None:
    node = await started_node(rooms=())
    node.channel.lose()
    await until(lambda: backoff(0) in node.sleep.sleeping())
    following = asyncio.get_running_loop().create_task(node.feed.follow("r"))
    await passes()
    assert not following.done()
    node.sleep.wake(backoff(0))
    await following
    assert node.feed.rooms() == ["r"]


async def test_stopping_the_feed_unfollows_every_room_and_stops_the_heartbeat() -> None:
    node = await started_node(rooms=("r", "s"))
    assert node.task is not None
    node.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await node.task
    await passes()
    assert node.store.bus.alive("r") == [] and node.store.bus.alive("s") == []
    assert node.sleep.sleeping() == [] and node.channel.closed


async def test_stopping_the_feed_while_the_store_is_down_still_stops() -> None:
    node = await started_node()
    node.store.bus.failing = StoreUnavailable("down")
    assert node.task is not None
    node.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await node.task
