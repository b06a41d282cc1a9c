"""The bot's ports (generation locks, request queue) on a real Redis and on the embedded store."""

from __future__ import annotations

import asyncio

from protocol.names import LLM_ROLE
from server.store.keys import dedupe_key, llm_lock_key, llm_requests_key
from server.store.ports import GENERATION_LOCK_TTL_MS, NewEntry, Request, Retention, Store
from tests.conftest import RUN, Backend, new_room


def request(room: str, rid: str) -> Request:
    return Request(room=room, rid=rid, reply_to="1-0", asker="A")


async def test_one_generation_per_room_owned_by_its_rid(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    assert await locks.lock(room, "g-1") is True
    assert await locks.lock(room, "g-2") is False  # busy
    assert await locks.lock(room, "g-1") is True  # the owner keeps it
    assert await locks.release(room, "g-2") is False  # only the owner releases
    await backend.raw.pexpire(llm_lock_key(room), 500)
    await locks.renew([(room, "g-1"), (room, "g-2")])
    assert 500 < await backend.raw.pttl(llm_lock_key(room)) <= GENERATION_LOCK_TTL_MS  # renewed for its owner
    assert await locks.cancel(room, "g-2") is False  # not running
    assert await locks.cancel(room, "g-1") is True
    assert await locks.start(room, "g-1") == (False, True)
    assert await locks.release(room, "g-1") is True
    assert await locks.lock(room, "g-2") is True  # free again
    await locks.release(room, "g-2")


async def test_start_tells_an_answered_request_and_retakes_a_lost_lock(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    assert await locks.start(room, "g-9") == (False, False)
    assert await backend.raw.get(llm_lock_key(room)) == b"g-9"  # taken again: it had expired
    await backend.raw.set(dedupe_key(room, LLM_ROLE, "g-9"), "5-0")  # its llm.response is stored
    assert await locks.start(room, "g-9") == (True, False)
    await locks.release(room, "g-9")


async def test_an_answer_stored_in_an_earlier_epoch_of_the_room_still_counts(backend: Backend) -> None:
    """A rid is one question: deleting the room does not make its stored answer "unanswered"."""
    store, room = backend.store, new_room()
    answer = NewEntry(room, LLM_ROLE, b'{"hd":{},"bd":{}}', "g-7", 60)
    [stored] = (await store.log.append_batch([answer], Retention(), "n")).ids
    assert isinstance(stored, bytes)
    assert await store.locks.start(room, "g-7") == (True, False)
    assert await store.log.delete(room)
    assert await store.locks.start(room, "g-7") == (True, False)
    assert await backend.raw.get(llm_lock_key(room)) is None  # answered: the lock is not taken


async def test_a_cancel_reaches_every_subscribed_worker(store: Store) -> None:
    room, heard = new_room(), store.locks.cancellations()
    await heard.subscribe()
    while (message := await heard.next(timeout_s=5)) is None or message[0] != "subscribe":
        pass
    await store.locks.lock(room, "g-5")
    assert await store.locks.cancel(room, "g-5")
    while (message := await heard.next(timeout_s=5)) is None or message[0] != "message":
        pass
    assert message[1] == b"g-5"
    await heard.close()
    await store.locks.release(room, "g-5")


async def test_requests_are_read_once_and_acknowledged(backend: Backend) -> None:
    queue = f"t{RUN}-jobs-{new_room()}"
    requests, room = backend.store.requests(queue), new_room()
    await requests.ensure_group()
    await requests.ensure_group()  # again: no error
    await requests.add(request(room, "g-1"))
    [got] = await requests.read("w1", 10, 100)
    assert (got.room, got.rid, got.reply_to, got.asker, got.attempt) == (room, "g-1", "1-0", "A", 1)
    assert await requests.read("w2", 10, 100) == []  # a request goes to one worker
    assert await requests.reclaim("w2", 60_000, 10) == []  # not idle long enough: its worker is alive
    [again] = await requests.reclaim("w2", 0, 10)
    assert (again.rid, again.attempt) == ("g-1", 2)  # taken over: the second delivery
    await requests.ack([again.entry_id])
    assert await requests.reclaim("w3", 0, 10) == []
    await requests.forget_consumer("w1")
    await backend.raw.delete(llm_requests_key(queue))


async def test_a_reader_waits_for_the_next_request(backend: Backend) -> None:
    """Workers block on the queue (the embedded store's XREADGROUP answers at once: it must not spin)."""
    queue = f"t{RUN}-jobs-{new_room()}"
    requests, room = backend.store.requests(queue), new_room()
    await requests.ensure_group()
    reader = asyncio.create_task(requests.read("w1", 10, 10_000))
    for _ in range(20):
        await asyncio.sleep(0)  # let the reader reach its wait
    assert not reader.done()
    await backend.store.requests(queue).add(request(room, "g-1"))  # the same queue, by name
    [got] = await asyncio.wait_for(reader, 10)
    assert got.rid == "g-1"
    await backend.raw.delete(llm_requests_key(queue))
