"""Sessions on fake ports, with real members on a recording outlet: entering (roster, presence, resume
replay, session.ready, held live frames), leaving, sweeping dead nodes and restoring forgotten rosters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

import server.session as session_module
from protocol.codec import llm_streaming_frame, presence_frame
from protocol.errors import ProtocolError
from server.ephemeral import Ephemeral
from server.feed import id_tuple
from server.hub import Fanout, Hub
from server.member import Member
from server.pages import FIRST_READ
from server.session import (
    Resume,
    RosterRestorer,
    Sessions,
    role_of,
    roster_field,
    session_ready,
)
from server.store.ports import PARTIAL_MAX_BYTES, Entry, Fence, Progress, SessionInfo, StoreUnavailable
from server.supervise import backoff
from tests.unit.fakes import FakeStore
from tests.unit.server.helpers import Node, RecordingOutlet, body, member, no_leftover_tasks, passes, until


@pytest.fixture(autouse=True)
async def _clean() -> AsyncIterator[None]:
    async with no_leftover_tasks():
        yield


class Site:
    """One relay node's rooms on a shared fake store: feed, fan-out, hub, unstored frames, sessions."""

    def __init__(self, store: FakeStore, node_id: str = "n1", max_per_room: int = 0) -> None:
        self.store = store
        self.id = node_id
        self.fanout = Fanout()
        self.restorer = RosterRestorer(store.roster, self.fanout, node_id, 60)
        self.node = Node(store, node_id, sink=self.fanout, restorer=self.restorer)
        self.feed = self.node.feed
        self.hub = Hub(self.fanout, self.feed)
        self.ephemeral = Ephemeral(store.bus, node_id, self.feed)
        self.sessions = Sessions(store.log, store.roster, self.ephemeral, self.feed, node_id, 60, max_per_room,
                                 self.node.supervisor)

    async def connect(self, room: str = "r", role: str | None = "A",
                      resume: Resume | None = None) -> tuple[Member, RecordingOutlet]:
        """What the endpoint does: hold, join, enter, start (accepted), session start."""
        joined, outlet = member(room, role, start=False)
        joined.hold()
        newest = await self.hub.join(joined)
        info = await self.sessions.enter(joined, resume)
        joined.start()
        await self.sessions.start(joined, newest, info, resume)
        await passes()
        return joined, outlet


async def site(store: FakeStore | None = None, node_id: str = "n1", max_per_room: int = 0) -> Site:
    made = Site(store or FakeStore(), node_id, max_per_room)
    await made.node.start()
    return made


def ready_of(outlet: RecordingOutlet) -> dict[str, Any]:
    [ready] = [frame for frame in outlet.bodies() if frame["hd"]["event"] == "session.ready"]
    return ready


def ids(outlet: RecordingOutlet) -> list[str]:
    return [frame["hd"].get("id", frame["hd"]["event"]) for frame in outlet.bodies()]


def spy_ranges(store: FakeStore) -> list[tuple[str | bytes, str | bytes, int | None]]:
    """Record every range read of the fake log: (start, end, count)."""
    calls: list[tuple[str | bytes, str | bytes, int | None]] = []
    original = store.log.range

    async def recording(room: str, start: str | bytes = "-", end: str | bytes = "+",
                        count: int | None = None) -> list[Entry]:
        calls.append((start, end, count))
        return await original(room, start, end, count)

    store.log.range = recording  # type: ignore[method-assign]
    return calls


def stream_of(store: FakeStore, count: int, room: str = "r") -> list[str]:
    return [store.log.add(room, body(f"m{n}")).decode() for n in range(count)]


# -- entering -----------------------------------------------------------------------------------------

async def test_session_ready_tells_the_newest_id_the_epoch_and_everyone_present() -> None:
    store = FakeStore()
    entries = stream_of(store, 2)
    here = await site(store)
    first, _ = await here.connect(role="A")
    second, outlet = await here.connect(role=None)
    ready = ready_of(outlet)
    assert ready["hd"] == {"event": "session.ready", "sid": "r", "role": "user", "conn": second.conn}
    assert ready["bd"]["last_id"] == entries[-1] and ready["bd"]["epoch"] == store.log.epochs["r"]
    assert ready["bd"]["recovered"] is True
    assert sorted(m["conn"] for m in ready["bd"]["members"]) == sorted([first.conn, second.conn])
    assert store.roster.rosters["r"] == {f"n1/{first.conn}": "A", f"n1/{second.conn}": "user"}


