"""One contract, two adapters: the stream store on a real Redis and on the embedded fakeredis."""

from __future__ import annotations

import asyncio

from protocol import stream_key
from server.resp import LeanSubscriber
from server.store import Duplicate, NewEntry, StreamStore, Subscriber
from tests.conftest import new_room


def entries(room: str, *texts: str) -> list[NewEntry]:
    return [NewEntry(stream_key(room), "A", f'{{"hd":{{}},"bd":{{"text":"{t}"}}}}'.encode()) for t in texts]


def tup(entry_id: bytes) -> tuple[int, int]:
    ms, seq = entry_id.split(b"-")
    return int(ms), int(seq)


async def test_a_batch_is_appended_in_order_and_reports_the_previous_newest_id(store: StreamStore) -> None:
    room1, room2 = new_room(), new_room()
    first = await store.append_batch(entries(room1, "1", "2") + entries(room2, "x") + entries(room1, "3"),
                                     maxlen=0, ttl_s=0, node="n1")
    assert first.before == {stream_key(room1): b"0-0", stream_key(room2): b"0-0"}
    ids = first.ids
    assert all(isinstance(i, bytes) for i in ids)
    stored = await store.range(stream_key(room1))
    assert [e[0] for e in stored] == [ids[0], ids[1], ids[3]]
    assert [e[1][b"participant"] for e in stored] == [b"A"] * 3
    assert tup(ids[0]) < tup(ids[1]) < tup(ids[3])  # type: ignore[arg-type]
    second = await store.append_batch(entries(room1, "4"), maxlen=0, ttl_s=0, node="n1")
    assert second.before == {stream_key(room1): ids[3]}


async def test_range_reads_after_an_exclusive_cursor(store: StreamStore) -> None:
    room = new_room()
    ids = (await store.append_batch(entries(room, "1", "2", "3"), maxlen=0, ttl_s=0, node="n")).ids
    after_first = await store.range(stream_key(room), b"(" + ids[0], "+")  # type: ignore[operator]
    assert [e[0] for e in after_first] == ids[1:]
    assert await store.last_id(stream_key(room)) == ids[2]
    assert await store.last_id(stream_key(new_room())) == b"0-0"


async def test_appends_trim_approximately_and_renew_the_expiry(store: StreamStore, redis_url: str) -> None:
    room = new_room()
    for _ in range(10):
        await store.append_batch(entries(room, *map(str, range(100))), maxlen=50, ttl_s=600, node="n")
    kept = await store.range(stream_key(room))
    assert 50 <= len(kept) < 1000
    client = store._client
    assert 0 < await client.ttl(stream_key(room)) <= 600


async def _listening(store: StreamStore, node: str) -> Subscriber | LeanSubscriber:
    subscriber = store.subscriber(node)
    await subscriber.subscribe()
    while (message := await subscriber.next(timeout_s=5)) is None or message[0] != "subscribe":
        pass
    return subscriber


async def _next_announcement(subscriber: Subscriber | LeanSubscriber) -> bytes:
    while True:
        message = await subscriber.next(timeout_s=5)
        if message is not None and message[0] == "message":
            return message[1]


async def test_appends_are_announced_to_the_other_live_nodes_of_the_room(store: StreamStore) -> None:
    room, other, writer = new_room(), f"n{new_room()}", f"n{new_room()}"
    subscriber = await _listening(store, other)
    assert await store.heartbeat(other, 30) is True  # first beat: it was not alive
    assert await store.heartbeat(other, 30) is False
    await store.register([room], other)
    await store.register([room], writer)  # the writer follows too, but is not told of its own appends
    ids = (await store.append_batch(entries(room, "1", "2"), maxlen=0, ttl_s=0, node=writer)).ids
    announcement = await asyncio.wait_for(_next_announcement(subscriber), 10)
    assert announcement == f"{room} ".encode() + ids[1]  # type: ignore[operator]
    await subscriber.close()
    await store.forget_node(other)


async def test_appends_forget_nodes_that_are_not_alive(store: StreamStore) -> None:
    room, dead = new_room(), f"n{new_room()}"
    await store.register([room], dead)
    await store.append_batch(entries(room, "1"), maxlen=0, ttl_s=0, node="writer")
    assert await store._client.smembers(f"chat:room-nodes:{room}") == set()


