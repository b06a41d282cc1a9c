"""Resume after a reconnect: ``last_id`` (and ``epoch``) give exactly what was missed, honestly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis
from websockets.exceptions import InvalidStatus

from protocol import format_ts
from server.store.keys import epoch_key, stream_key
from tests.support.client import Client
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange


def ids(frames: list[dict[str, Any]]) -> list[str]:
    return [f["hd"]["id"] for f in frames]


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def test_ready_tells_newest_id_epoch_and_members(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="A")) as a:
        assert a.ready["hd"]["sid"] == room
        assert a.ready["bd"]["last_id"] is None and a.ready["bd"]["epoch"] is None
        assert a.ready["bd"]["recovered"] is True
        assert a.ready["bd"]["members"] == [{"role": "A", "conn": a.ready["hd"]["conn"]}]
        await a.chat("first")
        first = await a.recv()
    async with await Client.open(server.ws(room)) as c:
        assert c.replayed == []
        assert c.ready["bd"]["last_id"] == first["hd"]["id"]
        kept = rdb.get(epoch_key(room))  # "<epoch> <newest id>"
        assert isinstance(kept, str) and c.ready["bd"]["epoch"] == kept.split()[0]


async def test_resume_replays_what_was_missed_then_live(server: ServerProcess, room: str) -> None:
    async with await Client.open(server.ws(room, role="A")) as a:
        for n in range(5):
            await a.chat(f"m{n}")
        seen = await a.recv_n(5)
    async with await Client.open(server.ws(room, role="A", last_id=seen[1]["hd"]["id"])) as again:
        assert [f["bd"]["text"] for f in again.replayed] == ["m2", "m3", "m4"]
        assert again.ready["bd"]["recovered"] is True
        assert again.ready["bd"]["last_id"] == seen[-1]["hd"]["id"]
        await again.chat("live")
        assert (await again.recv())["bd"]["text"] == "live"
    async with await Client.open(server.ws(room, last_id="0")) as everything:
        assert ids(everything.replayed) == [*ids(seen), everything.ready["bd"]["last_id"]]
        assert everything.ready["bd"]["recovered"] is True


async def test_resume_while_another_member_keeps_sending(server: ServerProcess, server2: ServerProcess, room: str,
                                                         rdb: redis.Redis) -> None:
    """The member drops and resumes on the other node while B sends: every entry once, in order."""
    total = 400
    async with await Client.open(server.ws(room, role="B")) as b, \
            await Client.open(server2.ws(room, role="A")) as a:
        async def send_all() -> None:
            for n in range(total):
                await b.chat(f"n{n}")
                if n % 20 == 0:
                    await asyncio.sleep(0)  # let the reconnect interleave with the sending

        sender = asyncio.create_task(send_all())
        before = await a.recv_n(50)
        await a.close()
        async with await Client.open(server2.ws(room, role="A", last_id=before[-1]["hd"]["id"])) as resumed:
            stored_before_ready = resumed.ready["bd"]["last_id"]
            after = resumed.replayed + await resumed.recv_n(total - 50 - len(resumed.replayed))
            await sender
        stream = [entry_id for entry_id, _ in xrange(rdb, stream_key(room))]
    assert len(stream) == total
    assert ids(before) + ids(after) == stream  # no gap, no duplicate, stream order
    assert [f["bd"]["text"] for f in before + after] == [f"n{n}" for n in range(total)]
    if resumed.replayed:  # the replay ends where session.ready says the room was
        assert resumed.replayed[-1]["hd"]["id"] == stored_before_ready


async def test_cursor_older_than_what_is_retained_is_not_recovered(start_server: Any, redis_url: str, room: str,
                                                                  rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url, STREAM_MAXLEN="10")
    async with await Client.open(node.ws(room, role="A")) as a:
        await a.chat("m0")
        first = await a.recv()
        for n in range(1, 400):  # approximate trimming removes whole nodes of ~100 entries
            await a.chat(f"m{n}")
        last = (await a.recv_n(399))[-1]
    assert xrange(rdb, stream_key(room), count=1)[0][0] != first["hd"]["id"]  # m0 was trimmed away
    async with await Client.open(node.ws(room, last_id=first["hd"]["id"])) as c:
        assert c.ready["bd"]["recovered"] is False
        assert ids(c.replayed) == [entry_id for entry_id, _ in xrange(rdb, stream_key(room))]
    async with await Client.open(node.ws(room, last_id=last["hd"]["id"])) as c:
        assert c.replayed == [] and c.ready["bd"]["recovered"] is True
    async with await Client.open(node.ws(room, last_id="0")) as c:
        assert c.ready["bd"]["recovered"] is False  # "everything" is no longer everything


async def test_deleted_and_recreated_room_is_a_new_epoch(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="A")) as a:
        await a.chat("old")
        old = await a.recv()
    async with await Client.open(server.ws(room)) as c:
        old_epoch = c.ready["bd"]["epoch"]
    assert old_epoch
    rdb.delete(stream_key(room), epoch_key(room))  # as the DELETE route, or a Redis that lost its data
    async with await Client.open(server.ws(room, role="B")) as b:
        await b.chat("new 1")
        await b.chat("new 2")
        new = await b.recv_n(2)
    async with await Client.open(server.ws(room, last_id=old["hd"]["id"], epoch=old_epoch)) as c:
        assert c.ready["bd"]["recovered"] is False
        assert c.ready["bd"]["epoch"] not in (None, old_epoch)
        assert ids(c.replayed) == ids(new)
    async with await Client.open(server.ws(room, last_id=new[0]["hd"]["id"], epoch=c.ready["bd"]["epoch"])) as c2:
        assert c2.ready["bd"]["recovered"] is True
        assert ids(c2.replayed) == ids(new[1:])


async def test_cursor_into_a_room_with_no_stream_is_not_recovered(server: ServerProcess, room: str) -> None:
    async with await Client.open(server.ws(room, last_id="1700000000000-0")) as c:
        assert c.replayed == [] and c.ready["bd"]["recovered"] is False
    async with await Client.open(server.ws(room, last_id="0")) as c:
        assert c.replayed == [] and c.ready["bd"]["recovered"] is True


async def test_bad_resume_parameters_are_refused_at_the_handshake(server: ServerProcess, room: str) -> None:
    import httpx

    for query in ("last_id=abc", "last_id=1-2-3", "last_id=1-0&epoch=bad%20epoch", "epoch=abc"):
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{server.http}/v1/session/chat?sid={room}&{query}",
                                      headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                               "Sec-WebSocket-Version": "13",
                                               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "invalid_resume"


async def open_once_redis_answers(url: str) -> Client:
    """Connect, polling while the node still answers 503 (its connections to a restarted Redis are
    opened again on their next command)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await Client.open(url)
        except InvalidStatus as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_a_cursor_whose_entry_redis_lost_is_not_recovered_before_or_after_new_messages(
        start_server: Callable[..., ServerProcess], private_redis: RedisServer, room: str) -> None:
    """Redis restarts from a snapshot older than the client's cursor: the epoch survived, the newest
    entries did not. The client is told (``recovered: false``) and gets everything retained: while its
    cursor is newer than the newest entry, and still once new messages are stored after it."""
    node = start_server(REDIS_URL=private_redis.url)
    async with await Client.open(node.ws(room, role="A")) as a:
        await a.chat("kept")
        kept = await a.recv()
    async with await Client.open(node.ws(room, role="A")) as a:
        epoch = a.ready["bd"]["epoch"]
        snapshot = redis.Redis.from_url(private_redis.url)
        snapshot.save()  # what a restart will come back to
        snapshot.close()
        await a.chat("lost 1")
        await a.chat("lost 2")
        lost = await a.recv_n(2)
    private_redis.stop()  # no save on the way down: the two newest entries are gone
    private_redis.start()
    cursor = lost[-1]["hd"]["id"]
    async with await open_once_redis_answers(node.ws(room, last_id=cursor, epoch=epoch)) as c:
        assert c.ready["bd"]["epoch"] == epoch  # the same stream, which lost its newest entries
        assert c.ready["bd"]["recovered"] is False
        assert ids(c.replayed) == [kept["hd"]["id"]]  # everything retained
        assert c.ready["bd"]["last_id"] == kept["hd"]["id"]
    async with await Client.open(node.ws(room, last_id=kept["hd"]["id"], epoch=epoch)) as c:
        assert c.replayed == [] and c.ready["bd"]["recovered"] is True  # at the newest entry: nothing missed
        await c.chat("after")  # stored after the loss: the lost ids are now older than the newest entry
        after = await c.recv()
    assert id_key(kept["hd"]["id"]) < id_key(cursor) < id_key(after["hd"]["id"])
    for lost_id in ids(lost):  # between the oldest and the newest entry, but not in the stream
        async with await Client.open(node.ws(room, last_id=lost_id, epoch=epoch)) as c:
            assert c.ready["bd"]["recovered"] is False
            assert ids(c.replayed) == [kept["hd"]["id"], after["hd"]["id"]]  # everything retained
    async with await Client.open(node.ws(room, last_id=kept["hd"]["id"], epoch=epoch)) as c:
        assert ids(c.replayed) == [after["hd"]["id"]] and c.ready["bd"]["recovered"] is True