async def test_session_ready_in_an_empty_room_has_no_last_id_and_no_epoch() -> None:
    here = await site()
    _, outlet = await here.connect()
    assert outlet.events() == ["session.ready"]
    assert ready_of(outlet)["bd"]["last_id"] is None and ready_of(outlet)["bd"]["epoch"] is None


async def test_the_others_hear_presence_join_here_and_on_other_nodes_but_not_the_joiner() -> None:
    store = FakeStore()
    here, there = await site(store, "n1"), await site(store, "n2")
    _, near = await here.connect(role="A")
    _, far = await there.connect(role="B")
    joiner, own = await here.connect(role="B")
    await passes()
    for outlet in (near, far):
        join = outlet.bodies()[-1]
        assert join["hd"]["event"] == "presence.join" and join["hd"]["conn"] == joiner.conn
        assert join["hd"]["role"] == "B" and join["hd"]["sid"] == "r"
    assert own.events() == ["session.ready"]


async def test_live_entries_during_the_start_come_after_session_ready() -> None:
    here = await site()
    joined, outlet = member(start=False)
    joined.hold()
    newest = await here.hub.join(joined)
    info = await here.sessions.enter(joined)
    joined.start()
    here.feed.appended("r", newest, [(b"1800000000000-0", body("live"))])  # delivered while starting
    await here.sessions.start(joined, newest, info, None)
    await passes()
    assert ids(outlet) == ["session.ready", "1800000000000-0"]


async def test_a_resume_replays_after_its_cursor_up_to_newest_then_ready_then_live() -> None:
    store = FakeStore()
    entries = stream_of(store, 4)
    here = await site(store)
    joined, outlet = member(start=False)
    joined.hold()
    newest = await here.hub.join(joined)
    info = await here.sessions.enter(joined)
    joined.start()
    here.feed.appended("r", newest, [(b"1800000000000-0", body("live"))])
    await here.sessions.start(joined, newest, info, Resume(entries[1], None))
    await passes()
    assert ids(outlet) == [entries[2], entries[3], "session.ready", "1800000000000-0"]
    assert ready_of(outlet)["bd"]["recovered"] is True


async def test_a_resume_never_replays_past_newest_what_comes_live_comes_after_ready() -> None:
    store = FakeStore()
    entries = stream_of(store, 2)
    here = await site(store)
    here.node.channel.hold()  # the next announcement arrives late
    joined, outlet = member(start=False)
    joined.hold()
    newest = await here.hub.join(joined)
    info = await here.sessions.enter(joined)
    unheard = store.log.add("r", body("unheard"))  # in the stream, not yet delivered here
    joined.start()
    await here.sessions.start(joined, newest, info, Resume("0", None))
    here.node.announce("r", unheard)
    here.node.channel.hold(False)
    await until(lambda: here.feed.cursor("r") == unheard)
    await passes()
    assert ids(outlet) == [*entries, "session.ready", unheard.decode()]


async def test_a_resume_at_the_newest_id_reads_nothing() -> None:
    store = FakeStore()
    entries = stream_of(store, 3)
    here = await site(store)
    reads = spy_ranges(store)
    _, outlet = await here.connect(resume=Resume(entries[-1], None))
    assert reads == [] and outlet.events() == ["session.ready"]
    assert ready_of(outlet)["bd"]["recovered"] is True


async def test_a_resume_from_an_entry_lost_before_newer_ones_were_stored_is_not_recovered() -> None:
    """Redis lost the cursor's entry (a restart from an older snapshot), then stored new ones after it:
    the cursor is between the oldest and newest retained entries, yet the replay would not be complete."""
    store = FakeStore()
    kept = stream_of(store, 2)
    lost = stream_of(store, 2)
    store.log.lose_newest("r", 2)
    after = stream_of(store, 1)
    assert id_tuple(kept[-1].encode()) < id_tuple(lost[-1].encode()) < id_tuple(after[0].encode())
    here = await site(store)
    _, outlet = await here.connect(resume=Resume(lost[-1], store.log.epochs["r"]))
    assert ids(outlet) == [*kept, *after, "session.ready"]  # everything retained
    assert ready_of(outlet)["bd"]["recovered"] is False
    _, outlet = await here.connect(resume=Resume(kept[-1], store.log.epochs["r"]))
    assert ids(outlet) == [*after, "session.ready"] and ready_of(outlet)["bd"]["recovered"] is True


