"""Several server processes on one Redis, and the embedded store with no Redis at all."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable

import httpx
import redis

from server.store.keys import stream_key
from tests.support.client import Client
from tests.support.server_process import ROOT, ServerProcess


async def test_two_server_processes_share_a_room(start_server: Callable[..., ServerProcess], redis_url: str,
                                                 room: str, rdb: redis.Redis) -> None:
    node1, node2 = start_server(REDIS_URL=redis_url), start_server(REDIS_URL=redis_url)
    async with await Client.open(node1.ws(room, role="A")) as a, await Client.open(node2.ws(room, role="B")) as b:
        await a.chat("from node 1")
        assert (await b.recv())["bd"]["text"] == "from node 1"
        await b.chat("from node 2")
        frames_a = await a.recv_n(2)
        assert [f["bd"]["text"] for f in frames_a] == ["from node 1", "from node 2"]
        assert (await b.recv())["bd"]["text"] == "from node 2"


async def test_concurrent_senders_on_two_nodes_see_one_order(start_server: Callable[..., ServerProcess],
                                                            redis_url: str, room: str, rdb: redis.Redis) -> None:
    node1, node2 = start_server(REDIS_URL=redis_url), start_server(REDIS_URL=redis_url)
    per_sender = 150
    async with (await Client.open(node1.ws(room, role="A")) as a, await Client.open(node2.ws(room, role="B")) as b,
                await Client.open(node1.ws(room)) as watcher1, await Client.open(node2.ws(room)) as watcher2):
        members = (a, b, watcher1, watcher2)
        receivers = [asyncio.create_task(m.recv_n(2 * per_sender)) for m in members]

        for n in range(per_sender):  # interleaved, so that both nodes append between each other's entries
            await a.chat(f"a{n}")
            await b.chat(f"b{n}")
        received = await asyncio.gather(*receivers)
    stored_ids = [entry_id for entry_id, _ in rdb.xrange(stream_key(room))]  # type: ignore[union-attr]
    assert len(stored_ids) == 2 * per_sender
    for frames in received:
        assert [f["hd"]["id"] for f in frames] == stored_ids


async def test_embedded_store_relays_without_redis(start_server: Callable[..., ServerProcess], room: str) -> None:
    node = start_server(REDIS_URL="")
    async with httpx.AsyncClient(base_url=node.http) as http:
        assert (await http.get("/readyz")).json() == {"status": "ready", "store": "embedded"}
    assert "embedded in-process store" in node.log()
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b:
        await a.chat("in memory")
        frame = await b.recv()
        assert frame == await a.recv()
        assert frame["bd"]["text"] == "in memory" and frame["hd"]["role"] == "A"


def test_a_bad_setting_stops_startup_with_one_line_naming_it() -> None:
    for name, value in [("PORT", "http"), ("MAX_TEXT_CHARS", "0"), ("REDIS_URL", "localhost:6379"),
                        ("LOG_LEVEL", "loud"), ("MAX_MESSAGE_BYTES", "-5")]:
        result = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", name: value}, timeout=30)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], (name, result.stderr)