async def test_a_node_that_kept_members_across_redis_losing_entries_follows_on_from_the_stream(
        start_server: Callable[..., ServerProcess], private_redis: RedisServer, room: str) -> None:
    """Its members stay connected while Redis restarts from an older snapshot: once its channel is back,
    ``session.ready`` names the stream's newest entry, not the lost one the node delivered last."""
    node = start_server(REDIS_URL=private_redis.url)
    async with await Client.open(node.ws(room, role="A")) as a:
        await a.chat("kept")
        kept = await a.recv()
        snapshot = redis.Redis.from_url(private_redis.url)
        snapshot.save()
        snapshot.close()
        await a.chat("lost")
        await a.recv()
        private_redis.stop()
        private_redis.start()
        deadline = time.monotonic() + 10
        while True:  # until the node's channel is back and its catch-up has run
            async with await open_once_redis_answers(node.ws(room)) as c:
                if c.ready["bd"]["last_id"] == kept["hd"]["id"]:
                    break
            assert time.monotonic() < deadline, "session.ready still names the lost entry"
            await asyncio.sleep(0.05)
        await a.chat("after")
        after = await a.recv()
        async with await Client.open(node.ws(room, last_id="0")) as c:
            assert ids(c.replayed) == [kept["hd"]["id"], after["hd"]["id"]]
            assert c.ready["bd"]["last_id"] == after["hd"]["id"]