async def test_a_resume_in_an_empty_room_reads_nothing() -> None:
    here = await site()
    reads = spy_ranges(here.store)
    _, outlet = await here.connect(resume=Resume("0", None))
    assert reads == [] and ready_of(outlet)["bd"]["recovered"] is True


async def test_a_replay_is_read_in_pages_up_to_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "PAGE", 2)
    store = FakeStore()
    entries = stream_of(store, 5)
    here = await site(store)
    reads = spy_ranges(store)
    _, outlet = await here.connect(resume=Resume("0", None))
    newest = entries[-1].encode()
    assert reads == [("-", newest, 2), ("(" + entries[1], newest, 2), ("(" + entries[3], newest, 2)]
    assert ids(outlet) == [*entries, "session.ready"]


async def test_a_replay_whose_last_page_ends_at_newest_stops_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "PAGE", 2)
    store = FakeStore()
    entries = stream_of(store, 4)
    here = await site(store)
    reads = spy_ranges(store)
    _, outlet = await here.connect(resume=Resume("0", None))
    assert len(reads) == 2  # the second page ends with newest: no third read
    assert ids(outlet) == [*entries, "session.ready"]


async def test_a_replay_is_read_in_chunks_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "PAGE_BYTES", 3000)
    store = FakeStore()
    entries = [store.log.add("r", body("x" * 1000)).decode() for _ in range(40)]
    here = await site(store)
    reads = spy_ranges(store)
    _, outlet = await here.connect(resume=Resume("0", None))
    counts = [count or 0 for _, _, count in reads]
    assert counts[0] == FIRST_READ and max(counts[1:]) <= 3  # then about 3,000 bytes a read
    assert ids(outlet) == [*entries, "session.ready"]


async def test_a_resume_from_another_epoch_replays_everything_retained_not_recovered() -> None:
    store = FakeStore()
    entries = stream_of(store, 2)
    here = await site(store)
    _, outlet = await here.connect(resume=Resume(entries[0], "an-older-stream"))
    assert ids(outlet) == [*entries, "session.ready"]
    assert ready_of(outlet)["bd"]["recovered"] is False


async def test_a_resume_from_before_the_oldest_retained_entry_is_not_recovered() -> None:
    store = FakeStore()
    entries = stream_of(store, 4)
    store.log.trim("r", 2)
    here = await site(store)
    _, outlet = await here.connect(resume=Resume("1000-0", store.log.epochs["r"]))
    assert ids(outlet) == [*entries[2:], "session.ready"]
    assert ready_of(outlet)["bd"]["recovered"] is False


async def test_a_resume_of_everything_after_trimming_is_not_recovered() -> None:
    store = FakeStore()
    entries = stream_of(store, 3)
    store.log.trim("r", 1)
    here = await site(store)
    _, outlet = await here.connect(resume=Resume("0", None))
    assert ids(outlet) == [entries[-1], "session.ready"]
    assert ready_of(outlet)["bd"]["recovered"] is False


async def test_a_resume_in_a_room_whose_stream_is_gone_is_not_recovered() -> None:
    here = await site()
    _, outlet = await here.connect(resume=Resume("1700000000000-5", "e1"))
    assert outlet.events() == ["session.ready"]
    assert ready_of(outlet)["bd"] == {"last_id": None, "epoch": None, "recovered": False,
                                      "members": ready_of(outlet)["bd"]["members"], "generations": []}


async def test_a_resume_from_a_cursor_newer_than_the_newest_entry_is_not_recovered() -> None:
    """Redis lost the entries the client saw last (restarted from an older snapshot), the epoch stayed:
    the client's cursor names an entry the stream no longer holds."""
    store = FakeStore()
    entries = stream_of(store, 4)
    epoch = store.log.epochs["r"]
    store.log.lose_newest("r", 2)
    here = await site(store)
    _, outlet = await here.connect(resume=Resume(entries[-1], epoch))
    assert ids(outlet) == [*entries[:2], "session.ready"]  # everything retained
    assert ready_of(outlet)["bd"]["recovered"] is False
    assert ready_of(outlet)["bd"]["epoch"] == epoch and ready_of(outlet)["bd"]["last_id"] == entries[1]


