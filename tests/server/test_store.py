"""One contract, every adapter: the room log, roster, node bus, room instance and usage ports on a real
Redis (through the lean connection and through redis-py alone) and on the embedded fakeredis."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from server.store.keys import (
    dedupe_key,
    epoch_key,
    followers_key,
    llm_room_tokens_key,
    llm_tokens_key,
    room_instance_key,
    stream_key,
)
from server.store.ports import (
    Admission,
    Cancel,
    Duplicate,
    Fence,
    NewEntry,
    Queued,
    Request,
    Retention,
    Store,
    Subscription,
    Turn,
)
from server.store.redis_store import RedisStore
from tests.conftest import Backend, new_room

KEEP_ALL = Retention()


def entries(room: str, *texts: str) -> list[NewEntry]:
    return [NewEntry(room, "A", f'{{"hd":{{}},"bd":{{"text":"{t}"}}}}'.encode()) for t in texts]


def tup(entry_id: bytes) -> tuple[int, int]:
    ms, seq = entry_id.split(b"-")
    return int(ms), int(seq)


async def test_a_batch_is_appended_in_order_and_reports_the_previous_newest_id(store: Store) -> None:
    room1, room2 = new_room(), new_room()
    first = await store.log.append_batch(entries(room1, "1", "2") + entries(room2, "x") + entries(room1, "3"),
                                         KEEP_ALL, "n1")
    assert first.before == {room1: b"0-0", room2: b"0-0"}
    ids = first.ids
    assert all(isinstance(i, bytes) for i in ids)
    stored = await store.log.range(room1)
    assert [e[0] for e in stored] == [ids[0], ids[1], ids[3]]
    assert [e[1][b"participant"] for e in stored] == [b"A"] * 3
    assert tup(ids[0]) < tup(ids[1]) < tup(ids[3])  # type: ignore[arg-type]
    second = await store.log.append_batch(entries(room1, "4"), KEEP_ALL, "n1")
    assert second.before == {room1: ids[3]}


async def test_range_reads_after_an_exclusive_cursor(store: Store) -> None:
    room = new_room()
    ids = (await store.log.append_batch(entries(room, "1", "2", "3"), KEEP_ALL, "n")).ids
    after_first = await store.log.range(room, b"(" + ids[0], "+")  # type: ignore[operator]
    assert [e[0] for e in after_first] == ids[1:]
    assert await store.log.bodies(room, ids[0], 10) == [(e[0], e[1][b"body"]) for e in after_first]  # type: ignore[arg-type]
    assert await store.log.last_id(room) == ids[2]
    assert await store.log.last_id(new_room()) == b"0-0"


async def test_appends_trim_approximately_and_renew_the_expiry(backend: Backend) -> None:
    room = new_room()
    for _ in range(10):
        await backend.store.log.append_batch(entries(room, *map(str, range(100))), Retention(maxlen=50, ttl_s=600),
                                             "n")
    kept = await backend.store.log.range(room)
    assert 50 <= len(kept) < 1000
    assert 0 < await backend.raw.ttl(stream_key(room)) <= 600


async def test_a_long_expiry_is_renewed_with_its_slack_once_a_period(backend: Backend) -> None:
    """ROOM_TTL_SECONDS of 1,000 s and more: renewed to ttl + ttl/1000 (at most 60 s) by the first append
    of each period, so a room expires between ttl and ttl + slack after its last write."""
    room, week = new_room(), Retention(ttl_s=604800)
    await backend.store.log.append_batch(entries(room, "1"), week, "n")
    assert 604800 < await backend.raw.ttl(stream_key(room)) <= 604860
    assert 604800 < await backend.raw.ttl(epoch_key(room)) <= 604860
    await backend.raw.expire(stream_key(room), 604000)
    await backend.raw.expire(epoch_key(room), 604000)
    await backend.store.log.append_batch(entries(room, "2"), week, "n")  # (renewed 0 s ago: not again)
    assert await backend.raw.ttl(stream_key(room)) <= 604000
    assert await backend.raw.ttl(epoch_key(room)) <= 604000


async def test_the_newest_id_before_a_batch_is_kept_with_the_epoch(backend: Backend) -> None:
    store, room = backend.store, new_room()
    [first] = (await store.log.append_batch(entries(room, "1"), KEEP_ALL, "n")).ids
    epoch = (await store.roster.enter(room, "", "", 0)).epoch
    assert isinstance(first, bytes) and epoch
    assert await backend.raw.get(epoch_key(room)) == f"{epoch} ".encode() + first
    await backend.raw.set(epoch_key(room), epoch)  # (as written before the newest id was kept there)
    result = await store.log.append_batch(entries(room, "2"), KEEP_ALL, "n")
    assert result.before == {room: first}
    assert (await store.roster.enter(room, "", "", 0)).epoch == epoch
    assert await backend.raw.get(epoch_key(room)) == f"{epoch} ".encode() + result.ids[0]  # type: ignore[operator]


async def test_a_stream_lost_without_its_epoch_key_starts_a_new_epoch(backend: Backend) -> None:
    store, room = backend.store, new_room()
    await store.log.append_batch(entries(room, "1", "2"), KEEP_ALL, "n")
    epoch = (await store.roster.enter(room, "", "", 0)).epoch
    await backend.raw.delete(stream_key(room))  # (evicted, or deleted by hand: its epoch key left behind)
    result = await store.log.append_batch(entries(room, "3", "4"), KEEP_ALL, "n")
    assert result.before == {room: b"0-0"}
    assert [entry_id for entry_id, _ in await store.log.range(room)] == result.ids
    assert (await store.roster.enter(room, "", "", 0)).epoch not in (None, epoch)


async def _listening(store: Store, node: str) -> Subscription:
    subscription = store.bus.subscription(node)
    await subscription.subscribe()
    while (message := await subscription.next(timeout_s=5)) is None or message[0] != "subscribe":
        pass
    return subscription


async def _next_message(subscription: Subscription) -> bytes:
    while True:
        message = await subscription.next(timeout_s=5)
        if message is not None and message[0] == "message":
            return message[1]


async def test_appends_are_announced_to_the_other_live_followers_of_the_room(store: Store) -> None:
    room, other, writer = new_room(), f"n{new_room()}", f"n{new_room()}"
    subscription = await _listening(store, other)
    assert await store.bus.follow([room], other, 30) == [room]  # it did not follow the room before
    assert await store.bus.follow([room], other, 30) == []  # a heartbeat
    await store.bus.follow([room], writer, 30)  # the writer follows too, but is not told of its own appends
    ids = (await store.log.append_batch(entries(room, "1", "2"), KEEP_ALL, writer)).ids
    announcement = await asyncio.wait_for(_next_message(subscription), 10)
    assert announcement == f"{room} ".encode() + ids[1]  # type: ignore[operator]
    await subscription.close()
    await store.bus.unfollow([room], other)
    await store.bus.unfollow([room], writer)


async def test_heartbeats_forget_followers_whose_time_is_up(backend: Backend) -> None:
    room, dead, live = new_room(), f"n{new_room()}", f"n{new_room()}"
    await backend.store.bus.follow([room], live, 30)
    await backend.raw.zadd(followers_key(room), {dead: 1})  # alive until 1 ms after 1970
    await backend.store.bus.follow([room], live, 30)
    assert await backend.raw.zrange(followers_key(room), 0, -1) == [live.encode()]
    assert 25_000 < await backend.raw.pttl(followers_key(room)) <= 30_000  # gone when nobody beats
    await backend.store.bus.unfollow([room], live)


async def test_a_follower_forgotten_by_redis_is_told_so_at_its_next_heartbeat(backend: Backend) -> None:
    room, other, node = new_room(), new_room(), f"n{new_room()}"
    await backend.store.bus.follow([room, other], node, 30)
    await backend.raw.delete(followers_key(room))  # Redis restarted without its data, or the node stalled
    assert await backend.store.bus.follow([room, other], node, 30) == [room]
    await backend.store.bus.unfollow([room, other], node)
    assert await backend.raw.exists(followers_key(room), followers_key(other)) == 0


async def test_an_append_to_a_key_that_is_not_a_stream_fails_alone(backend: Backend) -> None:
    good, bad = new_room(), new_room()
    await backend.raw.set(stream_key(bad), "not a stream")
    result = await backend.store.log.append_batch(entries(good, "1") + entries(bad, "2") + entries(good, "3"),
                                                  KEEP_ALL, "n")
    assert isinstance(result.ids[0], bytes) and isinstance(result.ids[2], bytes)
    assert isinstance(result.ids[1], Exception)
    assert len(await backend.store.log.range(good)) == 2
    await backend.raw.delete(stream_key(bad))


async def test_revrange_reads_newest_first_from_an_exclusive_bound(store: Store) -> None:
    room = new_room()
    ids = (await store.log.append_batch(entries(room, "1", "2", "3", "4"), KEEP_ALL, "n")).ids
    newest = await store.log.revrange(room, count=2)
    assert [e[0] for e in newest] == [ids[3], ids[2]]
    before_last = await store.log.revrange(room, b"(" + ids[3], "-")  # type: ignore[operator]
    assert [e[0] for e in before_last] == [ids[2], ids[1], ids[0]]


async def test_delete_removes_a_stream_once(store: Store) -> None:
    room = new_room()
    await store.log.append_batch(entries(room, "1"), KEEP_ALL, "n")
    assert await store.log.exists(room)
    assert await store.log.delete(room)
    assert not await store.log.exists(room)
    assert not await store.log.delete(room)


async def test_a_cid_is_stored_once_per_sender_within_the_window(store: Store) -> None:
    room, window = new_room(), Retention(dedupe_s=60)
    first, resend, other_role = (NewEntry(room, role, f'{{"hd":{{}},"bd":{{"n":{n}}}}}'.encode(), "c1")
                                 for n, role in ((1, "A"), (2, "A"), (3, "B")))
    ids = (await store.log.append_batch([first, resend, other_role], window, "n")).ids
    assert isinstance(ids[0], bytes) and isinstance(ids[2], bytes)
    assert ids[1] == Duplicate(ids[0], first.body)  # the original's id and body
    again = (await store.log.append_batch([resend], window, "n")).ids
    assert again == [Duplicate(ids[0], first.body)]
    assert len(await store.log.range(room)) == 2


async def test_a_cid_is_remembered_within_the_streams_epoch_only(backend: Backend) -> None:
    """Exactly-once per room instance: a deleted, expired or lost stream forgets its cids."""
    store, room, window = backend.store, new_room(), Retention(dedupe_s=60)
    sent = NewEntry(room, "A", b'{"hd":{},"bd":{"n":1}}', "c1")
    [first] = (await store.log.append_batch([sent], window, "n")).ids
    assert await store.log.delete(room)  # DELETE /api/chat/history/{sid}
    [second] = (await store.log.append_batch([sent], window, "n")).ids  # stored anew, in the new epoch
    assert isinstance(first, bytes) and isinstance(second, bytes)  # (its id may equal the first's, in the same ms)
    assert [entry_id for entry_id, _ in await store.log.range(room)] == [second]
    assert (await store.log.append_batch([sent], window, "n")).ids == [Duplicate(second, sent.body)]
    await backend.raw.delete(stream_key(room))  # expired or lost, its epoch key left behind
    [third] = (await store.log.append_batch([sent], window, "n")).ids
    assert isinstance(third, bytes) and [entry_id for entry_id, _ in await store.log.range(room)] == [third]


async def test_a_cid_remembered_without_an_epoch_counts_while_the_stream_holds_its_entry(backend: Backend) -> None:
    """A dedupe key written before the window belonged to epochs holds the bare id."""
    store, room, window = backend.store, new_room(), Retention(dedupe_s=60)
    sent = NewEntry(room, "A", b'{"hd":{},"bd":{"n":1}}', "c1")
    [first] = (await store.log.append_batch(entries(room, "0"), window, "n")).ids
    assert isinstance(first, bytes)
    await backend.raw.set(dedupe_key(room, "A", "c1"), first, ex=60)
    assert (await store.log.append_batch([sent], window, "n")).ids == [Duplicate(first, entries(room, "0")[0].body)]
    await backend.raw.set(dedupe_key(room, "A", "c1"), b"1-0", ex=60)  # an entry the stream does not hold
    [stored] = (await store.log.append_batch([sent], window, "n")).ids
    assert isinstance(stored, bytes) and len(await store.log.range(room)) == 2


async def test_a_new_stream_gets_a_new_epoch(backend: Backend) -> None:
    store, room = backend.store, new_room()

    async def epoch() -> str | None:
        return (await store.roster.enter(room, "", "", 0)).epoch

    await store.log.append_batch(entries(room, "1"), Retention(ttl_s=60), "n")
    first = await epoch()
    await store.log.append_batch(entries(room, "2"), Retention(ttl_s=60), "n")
    assert first and await epoch() == first
    assert 0 < await backend.raw.ttl(epoch_key(room)) <= 60
    await store.log.delete(room)
    assert await epoch() is None
    await store.log.append_batch(entries(room, "3"), KEEP_ALL, "n")
    assert await epoch() not in (None, first)


async def test_a_room_keeps_its_instance_until_deleted_and_a_new_room_gets_a_new_one(backend: Backend) -> None:
    instances, room = backend.store.instances, new_room()
    assert await instances.current(room) is None  # never created
    first = await instances.open(room, 60)
    assert first and await instances.current(room) == first
    assert await instances.open(room, 600) == first  # asked again: the same instance, its expiry lengthened
    assert 60 < await backend.raw.ttl(room_instance_key(room)) <= 600
    assert await instances.open(room, 10) == first  # a shorter one never shortens it
    assert 60 < await backend.raw.ttl(room_instance_key(room)) <= 600
    assert await instances.delete(room) and not await instances.delete(room)
    assert await instances.current(room) is None
    again = await instances.open(room, 60)
    assert again not in (None, first)  # created again: a new instance
    assert await instances.current(new_room()) is None


async def test_entering_records_the_roster_and_drops_the_entries_of_dead_nodes(store: Store) -> None:
    room, live, dead = new_room(), f"n{new_room()}", f"n{new_room()}"
    await store.bus.follow([room], live, 30)
    ids = (await store.log.append_batch(entries(room, "1", "2"), KEEP_ALL, "n")).ids
    await store.roster.enter(room, f"{dead}/c0", "B", 0)
    info = await store.roster.enter(room, f"{live}/c1", "A", 0)
    assert info.roster == [(f"{live}/c1", "A")]
    assert (info.first_id, info.newest_id, info.removed) == (ids[0], ids[1], 0)
    await store.roster.leave(room, f"{live}/c1")
    assert (await store.roster.enter(room, "", "", 0)).roster == []
    await store.bus.unfollow([room], live)


async def test_entering_tells_the_newest_retained_entry_not_the_last_generated_id(backend: Backend) -> None:
    store, room = backend.store, new_room()
    assert (await store.roster.enter(room, "", "", 0)).newest_id is None
    ids = (await store.log.append_batch(entries(room, "1", "2", "3"), KEEP_ALL, "n")).ids
    await backend.raw.xdel(stream_key(room), ids[2])  # the newest entry is gone (lost)
    info = await store.roster.enter(room, "", "", 0)
    assert (info.first_id, info.newest_id) == (ids[0], ids[1])


async def test_entering_with_a_cursor_tells_whether_the_stream_still_holds_its_entry(backend: Backend) -> None:
    store, room = backend.store, new_room()
    assert (await store.roster.enter(room, "", "", 0, cursor=b"1-0")).cursor_kept is None  # no stream
    ids = (await store.log.append_batch(entries(room, "1", "2", "3"), KEEP_ALL, "n")).ids
    await backend.raw.xdel(stream_key(room), ids[1])  # lost (an older snapshot), the newer one stays
    for entry_id, kept in zip(ids, (True, False, True), strict=True):
        assert isinstance(entry_id, bytes)
        info = await store.roster.enter(room, "", "", 0, cursor=entry_id)
        assert info.cursor_kept is kept, entry_id
        assert (info.first_id, info.newest_id) == (ids[0], ids[2])
    assert (await store.roster.enter(room, "", "", 0)).cursor_kept is None  # no cursor: nothing asked


async def test_a_room_full_of_connections_refuses_one_more(store: Store) -> None:
    room, node = new_room(), f"n{new_room()}"
    await store.bus.follow([room], node, 30)
    assert not (await store.roster.enter(room, f"{node}/c1", "A", 0, most=1)).full
    refused = await store.roster.enter(room, f"{node}/c2", "B", 0, most=1)
    assert refused.full and refused.roster == [(f"{node}/c1", "A")]
    await store.bus.unfollow([room], node)


async def test_a_sweep_removes_each_dead_entry_once_and_restore_puts_entries_back(backend: Backend) -> None:
    store, room, live, dead = backend.store, new_room(), f"n{new_room()}", f"n{new_room()}"
    await store.bus.follow([room], live, 30)
    await store.bus.follow([room], dead, 30)
    await store.roster.enter(room, f"{live}/c1", "A", 0)
    await store.roster.enter(room, f"{dead}/c2", "B", 0)
    await backend.raw.zadd(followers_key(room), {dead: 1})  # its time is up
    assert await store.roster.sweep([room, new_room()]) == [(room, f"{dead}/c2", "B")]
    assert await store.roster.sweep([room]) == []
    await store.roster.restore([(room, f"{live}/c3", "B")], 60)
    assert sorted((await store.roster.enter(room, "", "", 0)).roster) == [(f"{live}/c1", "A"), (f"{live}/c3", "B")]
    await store.bus.unfollow([room, room], live)


async def test_unstored_frames_reach_the_other_live_followers(store: Store) -> None:
    room, other, sender = new_room(), f"n{new_room()}", f"n{new_room()}"
    subscription = await _listening(store, other)
    await store.bus.follow([room], other, 30)
    await store.bus.follow([room], sender, 30)
    await store.bus.publish({room: [b"0-0 {}", b"5-0 {\"x\":1}"], new_room(): [b"0-0 {}"]}, sender)
    assert await asyncio.wait_for(_next_message(subscription), 10) == f"{room} 0-0 {{}}".encode()
    assert await asyncio.wait_for(_next_message(subscription), 10) == f'{room} 5-0 {{"x":1}}'.encode()
    await subscription.close()
    await store.bus.unfollow([room], other)
    await store.bus.unfollow([room], sender)


async def test_a_store_reports_its_kind_and_answers_a_ping(store: Store) -> None:
    assert store.kind in ("redis", "embedded")
    await store.ping()


async def test_the_bulk_log_reads_the_same_streams(store: Store) -> None:
    room = new_room()
    ids = (await store.log.append_batch(entries(room, "1", "2", "3"), KEEP_ALL, "n")).ids
    assert await store.bulk_log.range(room) == await store.log.range(room)
    assert [e[0] for e in await store.bulk_log.revrange(room, "+", "-", count=2)] == ids[:0:-1]
    assert await store.bulk_log.last_id(room) == ids[2] and await store.bulk_log.exists(room)


async def test_bulk_reads_go_on_a_redis_connection_of_their_own_not_the_appends(redis_url: str) -> None:
    store = RedisStore.connect(redis_url, lean=True)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        known = {client["id"] for client in await raw.client_list()}
        room = new_room()
        await store.log.append_batch(entries(room, "1"), KEEP_ALL, "n")  # opens the appends' connection
        await store.bulk_log.range(room)  # opens the bulk reads' connection
        new = {client["id"]: client["cmd"] for client in await raw.client_list()
               if client["id"] not in known and client["cmd"] in ("evalsha", "xrange")}
        assert sorted(new.values()) == ["evalsha", "xrange"]
        await store.bulk_log.revrange(room)
        after = {client["id"]: client["cmd"] for client in await raw.client_list() if client["id"] in new}
        assert sorted(after.values()) == ["evalsha", "xrevrange"]  # the appends' connection ran no read
    finally:
        await raw.aclose()
        await store.close()


async def test_usage_admits_generations_up_to_the_limit_of_the_window_and_tells_when_one_leaves(store: Store) -> None:
    room, day = new_room(), 20000
    assert await store.usage.admit(room, "g-1", 60_000, 2, day, 0) == Admission()
    assert await store.usage.admit(room, "g-1", 60_000, 2, day, 0) == Admission()  # counted once
    assert await store.usage.admit(room, "g-2", 60_000, 2, day, 0) == Admission()
    refused = await store.usage.admit(room, "g-3", 60_000, 2, day, 0)
    assert refused.over == "generations" and 0 < refused.retry_after_ms <= 60_000
    assert await store.usage.admit(new_room(), "g-3", 60_000, 2, day, 0) == Admission()  # each room its own
    assert await store.usage.room_usage(room, 60_000, day) == (2, 0)
    assert await store.usage.admit(room, "g-4", 60_000, 0, day, 0) == Admission()  # 0: no limit


async def test_usage_forgets_generations_older_than_the_window(store: Store) -> None:
    room = new_room()
    assert await store.usage.admit(room, "g-1", 50, 1, 1, 0) == Admission()
    deadline = asyncio.get_running_loop().time() + 5
    while (await store.usage.admit(room, "g-2", 50, 1, 1, 0)).over:  # until g-1 is 50 ms old (Redis's clock)
        assert asyncio.get_running_loop().time() < deadline
    assert await store.usage.room_usage(room, 50, 1) in ((1, 0), (0, 0))


async def test_usage_counts_tokens_per_room_and_day_and_for_the_deployment(backend: Backend) -> None:
    store, room, other, day = backend.store, new_room(), new_room(), 30000 + int(new_room().rsplit("-", 1)[-1])
    await store.usage.add_tokens(room, day, 40)
    await store.usage.add_tokens(other, day, 2)
    await store.usage.add_tokens(room, day + 1, 5)
    assert (await store.usage.room_usage(room, 60_000, day))[1] == 40
    assert await store.usage.tokens(day) == 42 and await store.usage.tokens(day + 1) == 5
    assert await store.usage.admit(room, "g-1", 60_000, 0, day, 40) == Admission("tokens")
    assert await store.usage.admit(room, "g-1", 60_000, 0, day, 41) == Admission()
    assert 0 < await backend.raw.ttl(llm_room_tokens_key(room, day)) <= 2 * 86400
    assert 0 < await backend.raw.ttl(llm_tokens_key(day)) <= 2 * 86400


async def test_the_locks_find_a_stored_answer_by_its_marker_in_the_streams_epoch(store: Store) -> None:
    room = new_room()
    assert await store.locks.answer(room, "g-1") is None
    [question] = (await store.log.append_batch(entries(room, "q"), KEEP_ALL, "n")).ids
    answer = NewEntry(room, "llm", b'{"hd":{"event":"llm.response","rid":"g-1"},"bd":{}}', "g-1")
    [answer_id] = (await store.log.append_batch([answer], Retention(dedupe_s=60), "n")).ids
    assert isinstance(question, bytes) and isinstance(answer_id, bytes)
    assert await store.locks.answer(room, "g-1") == answer_id
    assert await store.locks.answer(room, "g-2") is None
    await store.log.delete(room)  # a new epoch: the old marker does not count
    await store.log.append_batch(entries(room, "again"), KEEP_ALL, "n")
    assert await store.locks.answer(room, "g-1") is None


async def test_turns_wait_in_order_and_the_head_starts_once_the_room_is_free(store: Store) -> None:
    room = new_room()
    turns = store.locks.turns()
    await turns.subscribe()
    try:
        first, second, third, fourth = (Request(room, f"g-{n}", f"{n}-0", "A" if n % 2 else "B") for n in range(1, 5))
        taken = await store.locks.take_turn(first, 60_000, "queue", 2, 60_000)
        assert taken.fence is not None and taken.position == 0
        positions = [(await store.locks.take_turn(r, 60_000, "queue", 2, 60_000)).position for r in (second, third)]
        assert positions == [1, 2]
        assert await store.locks.take_turn(fourth, 60_000, "queue", 2, 60_000) == Turn()  # busy: two wait
        assert (await store.locks.take_turn(second, 60_000, "queue", 2, 60_000)).position == 1  # asked again
        info = await store.roster.enter(room, "", "A", 0)
        assert info.queued == (Queued("g-2", "2-0"), Queued("g-3", "3-0"))
        assert (await store.locks.start(room, "g-3", 60_000)).waits
        assert await store.locks.cancel(room, "g-3", "B", asker_only=True) == (Cancel.NOT_ASKER, "")
        assert await store.locks.cancel(room, "g-3", "A") == (Cancel.DEQUEUED, "3-0")
        assert (await store.locks.start(room, "g-3", 60_000)).answered  # dropped: only acknowledged
        assert await store.locks.release(taken.fence)
        while (event := await turns.next(5.0)) is not None and event[0] != "message":
            pass
        assert event == ("message", room.encode())  # the room's turn passed: the workers are told
        started = await store.locks.start(room, "g-2", 60_000)
        assert started.fence is not None and not started.waits
        assert (await store.roster.enter(room, "", "A", 0)).queued == ()
    finally:
        await turns.close()


async def test_an_interrupt_drops_the_waiting_questions_and_names_the_running_one(store: Store) -> None:
    room = new_room()
    running, waiting, newer = (Request(room, f"g-{n}", f"{n}-0", "A") for n in range(1, 4))
    assert (await store.locks.take_turn(running, 60_000, "queue", 5, 60_000)).fence is not None
    assert (await store.locks.take_turn(waiting, 60_000, "queue", 5, 60_000)).position == 1
    turn = await store.locks.take_turn(newer, 60_000, "interrupt", 5, 60_000)
    assert (turn.fence, turn.position, turn.interrupted, turn.dropped) == (None, 1, "g-1", (Queued("g-2", "2-0"),))
    assert await store.locks.withdraw(room, "g-3")
    assert (await store.roster.enter(room, "", "A", 0)).queued == ()
    assert not await store.locks.withdraw(room, "g-3")


async def test_a_confirmed_turn_outlives_its_joining_lease_and_an_unconfirmed_one_lapses(store: Store) -> None:
    room, other = new_room(), new_room()
    held, waits = Request(room, "g-1", "1-0", "A"), Request(room, "g-2", "2-0", "B")
    fence = (await store.locks.take_turn(held, 1000, "queue", 5, 1000)).fence
    assert fence is not None and (await store.locks.take_turn(waits, 1000, "queue", 5, 1000)).position == 1
    assert (await store.locks.take_turn(Request(other, "g-3", "3-0", "A"), 1000, "queue", 5, 1000)).fence is not None
    assert await store.locks.confirm(room, "g-1", fence, 60_000)
    assert await store.locks.confirm(room, "g-2", None, 60_000)
    assert not await store.locks.confirm(room, "g-1", Fence(room, "g-1", fence.token + 1), 60_000)
    assert not await store.locks.confirm(room, "g-9", None, 60_000)  # neither holds nor waits
    deadline = time.monotonic() + 10
    while (await store.locks.take_turn(Request(other, "g-4", "4-0", "B"), 60_000, "queue", 5, 60_000)).fence is None:
        assert time.monotonic() < deadline, "an unconfirmed turn held its room past its joining lease"
        await store.locks.withdraw(other, "g-4")
        await asyncio.sleep(0.05)
    assert (await store.locks.start(room, "g-2", 60_000)).waits  # g-1 still holds the room, g-2 still waits
    assert (await store.roster.enter(room, "", "A", 0)).queued == (Queued("g-2", "2-0"),)


async def test_a_lock_taken_before_its_question_was_stored_is_handed_to_the_stored_question(store: Store) -> None:
    room = new_room()
    fence = await store.locks.lock(room, "g-tmp", 60_000, "A")
    assert fence is not None
    turn = await store.locks.rename(fence, "g-stored", "A")
    assert turn.fence == Fence(room, "g-stored", fence.token)
    assert await store.locks.rename(fence, "g-other", "A") == Turn()  # the old fence no longer holds the lock
    assert await store.locks.lock(room, "g-else", 60_000) is None  # the room is still taken
    assert await store.locks.release(turn.fence)
    again = await store.locks.lock(room, "g-resend", 60_000, "A")
    assert again is not None and await store.locks.rename(again, "g-stored", "A", once=True) == Turn(asked=True)
    assert (await store.locks.take_turn(Request(room, "g-stored", "1-0", "A"), 60_000, "queue", 5, 60_000,
                                        once=True)).asked