async def test_cursor_into_a_redis_restarted_without_persistence_is_not_recovered(
        start_server: Callable[..., ServerProcess], private_redis: RedisServer, room: str) -> None:
    node = start_server(REDIS_URL=private_redis.url)
    async with await Client.open(node.ws(room, role="A")) as a:
        await a.chat("gone")
        gone = await a.recv()
    async with await Client.open(node.ws(room)) as c:
        epoch = c.ready["bd"]["epoch"]
    private_redis.stop()
    private_redis.start()
    async with await open_once_redis_answers(node.ws(room, last_id=gone["hd"]["id"], epoch=epoch)) as c:
        assert c.replayed == [] and c.ready["bd"]["recovered"] is False
        assert c.ready["bd"]["epoch"] is None and c.ready["bd"]["last_id"] is None
    async with await Client.open(node.ws(room, last_id=gone["hd"]["id"])) as c:  # without its epoch too
        assert c.replayed == [] and c.ready["bd"]["recovered"] is False


async def test_a_replay_of_big_entries_comes_whole_in_order_then_ready_then_live(server: ServerProcess, room: str,
                                                                                  rdb: redis.Redis) -> None:
    # 60 entries of 60 KB: several replay reads of about 1 MiB each, on the bulk connection.
    stored = []
    for n in range(60):
        body = orjson.dumps({"hd": {"event": "chat.message", "role": "A", "sid": room,
                                    "ts": format_ts(int(time.time() * 1000)), "cid": f"b{n}"},
                             "bd": {"text": f"big {n}", "extra": "x" * 60_000}})
        stored.append(str(rdb.xadd(stream_key(room), {"participant": "A", "body": body})))
    async with await Client.open(server.ws(room, role="B", last_id="0")) as everything:
        assert ids(everything.replayed) == stored
        assert all(len(f["bd"]["extra"]) == 60_000 for f in everything.replayed)
        assert everything.ready["bd"]["last_id"] == stored[-1]
        await everything.chat("live")
        assert (await everything.recv())["bd"]["text"] == "live"
