"""Redis stalling past the reply timeout under traffic from two nodes (SIGSTOP, then SIGCONT, as a
long fork, a slow disk or a paused VM would): afterwards every member has received the room's
stored entries in stream order, with no gap and no duplicate, and every sender told `unavailable`
finds, by sending again with the same cid, the single stored copy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis
from websockets.exceptions import ConnectionClosed

from server.store.keys import stream_key
from tests.conftest import new_room
from tests.support.client import Client
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange

TIMEOUT_S = 1.0  # REDIS_TIMEOUT_S of the nodes
FREEZE_S = 2.5  # past the reply timeout
SEND_EVERY_S = 0.01
ROOMS = 2
MESSAGES = 100_000  # until the stall is over


class Member:
    """A client that records every stored entry it receives, and every refusal."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self.ids: list[str] = []
        self.unavailable: list[str] = []  # cids
        self.other: list[dict[str, Any]] = []

    async def read(self) -> None:
        """Until the connection is closed."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await self.client.recv(timeout_s=600)
                hd = frame["hd"]
                if hd.get("event") == "chat.message":
                    self.ids.append(hd["id"])
                elif hd.get("event") == "error" and frame["bd"]["code"] == "unavailable":
                    self.unavailable.append(frame["bd"]["cid"])
                else:
                    self.other.append(frame)

    async def send(self, count: int, stop: asyncio.Event) -> None:
        for n in range(count):
            if stop.is_set():
                return
            await self.client.chat(f"{self.name}-{n}", cid=f"{self.name}-{n}")
            await asyncio.sleep(SEND_EVERY_S)


def _ids(entries: list[tuple[str, dict[str, str]]]) -> list[str]:
    return [entry_id for entry_id, _ in entries]


async def test_a_redis_stall_past_the_reply_timeout_keeps_one_order_and_truthful_refusals(
        start_server: Callable[..., ServerProcess], private_redis: RedisServer) -> None:
    env = {"REDIS_URL": private_redis.url, "REDIS_TIMEOUT_S": str(TIMEOUT_S)}
    one, two = start_server(**env), start_server(**env)
    rdb = redis.Redis.from_url(private_redis.url, decode_responses=True)
    rooms = [new_room() for _ in range(ROOMS)]
    members: dict[str, list[Member]] = {}
    for room in rooms:
        members[room] = [Member(await Client.open(one.ws(room, role="A")), f"{room}-a"),
                         Member(await Client.open(two.ws(room, role="B")), f"{room}-b"),
                         Member(await Client.open(one.ws(room)), f"{room}-c"),
                         Member(await Client.open(two.ws(room)), f"{room}-d")]
    everyone = [member for room in rooms for member in members[room]]
    senders = [member for room in rooms for member in members[room][:2]]
    readers = [asyncio.create_task(member.read()) for member in everyone]
    stop = asyncio.Event()
    sending = [asyncio.create_task(member.send(MESSAGES, stop)) for member in senders]
    await asyncio.sleep(0.5)  # traffic before the stall (the test's own pace, not a wait for the server)
    private_redis.freeze()
    await asyncio.sleep(FREEZE_S)
    private_redis.thaw()
    await asyncio.sleep(0.5)
    stop.set()
    done, pending = await asyncio.wait(sending, timeout=60)
    if pending:  # a sender is stuck: the server stopped reading its frames
        raise AssertionError("senders stuck: " + "; ".join(
            f"{m.name}: {len(m.ids)} received, reader "
            f"{'failed: ' + repr(r.exception()) if r.done() and not r.cancelled() else 'running'}, "
            f"sender {'stuck' if t in pending else 'done'}"
            for m, r, t in zip(senders, readers[::1], sending, strict=False)) + " | readers: " + "; ".join(
            f"{m.name}: {len(m.ids)}, {repr(r.exception()) if r.done() and not r.cancelled() else 'running'}"
            for m, r in zip(everyone, readers, strict=True)))
    for task in done:
        task.result()

    # Every sender told `unavailable` sends again with the same cid (the documented way to find out).
    for member in senders:
        for cid in list(member.unavailable):
            await member.client.chat(cid, cid=cid)

    def stored(room: str) -> list[str]:
        return [entry_id for entry_id, _ in xrange(rdb, stream_key(room))]

    deadline = time.monotonic() + 60
    while not all(set(stored(room)) <= set(member.ids) for room in rooms for member in members[room]):
        if time.monotonic() > deadline:
            raise AssertionError("members did not catch up with the stream: " + "; ".join(
                f"{m.name}: {len(m.ids)} received, {len(set(stored(room)) - set(m.ids))} missing, "
                f"{len(m.unavailable)} refused, other {m.other[:2]}" for room in rooms for m in members[room]))
        await asyncio.sleep(0.05)
    for member in everyone:  # readers end with their connection (cancelling a read can hang in wait_for)
        await member.client.close()
    await asyncio.wait_for(asyncio.gather(*readers), 30)

    for room in rooms:
        stream = stored(room)
        cids = [orjson.loads(entry["body"])["hd"]["cid"] for _, entry in xrange(rdb, stream_key(room))]
        assert len(cids) == len(set(cids)), f"room {room}: a message was stored twice"
        for n, member in enumerate(members[room]):
            # A re-sent cid is re-broadcast to its sender alone: the senders' repeats aside.
            received = list(dict.fromkeys(member.ids)) if n < 2 else member.ids
            assert received == stream, f"member {member.name} saw another order, a gap or a duplicate"
    assert any(member.unavailable for member in senders), "the stall did not reach the reply timeout"
    rdb.close()
