"""Redis going away under a live server: senders are told, nothing is broadcast, it recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.support.client import Client
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess


async def test_senders_get_unavailable_while_redis_is_down_and_it_recovers(
    start_server: Callable[..., ServerProcess], private_redis: RedisServer, room: str
) -> None:
    node = start_server(REDIS_URL=private_redis.url)
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b:
        await a.chat("before")
        assert (await b.recv())["bd"]["text"] == "before"
        assert (await a.recv())["bd"]["text"] == "before"

        private_redis.stop()
        await a.chat("during", cid="d1")
        error = await a.recv()
        assert error["hd"] == {"event": "error"}
        assert (error["bd"]["code"], error["bd"]["cid"]) == ("unavailable", "d1")
        async with httpx.AsyncClient(base_url=node.http) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"

        private_redis.start()
        await a.chat("after")  # the pool reconnects on the next command
        frame = await b.recv()  # B never saw "during": its first frame since "before" is "after"
        assert frame["bd"]["text"] == "after"
        assert (await a.recv())["bd"]["text"] == "after"


async def test_readyz_names_no_address_and_logs_the_details_once(
        start_server: Callable[..., ServerProcess], private_redis: RedisServer) -> None:
    node = start_server(REDIS_URL=private_redis.url)
    private_redis.stop()
    async with httpx.AsyncClient(base_url=node.http) as http:
        for _ in range(3):  # a load balancer polls it
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "unavailable", "reason": "store unreachable"}
            assert str(private_redis.port) not in ready.text and "127.0.0.1" not in ready.text
        logged = node.log_path.read_text(errors="replace")  # the details, once, in the log
        [line] = [line for line in logged.splitlines() if "readyz: the store is unreachable" in line]
        assert "WARNING" in line and str(private_redis.port) in line
        private_redis.start()
        deadline = time.monotonic() + 15  # the store answers at once; the loops come back after their backoff
        while (ready := await http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.json()
            assert ready.json()["reason"].startswith("loop down: ")
            await asyncio.sleep(0.05)
    assert "readyz: the store answers again" in node.log_path.read_text(errors="replace")
