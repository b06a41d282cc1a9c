"""The bot's ports (generation locks, request queue) on a real Redis and on the embedded store."""

from __future__ import annotations

import asyncio

from protocol.names import LLM_ROLE
from server.store.keys import (
    dedupe_key,
    llm_asker_key,
    llm_lock_key,
    llm_partial_key,
    llm_partial_text_key,
    llm_requests_key,
)
from server.store.ports import (
    ENDED_TTL_S,
    PARTIAL_MAX_BYTES,
    Cancel,
    Fence,
    Fenced,
    NewEntry,
    Progress,
    Request,
    Retention,
    Running,
    Started,
    Store,
)
from tests.conftest import RUN, Backend, new_room

LEASE_MS = 60_000


def request(room: str, rid: str) -> Request:
    return Request(room=room, rid=rid, reply_to="1-0", asker="A")


async def test_one_generation_per_room_fenced_by_a_growing_token(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    first = await locks.lock(room, "g-1", LEASE_MS)
    assert first == Fence(room, "g-1", 1)
    assert await locks.lock(room, "g-2", LEASE_MS) is None  # busy
    assert await locks.release(Fence(room, "g-2", 1)) is False  # only the holder releases
    assert await locks.release(Fence(room, "g-1", 7)) is False  # ...with its own token
    await backend.raw.pexpire(llm_lock_key(room), 500)
    assert await locks.renew([first, Fence(room, "g-2", 2)], LEASE_MS) == [True, False]
    assert 500 < await backend.raw.pttl(llm_lock_key(room)) <= LEASE_MS  # renewed for its holder
    assert (await locks.cancel(room, "g-2", "A"))[0] is Cancel.NOT_RUNNING
    assert (await locks.cancel(room, "g-1", "B"))[0] is Cancel.CANCELLED
    started = await locks.start(room, "g-1", LEASE_MS)  # the worker takes it over: a new token
    assert started == Started(False, True, Fence(room, "g-1", 2), "B")
    assert await locks.renew([first], LEASE_MS) == [False]  # the front's token is stale now
    assert started.fence is not None and await locks.release(started.fence) is True
    second = await locks.lock(room, "g-2", LEASE_MS)  # free again
    assert second == Fence(room, "g-2", 3)
    await locks.release(second)


async def test_the_lock_records_who_asked_and_with_asker_only_only_they_may_cancel(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    fence = await locks.lock(room, "g-1", LEASE_MS, "A")
    assert await backend.raw.get(llm_asker_key(room, "g-1")) == b"A"
    assert 0 < await backend.raw.ttl(llm_asker_key(room, "g-1")) <= ENDED_TTL_S
    assert (await locks.cancel(room, "g-1", "B", asker_only=True))[0] is Cancel.NOT_ASKER
    assert await locks.start(room, "g-1", LEASE_MS) == Started(False, False, Fence(room, "g-1", 2))  # not cancelled
    assert (await locks.cancel(room, "g-1", "A", asker_only=True))[0] is Cancel.CANCELLED
    assert (await locks.start(room, "g-1", LEASE_MS)).cancelled_by == "A"
    assert (await locks.cancel(room, "g-2", "A", asker_only=True))[0] is Cancel.NOT_RUNNING
    assert fence is not None and await locks.release(Fence(room, "g-1", 3))


async def test_any_role_may_cancel_without_asker_only_or_when_who_asked_is_unknown(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    await locks.lock(room, "g-1", LEASE_MS, "A")
    assert (await locks.cancel(room, "g-1", "B"))[0] is Cancel.CANCELLED
    assert (await locks.start(room, "g-1", LEASE_MS)).cancelled_by == "B"
    assert await locks.release(Fence(room, "g-1", 2))
    await locks.lock(room, "g-2", LEASE_MS)  # no asker recorded
    assert await backend.raw.exists(llm_asker_key(room, "g-2")) == 0
    assert (await locks.cancel(room, "g-2", "B", asker_only=True))[0] is Cancel.CANCELLED
    assert await locks.release(Fence(room, "g-2", 3))


async def test_start_tells_an_answered_request_and_retakes_a_lost_lock(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    started = await locks.start(room, "g-9", LEASE_MS)
    assert started == Started(False, False, Fence(room, "g-9", 1))
    assert await backend.raw.get(llm_lock_key(room)) == b"1 g-9"  # taken again: it had expired
    await backend.raw.set(dedupe_key(room, LLM_ROLE, "g-9"), "5-0")  # its llm.response is stored
    assert await locks.start(room, "g-9", LEASE_MS) == Started(True, False, None)
    assert await locks.release(Fence(room, "g-9", 1))


async def test_start_of_a_question_whose_room_another_holds_takes_nothing(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    other = await locks.lock(room, "g-other", LEASE_MS)
    assert await locks.start(room, "g-late", LEASE_MS) == Started(False, False, None)
    assert await backend.raw.get(llm_lock_key(room)) == b"1 g-other"
    assert other is not None and await locks.release(other)


async def test_frames_are_sent_only_while_the_fence_holds(store: Store) -> None:
    room, node = new_room(), f"t{RUN}-n-{new_room()}"
    await store.bus.follow([room], node, 60)
    subscription = store.bus.subscription(node)
    await subscription.subscribe()
    while (message := await subscription.next(timeout_s=5)) is None or message[0] != "subscribe":
        pass
    fence = await store.locks.lock(room, "g-1", LEASE_MS)
    assert fence is not None
    assert await store.locks.frames(fence, [b"1-0 a", b"1-0 b"], "") is True
    taken = (await store.locks.start(room, "g-1", LEASE_MS)).fence  # another worker took it over
    assert taken is not None
    assert await store.locks.frames(fence, [b"1-0 stale"], "") is False
    assert await store.locks.frames(taken, [b"1-0 c"], node) is True  # (not to the sender itself)
    assert await store.locks.frames(taken, [b"1-0 d"], "") is True
    heard = []
    while (message := await subscription.next(timeout_s=0.5)) is not None:
        heard.append(message[1])
    assert heard == [f"{room} 1-0 a".encode(), f"{room} 1-0 b".encode(), f"{room} 1-0 d".encode()]
    await subscription.close()
    await store.locks.release(taken)


async def test_a_fenced_answer_is_stored_only_while_its_fence_holds_and_releases_the_lock(store: Store) -> None:
    room = new_room()
    front = await store.locks.lock(room, "g-1", LEASE_MS)
    fence = (await store.locks.start(room, "g-1", LEASE_MS)).fence
    assert front is not None and fence is not None
    answer = NewEntry(room, LLM_ROLE, b"{}", "g-1", 60, front)
    result = await store.log.append_batch([answer], Retention(), "")
    assert isinstance(result.ids[0], Fenced) and await store.log.range(room) == []
    stored = await store.log.append_batch([NewEntry(room, LLM_ROLE, b"{}", "g-1", 60, fence)], Retention(), "")
    assert isinstance(stored.ids[0], bytes)
    assert await store.locks.lock(room, "g-2", LEASE_MS) is not None  # released in the same step
    again = await store.log.append_batch([NewEntry(room, LLM_ROLE, b"{}", "g-1", 60, fence)], Retention(), "")
    assert getattr(again.ids[0], "id", None) == stored.ids[0]  # a retry after a lost reply: the same entry
    assert len(await store.log.range(room)) == 1


async def test_an_answer_stored_in_an_earlier_epoch_of_the_room_still_counts(backend: Backend) -> None:
    """A rid is one question: deleting the room does not make its stored answer "unanswered"."""
    store, room = backend.store, new_room()
    answer = NewEntry(room, LLM_ROLE, b'{"hd":{},"bd":{}}', "g-7", 60)
    [stored] = (await store.log.append_batch([answer], Retention(), "n")).ids
    assert isinstance(stored, bytes)
    assert await store.locks.start(room, "g-7", LEASE_MS) == Started(True, False, None)
    assert await store.log.delete(room)
    assert await store.locks.start(room, "g-7", LEASE_MS) == Started(True, False, None)
    assert await backend.raw.get(llm_lock_key(room)) is None  # answered: the lock is not taken


async def test_a_cancel_reaches_every_subscribed_worker(store: Store) -> None:
    room, heard = new_room(), store.locks.cancellations()
    await heard.subscribe()
    while (message := await heard.next(timeout_s=5)) is None or message[0] != "subscribe":
        pass
    fence = await store.locks.lock(room, "g-5", LEASE_MS)
    assert (await store.locks.cancel(room, "g-5", "B"))[0] is Cancel.CANCELLED
    while (message := await heard.next(timeout_s=5)) is None or message[0] != "message":
        pass
    assert message[1] == b"g-5 B"  # the rid, and the role that cancelled it
    await heard.close()
    assert fence is not None
    await store.locks.release(fence)


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


# -- the running generation's text so far (llm.snapshot) ----------------------------------------------

async def running(store: Store, room: str) -> tuple[Running, ...]:
    """What a connection entering ``room`` reads of its running generation (in the roster step)."""
    return (await store.roster.enter(room, "", "A", 60)).generations


async def test_the_text_so_far_is_written_in_the_step_that_sends_the_deltas(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    assert await running(backend.store, room) == ()
    fence = (await locks.start(room, "g-1", LEASE_MS)).fence
    assert fence is not None
    assert await running(backend.store, room) == ()  # nothing streamed yet: not listed
    assert await locks.frames(fence, [b"1-0 f0", b"1-0 f1"], "", Progress("1-0", 1, 1, "ab")) is True
    assert await locks.frames(fence, [b"1-0 f2"], "", Progress("1-0", 1, 2, "c")) is True
    assert await running(backend.store, room) == (Running("g-1", "1-0", 1, 2, "abc"),)
    for key in (llm_partial_key(room), llm_partial_text_key(room)):  # expires with the lock's lease...
        assert 0 < await backend.raw.pttl(key) <= LEASE_MS
        await backend.raw.pexpire(key, 500)
    assert await locks.renew([fence], LEASE_MS) == [True]
    for key in (llm_partial_key(room), llm_partial_text_key(room)):  # ...and is renewed with it
        assert 500 < await backend.raw.pttl(key) <= LEASE_MS
    assert await locks.frames(Fence(room, "g-1", 99), [b"1-0 x"], "", Progress("1-0", 1, 3, "x")) is False
    assert await running(backend.store, room) == (Running("g-1", "1-0", 1, 2, "abc"),)  # a stale token wrote nothing


async def test_a_takeover_starts_the_text_afresh_and_a_stale_text_is_never_read(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    first = (await locks.start(room, "g-1", LEASE_MS)).fence
    assert first is not None and await locks.frames(first, [b"1-0 a"], "", Progress("1-0", 1, 0, "old"))
    second = (await locks.start(room, "g-1", LEASE_MS)).fence  # another worker took it over
    assert second is not None
    assert await running(backend.store, room) == ()  # the text was written under the first token
    assert await locks.frames(second, [b"1-0 b"], "", Progress("1-0", 2, 0, "new"))
    assert await running(backend.store, room) == (Running("g-1", "1-0", 2, 0, "new"),)
    assert await locks.release(second)
    assert await running(backend.store, room) == ()  # no lock: nothing is running


async def test_a_text_past_its_cap_is_not_kept_but_the_generation_is_listed(backend: Backend) -> None:
    locks, room = backend.store.locks, new_room()
    fence = (await locks.start(room, "g-1", LEASE_MS)).fence
    assert fence is not None
    assert await locks.frames(fence, [b"1-0 a"], "", Progress("1-0", 1, 0, "x" * PARTIAL_MAX_BYTES))
    assert await running(backend.store, room) == (Running("g-1", "1-0", 1, 0, "x" * PARTIAL_MAX_BYTES),)
    assert await locks.frames(fence, [b"1-0 b"], "", Progress("1-0", 1, 1, "y"))
    assert await running(backend.store, room) == (Running("g-1", "1-0", 1, 1, None),)
    assert await backend.raw.exists(llm_partial_text_key(room)) == 0  # bounded in Redis too
    assert await locks.frames(fence, [b"1-0 c"], "", Progress("1-0", 1, 2, "z"))
    assert await running(backend.store, room) == (Running("g-1", "1-0", 1, 2, None),)


async def test_the_text_so_far_goes_with_the_stored_answer_or_llm_error(backend: Backend) -> None:
    store, room = backend.store, new_room()
    fence = (await store.locks.start(room, "g-1", LEASE_MS)).fence
    assert fence is not None and await store.locks.frames(fence, [b"1-0 a"], "", Progress("1-0", 1, 0, "a"))
    answer = NewEntry(room, LLM_ROLE, b'{"hd":{},"bd":{}}', "g-1", 60, fence)
    assert isinstance((await store.log.append_batch([answer], Retention(), "")).ids[0], bytes)
    assert await backend.raw.exists(llm_partial_key(room), llm_partial_text_key(room)) == 0
    other = (await store.locks.start(room, "g-2", LEASE_MS)).fence
    assert other is not None and await store.locks.frames(other, [b"1-0 a"], "", Progress("1-0", 1, 0, "a"))
    error = NewEntry(room, LLM_ROLE, b'{"hd":{},"bd":{}}', "g-2", 60, other)  # its llm.error, stored the same way
    assert isinstance((await store.log.append_batch([error], Retention(), "")).ids[0], bytes)
    assert await backend.raw.exists(llm_partial_key(room), llm_partial_text_key(room)) == 0
    assert await running(store, room) == ()
