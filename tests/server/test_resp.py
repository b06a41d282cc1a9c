"""The lean Redis client (:mod:`server.store.resp`) against a real Redis."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.store.resp import LeanRedis, LeanScript, pack
from tests.conftest import RUN
from tests.support.redis_server import RedisServer


def key(name: str) -> str:
    return f"chat:resp:t{RUN}-{name}-{secrets.token_hex(3)}"


def test_commands_are_packed_as_resp_arrays_of_bulk_strings() -> None:
    assert pack(["SET", "k", b"v\r\n", 12]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n"


def test_only_plain_tcp_urls_are_handled() -> None:
    assert LeanRedis.from_url("redis://127.0.0.1:6390/3") is not None
    assert LeanRedis.from_url("rediss://127.0.0.1:6390/0") is None
    assert LeanRedis.from_url("unix:///tmp/redis.sock") is None


async def test_replies_come_back_to_their_callers_in_order(redis_url: str, rdb: redis.Redis) -> None:
    client = LeanRedis.from_url(redis_url)
    assert client is not None
    name = key("list")
    try:
        replies = await asyncio.gather(*(client.execute("RPUSH", name, n) for n in range(200)))
        assert replies == list(range(1, 201))
        assert await client.execute("LRANGE", name, 0, 2) == [b"0", b"1", b"2"]
        assert await client.execute("GET", key("absent")) is None
        assert rdb.llen(name) == 200  # the same database as redis-py's
    finally:
        rdb.delete(name)
        await client.aclose()


async def test_an_error_reply_is_raised_and_one_inside_an_array_is_returned(redis_url: str, rdb: redis.Redis) -> None:
    client = LeanRedis.from_url(redis_url)
    assert client is not None
    name = key("str")
    rdb.set(name, "x")
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await client.execute("LPUSH", name, "y")
        script = LeanScript(client, "return {redis.pcall('LPUSH', KEYS[1], 'y'), 7}")
        error, seven = await script(keys=[name])
        assert isinstance(error, ResponseError) and seven == 7
        assert await client.execute("GET", name) == b"x"  # the connection is still in step
    finally:
        rdb.delete(name)
        await client.aclose()


async def test_a_script_redis_does_not_know_is_loaded(redis_url: str) -> None:
    client = LeanRedis.from_url(redis_url)
    assert client is not None
    script = LeanScript(client, f"return 'fresh {secrets.token_hex(8)}' .. ARGV[1]")
    try:
        assert await client.execute("SCRIPT", "EXISTS", script.sha) == [0]
        assert (await script(args=["!"])).endswith(b"!")
        assert await client.execute("SCRIPT", "EXISTS", script.sha) == [1]
    finally:
        await client.aclose()


async def test_a_lost_connection_fails_its_commands_and_the_next_one_reconnects(
        private_redis: RedisServer) -> None:
    client = LeanRedis.from_url(private_redis.url)
    assert client is not None
    try:
        assert await client.execute("PING") == b"PONG"
        waiting = asyncio.ensure_future(client.execute("BLPOP", key("never"), 0))
        await client.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
        with pytest.raises(RedisConnectionError):
            await waiting
        assert await client.execute("PING") == b"PONG"
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await client.execute("PING")
        private_redis.start()
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_a_reply_that_does_not_come_in_time_drops_the_connection(redis_url: str) -> None:
    client = LeanRedis.from_url(redis_url, timeout_s=0.2)
    assert client is not None
    try:
        with pytest.raises(RedisTimeoutError):
            await client.execute("BLPOP", key("never"), 0)
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.aclose()


async def test_a_refused_password_is_a_connection_error(private_redis: RedisServer) -> None:
    client = LeanRedis.from_url(private_redis.url.replace("redis://", "redis://nobody:wrong@"))
    assert client is not None
    try:
        with pytest.raises(RedisConnectionError, match="setup"):
            await client.execute("PING")
    finally:
        await client.aclose()


async def test_the_database_of_the_url_is_selected(private_redis: RedisServer) -> None:
    url = private_redis.url.removesuffix("/0") + "/3"
    client = LeanRedis.from_url(url)
    assert client is not None
    try:
        await client.execute("SET", "chat:resp:db", "three")
    finally:
        await client.aclose()
    assert redis.Redis.from_url(url).get("chat:resp:db") == b"three"
    assert redis.Redis.from_url(private_redis.url).get("chat:resp:db") is None


async def test_a_subscriber_hears_its_channel_in_order_and_times_out_quietly(redis_url: str,
                                                                            rdb: redis.Redis) -> None:
    client = LeanRedis.from_url(redis_url)
    assert client is not None
    channel = key("channel")
    subscriber = client.subscriber(channel)
    try:
        await subscriber.subscribe()
        assert await subscriber.next(timeout_s=5.0) == ("subscribe", b"")
        assert await subscriber.next(timeout_s=0.05) is None
        for n in range(100):
            rdb.publish(channel, f"m{n}")
        assert [await subscriber.next(timeout_s=5.0) for _ in range(100)] == [("message", f"m{n}".encode())
                                                                             for n in range(100)]
    finally:
        await subscriber.close()
        await client.aclose()


async def test_a_subscriber_whose_connection_is_lost_says_so(private_redis: RedisServer) -> None:
    client = LeanRedis.from_url(private_redis.url)
    assert client is not None
    subscriber = client.subscriber("chat:resp:lost")
    try:
        await subscriber.subscribe()
        assert await subscriber.next(timeout_s=5.0) == ("subscribe", b"")
        waiting = asyncio.ensure_future(subscriber.next(timeout_s=30.0))
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await waiting
        with pytest.raises(RedisConnectionError):
            await subscriber.next(timeout_s=1.0)
    finally:
        await subscriber.close()
        await client.aclose()
