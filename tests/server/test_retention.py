"""Retention settings: every append trims the room's stream approximately and renews its expiry."""

from __future__ import annotations

from collections.abc import Callable

import redis

from server.store.keys import stream_key
from tests.support.client import Client
from tests.support.server_process import ServerProcess
from tests.support.streams import xrevrange


async def test_streams_are_trimmed_and_expire(start_server: Callable[..., ServerProcess], redis_url: str,
                                             room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url, STREAM_MAXLEN="100", ROOM_TTL_SECONDS="500")
    async with await Client.open(node.ws(room, role="A")) as a:
        for n in range(600):
            await a.chat(f"m{n}")
        frames = await a.recv_n(600)
    key = stream_key(room)
    length = rdb.xlen(key)
    assert 100 <= length < 600  # MAXLEN ~ trims whole macro nodes, so a little more than 100 stays
    newest = xrevrange(rdb, key, count=1)[0][0]
    assert newest == frames[-1]["hd"]["id"]
    assert 0 < rdb.ttl(key) <= 500


async def test_zero_means_keep_everything_forever(start_server: Callable[..., ServerProcess], redis_url: str,
                                                  room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url, STREAM_MAXLEN="0", ROOM_TTL_SECONDS="0")
    async with await Client.open(node.ws(room)) as c:
        for n in range(300):
            await c.chat(f"m{n}")
        await c.recv_n(300)
    assert rdb.xlen(stream_key(room)) == 300
    assert rdb.ttl(stream_key(room)) == -1
