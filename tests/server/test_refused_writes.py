"""Redis refusing writes for a few seconds (NOREPLICAS here: ``min-replicas-to-write 1`` with no replica;
READONLY during a failover, OOM, MISCONF and BUSY behave the same), from outside: real server processes
on a real redis-server of the test's own.

While refused: senders are told ``unavailable`` and nothing is stored; ``/readyz`` answers 503 naming
the loops that fail (no address); afterwards every loop comes back by itself, ``/readyz`` answers 200,
presence is whole (a member joining later sees the member already there) and messages flow.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from server.store.keys import stream_key
from server.store.ports import StoreRefused
from server.store.redis_store import RedisStore
from tests.server.test_metrics import scrape
from tests.support.client import Client
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess

DEADLINE_S = 20.0


async def ready(node: ServerProcess) -> httpx.Response:
    async with httpx.AsyncClient(base_url=node.http) as http:
        return await http.get("/readyz")


async def until_ready(node: ServerProcess, status: int, contains: str = "") -> dict[str, Any]:
    """Poll ``/readyz`` until it answers ``status`` (with ``contains`` in its reason)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = await ready(node)
        body: dict[str, Any] = response.json()
        if response.status_code == status and contains in body.get("reason", ""):
            return body
        assert time.monotonic() < deadline, f"/readyz still answers {response.status_code} {body}"
        await asyncio.sleep(0.1)


def refuse_writes(rdb: redis.Redis, refuse: bool) -> None:
    rdb.config_set("min-replicas-to-write", 1 if refuse else 0)


async def test_after_writes_were_refused_presence_is_whole_and_readyz_tells_the_truth(
        start_server: Callable[..., ServerProcess], private_redis: RedisServer, room: str) -> None:
    env = {"REDIS_URL": private_redis.url, "NODE_TTL_S": "3"}  # a heartbeat a second: forgotten in 3 s
    here, there = start_server(**env), start_server(**env)
    rdb = redis.Redis.from_url(private_redis.url)
    try:
        async with await Client.open(here.ws(room, role="A")) as a:
            a_conn = a.ready["hd"]["conn"]
            refuse_writes(rdb, True)
            down = await until_ready(here, 503, "heartbeat")  # its beats are refused
            assert down["status"] == "unavailable" and down["reason"].startswith("loop down: ")
            # A failover also drops the connections: the listener resubscribes, and its beat is refused.
            rdb.client_kill_filter(_type="pubsub")
            down = await until_ready(here, 503, "announcements")
            assert not re.search(r"\d+\.\d+\.\d+\.\d+|:\d{2,5}\b|NOREPLICAS", down["reason"])  # names only

            await a.chat("refused", cid="r1")
            error = await a.recv()
            assert (error["hd"]["event"], error["bd"]["code"], error["bd"]["cid"]) == ("error", "unavailable", "r1")
            await a.send({"event": "llm.invoke", "cid": "q1"}, {"prompt": "refused too"})  # refused at its lock
            error = await a.recv()
            assert (error["hd"]["event"], error["bd"]["code"], error["bd"]["cid"]) == ("error", "unavailable", "q1")
            assert rdb.exists(stream_key(room)) == 0  # nothing was stored

            await asyncio.sleep(3.5)  # past NODE_TTL_S: Redis forgets this node in the room
            refuse_writes(rdb, False)
            assert (await until_ready(here, 200))["status"] == "ready"

            async with await Client.open(there.ws(room, role="B")) as b:  # joins later, on the other node
                assert ("A", a_conn) in [(m["role"], m["conn"]) for m in b.ready["bd"]["members"]]
                await a.chat("after", cid="r1")  # the refused message, sent again: stored now
                assert (await b.recv())["bd"]["text"] == "after"
            async with await Client.open(here.ws(room + "-x", role="A")) as other:  # the node follows new rooms
                assert other.ready["bd"]["members"]

        metrics = await scrape(here)
        assert metrics['chat_loop_failures_total{loop=heartbeat}'] >= 1
        assert metrics['chat_loop_failures_total{loop=announcements}'] >= 1
        assert {name: value for name, value in metrics.items() if name.startswith("chat_loop_up")} == {
            name: 1.0 for name in metrics if name.startswith("chat_loop_up")}
        assert metrics["chat_loop_up{loop=heartbeat}"] == 1.0
        log = here.log_path.read_text(errors="replace")
        assert log.count("heartbeat failing: StoreRefused: NOREPLICAS") == 1  # once per kind, not per retry
        assert "heartbeat recovered after" in log and "announcements recovered after" in log
    finally:
        refuse_writes(rdb, False)
        rdb.close()


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis-py"])
async def test_the_adapter_reports_refused_writes_as_refused(private_redis: RedisServer, lean: bool) -> None:
    store = RedisStore.connect(private_redis.url, lean=lean)
    rdb = redis.Redis.from_url(private_redis.url)
    try:
        refuse_writes(rdb, True)
        with pytest.raises(StoreRefused, match=r"^NOREPLICAS"):
            await store.bus.follow(["r"], "n1", 30)
        with pytest.raises(StoreRefused, match=r"^NOREPLICAS"):
            await store.roster.leave("r", "n1/c")  # a plain command too, not only scripts
        assert await store.log.last_id("r") == b"0-0"  # reads are still served
        rdb.replicaof("127.0.0.1", 1)  # a replica, as after a failover: READONLY
        refuse_writes(rdb, False)
        with pytest.raises(StoreRefused, match=r"^READONLY"):
            await store.roster.leave("r", "n1/c")
    finally:
        rdb.replicaof("NO", "ONE")
        refuse_writes(rdb, False)
        rdb.close()
        await store.close()
