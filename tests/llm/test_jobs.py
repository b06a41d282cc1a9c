"""The bot's Redis steps (queue, room lock, cancel), on a real Redis and on the embedded store."""

from __future__ import annotations

import asyncio

from server.llm.jobs import LOCK_PREFIX, LOCK_TTL_MS, Jobs, Request
from server.store import StreamStore
from tests.conftest import RUN, new_room


def request(room: str, rid: str) -> Request:
    return Request(room=room, rid=rid, reply_to="1-0", asker="A")


async def test_one_generation_per_room_owned_by_its_rid(store: StreamStore) -> None:
    jobs, room = Jobs(store, f"t{RUN}-jobs"), new_room()
    assert await jobs.request(request(room, "g-1")) is True
    assert await jobs.request(request(room, "g-2")) is False  # busy: nothing queued for g-2
    assert await jobs.lock(room, "g-2") is False
    assert await jobs.lock(room, "g-1") is True  # the owner keeps it
    assert await jobs.release(room, "g-2") is False  # only the owner releases
    await store.redis.pexpire(LOCK_PREFIX + room, 500)
    await jobs.renew([(room, "g-1"), (room, "g-2")])
    assert 500 < await store.redis.pttl(LOCK_PREFIX + room) <= LOCK_TTL_MS  # renewed for its owner
    assert await jobs.cancel(room, "g-2") is False  # not running
    assert await jobs.cancel(room, "g-1") is True
    assert await jobs.start(request(room, "g-1"), f"chat:cid:{room}:llm:g-1") == (False, True)
    assert await jobs.release(room, "g-1") is True
    assert await jobs.lock(room, "g-2") is True  # free again


async def test_start_tells_an_answered_request_and_retakes_a_lost_lock(store: StreamStore) -> None:
    jobs, room = Jobs(store, f"t{RUN}-jobs"), new_room()
    answer_key = f"chat:cid:{room}:llm:g-9"
    assert await jobs.start(request(room, "g-9"), answer_key) == (False, False)
    assert await store.redis.get(LOCK_PREFIX + room) == b"g-9"  # taken again: it had expired
    await store.redis.set(answer_key, "5-0")
    assert await jobs.start(request(room, "g-9"), answer_key) == (True, False)
    await jobs.release(room, "g-9")


async def test_requests_are_read_once_and_acknowledged(store: StreamStore) -> None:
    queue = f"t{RUN}-jobs-{new_room()}"
    jobs, room = Jobs(store, queue), new_room()
    await jobs.ensure_group()
    await jobs.ensure_group()  # again: no error
    assert await jobs.request(request(room, "g-1"))
    [got] = await jobs.read("w1", 10, 100)
    assert (got.room, got.rid, got.reply_to, got.asker, got.attempt) == (room, "g-1", "1-0", "A", 1)
    assert await jobs.read("w2", 10, 100) == []  # a request goes to one worker
    assert await jobs.reclaim("w2", 60_000, 10) == []  # not idle long enough: its worker is alive
    [again] = await jobs.reclaim("w2", 0, 10)
    assert (again.rid, again.attempt) == ("g-1", 2)  # taken over: the second delivery
    await jobs.ack([again.entry_id])
    assert await jobs.reclaim("w3", 0, 10) == []
    await jobs.forget_consumer("w1")
    await store.redis.delete(f"chat:llm:requests:{queue}", LOCK_PREFIX + room)


async def test_a_reader_waits_for_the_next_request(store: StreamStore) -> None:
    """Workers block on the queue (the embedded store's XREADGROUP answers at once: it must not spin)."""
    queue = f"t{RUN}-jobs-{new_room()}"
    jobs, room = Jobs(store, queue), new_room()
    await jobs.ensure_group()
    reader = asyncio.create_task(jobs.read("w1", 10, 10_000))
    for _ in range(20):
        await asyncio.sleep(0)  # let the reader reach its wait
    assert not reader.done()
    assert await jobs.request(request(room, "g-1"))
    [got] = await asyncio.wait_for(reader, 10)
    assert got.rid == "g-1"
    await store.redis.delete(f"chat:llm:requests:{queue}", LOCK_PREFIX + room)