async def test_a_resume_from_the_newest_entry_after_a_loss_is_recovered() -> None:
    store = FakeStore()
    entries = stream_of(store, 4)
    store.log.lose_newest("r", 2)
    here = await site(store)
    _, outlet = await here.connect(resume=Resume(entries[1], store.log.epochs["r"]))
    assert ids(outlet) == ["session.ready"] and ready_of(outlet)["bd"]["recovered"] is True


async def test_a_replayed_entry_whose_body_is_not_json_is_skipped() -> None:
    store = FakeStore()
    good = store.log.add("r", body("ok")).decode()
    store.log.add("r", b"not json")
    last = store.log.add("r", body("last")).decode()
    here = await site(store)
    _, outlet = await here.connect(resume=Resume("0", None))
    assert ids(outlet) == [good, last, "session.ready"]


async def test_a_member_closed_before_its_replay_reads_nothing() -> None:
    store = FakeStore()
    stream_of(store, 2)
    here = await site(store)
    reads = spy_ranges(store)
    joined, outlet = member(start=False)
    joined.hold()
    newest = await here.hub.join(joined)
    info = await here.sessions.enter(joined)
    joined.close(1000)
    await here.sessions.start(joined, newest, info, Resume("0", None))
    assert reads == [] and outlet.frames == []


async def test_a_full_room_refuses_the_member_and_keeps_its_roster() -> None:
    here = await site(max_per_room=1)
    first, _ = await here.connect()
    second, _ = member(start=False)
    with pytest.raises(ProtocolError) as refused:
        await here.sessions.enter(second)
    assert refused.value.code == "room_full"
    assert list(here.store.roster.rosters["r"]) == [f"n1/{first.conn}"]


async def test_entering_raises_when_the_store_is_unavailable() -> None:
    here = await site()
    here.store.roster.failing = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        await here.sessions.enter(member(start=False)[0])


async def test_a_session_starts_even_when_presence_cannot_reach_other_nodes() -> None:
    here = await site()
    joined, outlet = member(start=False)
    joined.hold()
    newest = await here.hub.join(joined)
    info = await here.sessions.enter(joined)
    joined.start()
    here.store.bus.failing = StoreUnavailable("down")
    await here.sessions.start(joined, newest, info, None)
    await passes()
    assert outlet.events() == ["session.ready"]


# -- leaving, sweeping, restoring ------------------------------------------------------------------------

async def test_leaving_removes_the_roster_entry_and_tells_the_others() -> None:
    store = FakeStore()
    here, there = await site(store, "n1"), await site(store, "n2")
    leaver, _ = await here.connect(role="A")
    _, near = await here.connect(role="B")
    _, far = await there.connect(role="B")
    here.hub.leave(leaver)
    await here.sessions.leave(leaver)
    await passes()
    assert f"n1/{leaver.conn}" not in store.roster.rosters["r"]
    for outlet in (near, far):
        leave = outlet.bodies()[-1]
        assert leave["hd"]["event"] == "presence.leave" and leave["hd"]["conn"] == leaver.conn


async def test_leaving_never_raises_when_the_store_is_down() -> None:
    here = await site()
    leaver, _ = await here.connect()
    here.store.roster.failing = StoreUnavailable("down")
    await here.sessions.leave(leaver)


async def test_a_sweep_drops_a_dead_nodes_members_with_one_presence_leave_each() -> None:
    store = FakeStore()
    here = await site(store)
    _, outlet = await here.connect(role="A")
    store.roster.rosters["r"]["n9/dead1"] = "B"  # a node that died without leaving
    await here.sessions.sweep(["r"])
    await here.sessions.sweep(["r"])  # once only
    await passes()
    leaves = [frame for frame in outlet.bodies() if frame["hd"]["event"] == "presence.leave"]
    assert [(frame["hd"]["conn"], frame["hd"]["role"]) for frame in leaves] == [("dead1", "B")]
    assert "n9/dead1" not in store.roster.rosters["r"]


async def test_a_sweep_asks_for_a_bounded_number_of_rooms_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "SWEEP_ROOMS", 2)
    store = FakeStore()
    here = await site(store)
    asked: list[list[str]] = []
    sweep = store.roster.sweep

    async def recording(rooms: Any) -> list[tuple[str, str, str]]:
        asked.append(list(rooms))
        return await sweep(rooms)

    store.roster.sweep = recording  # type: ignore[method-assign]
    await here.sessions.sweep(["a", "b", "c", "d", "e"])
    assert asked == [["a", "b"], ["c", "d"], ["e"]]


