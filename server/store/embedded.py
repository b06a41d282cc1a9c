"""The embedded store: every port on an in-process fakeredis server (the zero-setup default).

It is the Redis adapter (:mod:`server.store.redis_store`) on a fakeredis server, so the same Lua
scripts run, with one difference: fakeredis's ``XREADGROUP`` does not block (it answers at once).
Requests can only come from this process here, so a reader waits for an event set by
:meth:`EmbeddedRequestQueue.add` instead. Data lives in memory and is lost on exit; one process only.
"""

from __future__ import annotations

import asyncio
import contextlib

import fakeredis

from server.store.keys import LLM_GROUP
from server.store.ports import Request
from server.store.redis_store import Connections, RedisRequestQueue, RedisStore, requests_of, translated


class EmbeddedRequestQueue(RedisRequestQueue):
    def __init__(self, connections: Connections, queue: str) -> None:
        super().__init__(connections, queue)
        self._queued = asyncio.Event()

    async def add(self, request: Request) -> None:
        await super().add(request)
        self._queued.set()

    @translated
    async def read(self, consumer: str, count: int, block_ms: int) -> list[Request]:
        self._queued.clear()
        requests = await self._read_now(consumer, count)
        if not requests:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queued.wait(), block_ms / 1000)
            requests = await self._read_now(consumer, count)
        return requests

    async def _read_now(self, consumer: str, count: int) -> list[Request]:
        return requests_of(await self._client.xreadgroup(LLM_GROUP, consumer, {self._key: ">"}, count=count))


class EmbeddedStore(RedisStore):
    kind = "embedded"

    @classmethod
    def create(cls, server: fakeredis.FakeServer | None = None) -> EmbeddedStore:
        """The store on ``server`` (a new one when None)."""
        server = server or fakeredis.FakeServer()
        return cls(Connections(fakeredis.FakeAsyncRedis(server=server), fakeredis.FakeAsyncRedis(server=server)))

    def _queue(self, queue: str) -> RedisRequestQueue:
        return EmbeddedRequestQueue(self._connections, queue)