async def test_an_append_to_a_key_that_is_not_a_stream_fails_alone(store: StreamStore) -> None:
    good, bad = new_room(), new_room()
    await store._client.set(stream_key(bad), "not a stream")
    result = await store.append_batch(entries(good, "1") + entries(bad, "2") + entries(good, "3"),
                                      maxlen=0, ttl_s=0, node="n")
    assert isinstance(result.ids[0], bytes) and isinstance(result.ids[2], bytes)
    assert isinstance(result.ids[1], Exception)
    assert len(await store.range(stream_key(good))) == 2
    await store._client.delete(stream_key(bad))


async def test_revrange_reads_newest_first_from_an_exclusive_bound(store: StreamStore) -> None:
    room = new_room()
    ids = (await store.append_batch(entries(room, "1", "2", "3", "4"), maxlen=0, ttl_s=0, node="n")).ids
    newest = await store.revrange(stream_key(room), count=2)
    assert [e[0] for e in newest] == [ids[3], ids[2]]
    before_last = await store.revrange(stream_key(room), b"(" + ids[3], "-")  # type: ignore[operator]
    assert [e[0] for e in before_last] == [ids[2], ids[1], ids[0]]


async def test_delete_removes_a_stream_once(store: StreamStore) -> None:
    room = new_room()
    await store.append_batch(entries(room, "1"), maxlen=0, ttl_s=0, node="n")
    assert await store.exists(stream_key(room))
    assert await store.delete(stream_key(room))
    assert not await store.exists(stream_key(room))
    assert not await store.delete(stream_key(room))


async def test_a_cid_is_stored_once_per_sender_within_the_window(store: StreamStore) -> None:
    room = new_room()
    first, resend, other_role = (NewEntry(stream_key(room), role, f'{{"hd":{{}},"bd":{{"n":{n}}}}}'.encode(), "c1")
                                 for n, role in ((1, "A"), (2, "A"), (3, "B")))
    ids = (await store.append_batch([first, resend, other_role], maxlen=0, ttl_s=0, node="n", dedupe_s=60)).ids
    assert isinstance(ids[0], bytes) and isinstance(ids[2], bytes)
    assert ids[1] == Duplicate(ids[0], first.body)  # the original's id and body
    again = (await store.append_batch([resend], maxlen=0, ttl_s=0, node="n", dedupe_s=60)).ids
    assert again == [Duplicate(ids[0], first.body)]
    assert len(await store.range(stream_key(room))) == 2


async def test_a_new_stream_gets_a_new_epoch(store: StreamStore) -> None:
    room = new_room()
    await store.append_batch(entries(room, "1"), maxlen=0, ttl_s=60, node="n")
    epoch = await store.epoch(room)
    await store.append_batch(entries(room, "2"), maxlen=0, ttl_s=60, node="n")
    assert epoch and await store.epoch(room) == epoch
    assert 0 < await store._client.ttl(f"chat:epoch:{room}") <= 60
    await store.delete(stream_key(room))
    assert await store.epoch(room) is None
    await store.append_batch(entries(room, "3"), maxlen=0, ttl_s=0, node="n")
    assert await store.epoch(room) not in (None, epoch)


async def test_session_records_the_roster_and_drops_dead_nodes(store: StreamStore) -> None:
    room, live, dead = new_room(), f"n{new_room()}", f"n{new_room()}"
    await store.heartbeat(live, 30)
    ids = (await store.append_batch(entries(room, "1", "2"), maxlen=0, ttl_s=0, node="n")).ids
    await store.session(room, f"{dead}/c0", "B", 0)
    info = await store.session(room, f"{live}/c1", "A", 0)
    assert info.roster == [(f"{live}/c1", "A")]
    assert (info.epoch, info.first_id, info.removed) == (await store.epoch(room), ids[0], 0)
    await store.leave(room, f"{live}/c1")
    assert (await store.session(room, "", "", 0)).roster == []
    await store.forget_node(live)


async def test_unstored_frames_reach_the_other_live_nodes(store: StreamStore) -> None:
    room, other, sender = new_room(), f"n{new_room()}", f"n{new_room()}"
    subscriber = await _listening(store, other)
    await store.heartbeat(other, 30)
    await store.heartbeat(sender, 30)
    await store.register([room], other)
    await store.register([room], sender)
    await store.ephemeral({room: [b"0-0 {}", b"5-0 {\"x\":1}"]}, sender)
    assert await asyncio.wait_for(_next_announcement(subscriber), 10) == f"{room} 0-0 {{}}".encode()
    assert await asyncio.wait_for(_next_announcement(subscriber), 10) == f'{room} 5-0 {{"x":1}}'.encode()
    await subscriber.close()
    await store.forget_node(other)
    await store.forget_node(sender)