async def test_sessions_sweep_the_followed_rooms_after_each_heartbeat_and_survive_failures() -> None:
    store = FakeStore()
    here = await site(store)
    _, outlet = await here.connect()
    runner = asyncio.get_running_loop().create_task(here.sessions.run())
    await passes()
    store.roster.rosters["r"]["n9/dead1"] = "B"
    store.roster.failing = StoreUnavailable("down")
    here.node.sleep.wake(10.0)
    await until(lambda: here.node.sleep.calls.count(10.0) == 2 and backoff(0) in here.node.sleep.sleeping())
    assert "n9/dead1" in store.roster.rosters["r"]  # that sweep failed: the sweeps wait their backoff
    assert here.node.supervisor.down() == ["sweep"]
    store.roster.failing = None
    here.node.sleep.wake(backoff(0))  # the sweeps start again, and wait for the next heartbeat
    await passes()
    here.node.sleep.wake(10.0)
    await until(lambda: "n9/dead1" not in store.roster.rosters["r"])
    await passes()
    assert outlet.events()[-1] == "presence.leave" and not runner.done()
    assert here.node.supervisor.down() == []


async def test_the_restorer_puts_this_nodes_members_back_in_the_rosters() -> None:
    store = FakeStore()
    here = await site(store)
    first, _ = await here.connect(role="A")
    second, _ = await here.connect(role=None)
    store.roster.rosters.clear()
    await here.restorer.restore(["r", "empty"])
    assert store.roster.rosters == {"r": {f"n1/{first.conn}": "A", f"n1/{second.conn}": "user"}}


async def test_a_forgotten_node_is_put_back_in_the_roster_at_its_next_heartbeat() -> None:
    store = FakeStore()
    here = await site(store)
    joined, _ = await here.connect(role="B")
    store.bus.forget()  # a Redis restart without persistence
    store.roster.rosters.clear()
    here.node.sleep.wake(10.0)
    await until(lambda: bool(store.roster.rosters.get("r")))
    assert store.roster.rosters["r"] == {f"n1/{joined.conn}": "B"}


# -- the frames and fields -------------------------------------------------------------------------------

def test_presence_frames_name_the_event_room_role_and_connection() -> None:
    frame = orjson.loads(presence_frame("presence.join", "r", "A", "c0ffee00", 1_700_000_000_123))
    assert frame == {"hd": {"event": "presence.join", "role": "A", "sid": "r", "conn": "c0ffee00",
                            "ts": "2023-11-14T22:13:20.123Z"}, "bd": {}}


def test_a_connection_without_a_role_is_a_user_and_its_roster_field_names_its_node() -> None:
    unbound, _ = member(role=None, start=False)
    bound, _ = member(role="B", start=False)
    assert (role_of(unbound), role_of(bound)) == ("user", "B")
    assert roster_field("n1", bound) == f"n1/{bound.conn}"


def test_session_ready_lists_members_by_role_and_connection() -> None:
    joined, _ = member(role="A", start=False)
    info = SessionInfo("ep", b"1-0", 0, [("n1/aa", "A"), ("n2/bb", "user")])
    ready = orjson.loads(session_ready(joined, b"5-0", info, False))
    assert ready["bd"] == {"last_id": "5-0", "epoch": "ep", "recovered": False,
                           "members": [{"role": "A", "conn": "aa"}, {"role": "user", "conn": "bb"}],
                           "generations": []}


# -- entering mid-answer: session.ready's generations, llm.snapshot, then exactly the later deltas ------

class Generating:
    """A generation of room ``r`` streamed by a worker on another process (its deltas reach the node on
    its channel), through the fake store's fenced frames step."""

    def __init__(self, store: FakeStore, question: str, rid: str = "g-1") -> None:
        self.store, self.question, self.rid = store, question, rid
        self.seq = 0
        self.fence: Fence | None = None

    async def send(self, *deltas: str) -> None:
        if self.fence is None:
            self.fence = (await self.store.locks.start("r", self.rid, 60_000)).fence
        assert self.fence is not None
        frames = [llm_streaming_frame("r", self.rid, self.question, self.seq + n, text)
                  for n, text in enumerate(deltas)]
        progress = Progress(self.question, 1, self.seq + len(deltas) - 1, "".join(deltas))
        assert await self.store.locks.frames(self.fence, [f"{self.question} {frame}".encode() for frame in frames],
                                             "", progress)
        self.seq += len(deltas)


