"""The rooms' streams: the one module that talks to Redis.

A room's messages live in the Redis Stream ``chat:session:<room>`` as entries with the fields
``participant`` (the sender's role) and ``body`` (the broadcast envelope as JSON, without
``hd.id``). Guarantees the rest of the server relies on:

- :meth:`StreamStore.append_many` appends its items in list order over one connection, so the
  entries of one room get increasing ids in the order they were submitted. Each item's outcome
  (its id, or the exception) is reported separately; a connection failure fails the whole batch.
- :meth:`StreamStore.read` returns, per key, the entries after the given id, oldest first.
- Every append trims the stream approximately to ``maxlen`` entries and renews the key's
  expiry to ``ttl_s`` (0 = no expiry).

The embedded mode runs the same code on an in-process fakeredis server instead of a Redis URL.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

Fields = Mapping[str | bytes, str | bytes]
Entry = tuple[bytes, dict[bytes, bytes]]
StreamBatch = list[tuple[bytes, list[Entry]]]

#: Errors meaning "Redis cannot be reached right now" (the client gets ``unavailable``).
UNREACHABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
StoreError = RedisError

_POOL_CONNECTIONS = 64
_POOL_WAIT_S = 10.0


class StreamStore:
    def __init__(self, client: Any, blocking_client: Any, *, embedded: bool) -> None:
        self._client = client  # shared pool: appends, ranges, pings
        self._blocking = blocking_client  # its own connection: the tail's XREAD BLOCK
        self.embedded = embedded

    @classmethod
    def connect(cls, url: str | None, *, block_ms: int) -> StreamStore:
        """A store on the Redis at ``url``, or on a new in-process fakeredis server when None."""
        if url is None:
            import fakeredis

            server = fakeredis.FakeServer()
            return cls(fakeredis.FakeAsyncRedis(server=server), fakeredis.FakeAsyncRedis(server=server),
                       embedded=True)
        # redis-py's default pool raises MaxConnectionsError when exhausted: wait instead.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=_POOL_CONNECTIONS, timeout=_POOL_WAIT_S,
            socket_timeout=10.0, socket_connect_timeout=5.0, health_check_interval=30,
        )
        # The default 5 s socket timeout would cut a blocking XREAD: give it the block time plus slack.
        blocking = aioredis.Redis.from_url(
            url, socket_timeout=block_ms / 1000 + 10.0, socket_connect_timeout=5.0,
            socket_keepalive=True, single_connection_client=True,
        )
        return cls(aioredis.Redis(connection_pool=pool), blocking, embedded=False)

    async def close(self) -> None:
        await self._blocking.aclose()
        await self._client.aclose()

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def append_many(
        self, items: Sequence[tuple[str, Fields]], *, maxlen: int, ttl_s: int
    ) -> list[bytes | Exception]:
        """Append each ``(key, fields)`` in order, in one round trip. Returns ids or errors."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, fields in items:
                pipe.xadd(key, fields, maxlen=maxlen or None, approximate=True)
            if ttl_s:
                for key in dict.fromkeys(key for key, _ in items):
                    pipe.expire(key, ttl_s)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results[: len(items)]

    async def read(self, cursors: Mapping[str, str | bytes], *, count: int, block_ms: int) -> StreamBatch:
        """Entries after each key's cursor, waiting up to ``block_ms`` when there are none."""
        reply = await self._blocking.xread(dict(cursors), count=count, block=block_ms)
        return [(key, entries) for key, entries in reply or ()]

    async def last_id(self, key: str) -> bytes:
        """The newest entry's id in ``key``, or ``0-0`` when the stream is empty or absent."""
        newest = await self._client.xrevrange(key, count=1)
        return newest[0][0] if newest else b"0-0"

    async def range(self, key: str, start: str = "-", end: str = "+", count: int | None = None) -> list[Entry]:
        return list(await self._client.xrange(key, start, end, count=count))

    async def poke(self, key: str, ttl_s: int) -> None:
        """Add a throwaway entry to ``key`` so that a blocking read on it returns."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"w": "1"}, maxlen=8, approximate=True)
            pipe.expire(key, ttl_s)
            await pipe.execute()
