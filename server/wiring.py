"""The composition root: every part of a process built once, each given its collaborators when it
is built, and run for as long as the process serves.

- :class:`Relay` is ``python -m server``: rooms (the feed, the hub, sessions, the dispatcher) plus the
  parts every process has.
- :class:`WorkerNode` is ``python -m server.llm_worker``: LLM workers only, in a process that follows
  no room; its frames reach the rooms through the store like any node's.

Both build the shared parts the same way (:class:`Parts`): the appender, the unstored-frame sender and
the LLM workers. One :class:`~server.supervise.Supervisor` per process runs every background loop
(the appender's flusher, the feed's listener, heartbeat and readers, the sweeps, the workers' loops):
each survives any error and comes back by itself; ``/readyz`` and ``/metrics`` read it. The order of
construction is the order of dependence, inward first::

    store ports -> fanout -> feed (log, bus, fanout, roster restorer) -> hub (fanout, feed)
                -> appender (log, feed) -> ephemeral (bus, feed) -> sessions (log, roster, ephemeral, feed)
                -> cost guard (usage counters) -> LLM front (locks, queue, appender, guard, log)
                -> dispatcher (appender, front) -> workers (..., guard)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from server import logs
from server.appender import Appended, Appender
from server.auth import Auth, RoomAccess
from server.dispatch import Dispatcher
from server.ephemeral import Ephemeral
from server.feed import RoomFeed
from server.hub import Fanout, Hub
from server.llm import make_provider
from server.llm.front import LLMFront
from server.llm.provider import Provider
from server.llm.quota import CostGuard
from server.llm.worker import Worker
from server.session import RosterRestorer, Sessions
from server.settings import Settings
from server.store.embedded import EmbeddedStore
from server.store.ports import Retention, Store
from server.store.redis_store import RedisStore, Replicas
from server.supervise import Supervisor

log = logging.getLogger(__name__)

SHUTDOWN_GENERATIONS_S = 5.0
SHUTDOWN_RELEASES_S = 1.0  # what the bot's front desk may still release (a room's lock) at shutdown
APPENDER = "appender"  # the flusher's name as a supervised loop


def open_store(url: str | None, *, lean: bool = True, timeout_s: float = 10.0, min_replicas: int = 0,
               min_replicas_timeout_ms: int = 1000) -> Store:
    """The store on the Redis at ``url``, or on a new in-process fakeredis server when None
    (``lean=False``: redis-py for everything, as for the URLs the lean client does not take); each append
    batch waits for ``min_replicas`` replicas, up to ``min_replicas_timeout_ms`` (``REDIS_MIN_REPLICAS``)."""
    if url is None:
        return EmbeddedStore.create()
    return RedisStore.connect(url, lean=lean, timeout_s=timeout_s,
                              replicas=Replicas(min_replicas, min_replicas_timeout_ms))


def store_of(settings: Settings) -> Store:
    """The store a server or worker process runs on, from its settings."""
    return open_store(settings.redis_url, timeout_s=settings.redis_timeout_s, min_replicas=settings.redis_min_replicas,
                      min_replicas_timeout_ms=settings.redis_min_replicas_timeout_ms)


class Parts:
    """What every process runs: appends, unstored frames, and ``workers`` LLM worker consumers."""

    def __init__(self, settings: Settings, store: Store, node_id: str, feed: RoomFeed | None, workers: int,
                 appended: Appended, supervisor: Supervisor) -> None:
        self.settings = settings
        self.store = store
        self.node_id = node_id
        self.supervisor = supervisor
        retention = Retention(settings.stream_maxlen, settings.room_ttl_seconds, settings.dedupe_window_s)
        self.appender = Appender(store.log, retention, node_id, appended, settings.append_gather_ms / 1000)
        self.ephemeral = Ephemeral(store.bus, node_id, feed)
        self.requests = store.requests(settings.llm.queue)
        self.guard = CostGuard(store.usage, settings.llm.budgets)
        self.provider: Provider | None = make_provider(settings.llm) if workers > 0 else None
        self.workers = [
            Worker(f"{node_id}-{n}", store.locks, self.requests, store.log, self.appender, self.ephemeral,
                   self.provider, settings.llm, settings.llm.concurrency, supervisor=supervisor, label=f"llm{n}",
                   guard=self.guard)
            for n in range(workers) if self.provider is not None
        ]
        supervisor.register(APPENDER)
        for worker in self.workers:
            for name in worker.loop_names():
                supervisor.register(name)

    @contextlib.asynccontextmanager
    async def running(self, *loops: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
        """Run the parts' loops (and ``loops``) until the block ends; then end running generations as
        ``cancelled`` (stored while the store is still up), stop everything and close the store."""
        tasks = [asyncio.create_task(self.supervisor.run(APPENDER, self.appender.run, up_on_start=True),
                                     name=APPENDER),
                 *(asyncio.create_task(loop) for loop in loops),
                 *(asyncio.create_task(worker.run(), name=worker.name) for worker in self.workers)]
        try:
            yield
        finally:
            await asyncio.gather(*(worker.stop(SHUTDOWN_GENERATIONS_S) for worker in self.workers))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(worker.forget() for worker in self.workers), return_exceptions=True)
            if self.provider is not None:
                await self.provider.aclose()
            await self.store.close()


class Relay:
    """The running parts of one server process."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.node_id = secrets.token_hex(6)
        logs.set_node(self.node_id)
        self.supervisor = Supervisor()
        self.auth = Auth(settings.auth_secret, settings.admin_key)
        self.access = RoomAccess(self.auth, store.instances)
        self.fanout = Fanout()
        restorer = RosterRestorer(store.roster, self.fanout, self.node_id, settings.room_ttl_seconds)
        self.feed = RoomFeed(store.log, store.bus, self.fanout, restorer, self.node_id, settings.node_ttl_s,
                             supervisor=self.supervisor)
        self.hub = Hub(self.fanout, self.feed)
        self.parts = Parts(settings, store, self.node_id, self.feed, settings.llm.workers, self.feed.appended,
                           self.supervisor)
        self.appender = self.parts.appender
        self.sessions = Sessions(store.bulk_log, store.roster, self.parts.ephemeral, self.feed, self.node_id,
                                 settings.room_ttl_seconds, settings.max_connections_per_room, self.supervisor,
                                 bot={"turns": settings.llm.turns, "cancel": settings.llm.cancel})
        self.front = LLMFront(store.locks, self.parts.requests, self.appender, settings.llm.trigger,
                              settings.llm.queue_lease_ms, settings.llm.cancel, guard=self.parts.guard,
                              room_log=store.log, turns=settings.llm.turns,
                              queue_per_room=settings.llm.queue_per_room, ephemeral=self.parts.ephemeral,
                              join_lease_ms=settings.llm.join_lease_ms)
        self.dispatcher = Dispatcher(self.appender, self.front)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.parts.running(self.feed.run(), self.sessions.run()):
            try:
                yield
            finally:
                await self.front.aclose(SHUTDOWN_RELEASES_S)


class WorkerNode:
    """The running parts of ``python -m server.llm_worker``: at least one LLM worker consumer."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.node_id = "w" + secrets.token_hex(6)
        logs.set_node(self.node_id)
        self.supervisor = Supervisor()
        self.parts = Parts(settings, store, self.node_id, None, max(settings.llm.workers, 1), _nobody_follows,
                           self.supervisor)

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.parts.running()


def _nobody_follows(room: str, before: bytes, items: list[tuple[bytes, bytes]]) -> None:
    """A worker process follows no room: what it appends reaches the rooms through their feeds."""