def generation_frames(outlet: RecordingOutlet) -> list[tuple[str, int, int, str]]:
    """(event, first seq, seq, text) of each snapshot and delta the member got."""
    out = []
    for frame in outlet.bodies():
        hd, bd = frame["hd"], frame["bd"]
        if hd["event"] == "llm.snapshot":
            out.append(("llm.snapshot", 0, hd["seq"], bd["text"]))
        elif hd["event"] == "llm.streaming":
            out.append(("llm.streaming", hd["first_seq"], hd["seq"], bd["delta"]))
    return out


async def test_a_member_entering_mid_answer_gets_a_snapshot_after_session_ready_then_the_later_deltas() -> None:
    store = FakeStore()
    [question] = stream_of(store, 1)
    here = await site(store)
    watcher, watched = await here.connect(role="B")  # keeps the room followed: the deltas reach this node
    generating = Generating(store, question)
    await generating.send("one", " two")
    await until(lambda: len(generation_frames(watched)) == 2)
    late, outlet = await here.connect(role="A")
    await generating.send(" three")
    await until(lambda: len(generation_frames(outlet)) == 2)
    assert outlet.events() == ["session.ready", "llm.snapshot", "llm.streaming"]
    assert ready_of(outlet)["bd"]["generations"] == [{"rid": "g-1", "reply_to": question, "state": "running",
                                                       "position": 0}]
    assert generation_frames(outlet) == [("llm.snapshot", 0, 1, "one two"), ("llm.streaming", 2, 2, " three")]
    assert watcher is not late


async def test_deltas_sent_before_the_snapshot_was_read_and_delivered_after_are_dropped() -> None:
    """The race on entering: the member joins (holding), deltas 0-1 are sent, the roster step reads the
    text so far (seq 1), and only then do they reach this node: they are dropped, delta 2 is delivered."""
    store = FakeStore()
    [question] = stream_of(store, 1)
    here = await site(store)
    generating = Generating(store, question)
    joined, outlet = member("r", "A", start=False)
    joined.hold()
    newest = await here.hub.join(joined)
    await generating.send("one")
    await generating.send(" two")
    info = await here.sessions.enter(joined, None)  # reads "one two" (seq 1): the deltas are still on the way
    await generating.send(" three")
    joined.start()
    await here.sessions.start(joined, newest, info, None)
    await until(lambda: len(generation_frames(outlet)) == 2)
    await passes()
    assert generation_frames(outlet) == [("llm.snapshot", 0, 1, "one two"), ("llm.streaming", 2, 2, " three")]


async def test_a_resume_mid_answer_gets_the_replay_then_session_ready_then_the_snapshot() -> None:
    store = FakeStore()
    entries = stream_of(store, 3)
    here = await site(store)
    generating = Generating(store, entries[-1])
    await generating.send("a", "b", "c")
    _, outlet = await here.connect(resume=Resume(entries[0], store.log.epochs["r"]))
    await generating.send("d")
    await until(lambda: len(generation_frames(outlet)) == 2)
    assert ids(outlet) == [*entries[1:], "session.ready", "llm.snapshot", "llm.streaming"]
    assert generation_frames(outlet) == [("llm.snapshot", 0, 2, "abc"), ("llm.streaming", 3, 3, "d")]


async def test_no_snapshot_and_no_generation_when_none_is_running() -> None:
    store = FakeStore()
    [question] = stream_of(store, 1)
    here = await site(store)
    generating = Generating(store, question)
    await generating.send("a")
    assert generating.fence is not None and await store.locks.release(generating.fence)  # it ended
    _, outlet = await here.connect()
    assert outlet.events() == ["session.ready"] and ready_of(outlet)["bd"]["generations"] == []


async def test_a_generation_past_the_snapshot_cap_is_listed_without_a_snapshot() -> None:
    store = FakeStore()
    [question] = stream_of(store, 1)
    here = await site(store)
    generating = Generating(store, question)
    await generating.send("x" * (PARTIAL_MAX_BYTES + 1))
    _, outlet = await here.connect()
    assert outlet.events() == ["session.ready"]
    assert [g["rid"] for g in ready_of(outlet)["bd"]["generations"]] == ["g-1"]
