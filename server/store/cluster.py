"""Redis Cluster: telling it from a single Redis, its clients, and a node's shard channels.

A ``REDIS_URL`` naming any node of a cluster is enough: :func:`is_cluster` asks that node (``INFO
cluster``) when the store is opened. On a cluster every port runs on redis-py's asyncio
:class:`~redis.asyncio.cluster.RedisCluster`, which routes each command to the shard that owns its
slot, follows ``MOVED``/``ASK`` redirections and refreshes its map of the slots when the topology
changes; there is no slot routing of ours. Each room's keys share the room's slot
(:mod:`server.store.keys`), so each script call runs on one shard.

Fan-out between nodes stays on the room's shard: each node has one shard channel per room it follows,
in the room's slot (``chat:node:<node>:{chat:session:<room>}``), and the scripts ``SPUBLISH`` to the
channels of the room's other followers. A cluster-wide ``PUBLISH`` would be copied to every shard; a
``SPUBLISH`` reaches the subscribers of the room's shard only, so a message costs the same however
many shards there are. :class:`ShardChannels` holds a node's subscriptions: ``SSUBSCRIBE`` on one
connection per shard (the shard redis-py's slot map names), confirmed before the node adds itself to
the room's followers, so an append that counts the node as a follower always finds it listening.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.store.keys import node_shard_channel
from server.store.ports import StoreUnavailable

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 2.0


def is_cluster(url: str, wait_s: float) -> bool:
    """Whether the Redis at ``url`` is a node of a Redis Cluster (``INFO cluster``), asked again for up to
    ``wait_s`` while it cannot be reached; then a single Redis is assumed (and a warning logged)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with redis.Redis.from_url(url, socket_timeout=_PROBE_TIMEOUT_S,
                                      socket_connect_timeout=_PROBE_TIMEOUT_S) as client:
                info = client.info("cluster")
            return bool(info.get("cluster_enabled"))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            if time.monotonic() >= deadline:
                log.warning("Redis cannot be reached (%s): taken for a single Redis, not a cluster (restart this"
                            " process once Redis answers if it is a Redis Cluster)", exc)
                return False
            time.sleep(0.2)


def connect(url: str, *, timeout_s: float, listener: bool = False) -> RedisCluster:
    """A cluster client for ``url`` (``listener``: no read timeout, for subscriptions)."""
    return RedisCluster.from_url(url, socket_timeout=None if listener else timeout_s, socket_connect_timeout=5.0,
                                 socket_keepalive=True, health_check_interval=30)


class _Shard:
    """One cluster node's subscriber connection, and the task that reads it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.pubsub = client.pubsub()
        self.reader: asyncio.Task[None] | None = None


class ShardChannels:
    """The shard channels of node ``node``: :meth:`add` subscribes to those of some rooms (and returns
    once Redis has confirmed), :meth:`remove` unsubscribes; :meth:`next` gives ``("subscribe", b"")``
    first, then ``("message", data)``. A lost connection, or a channel the cluster moved to another
    shard (resharding, failover), ends the subscription: :meth:`next` raises
    :class:`~server.store.ports.StoreUnavailable`, and the caller subscribes again (catching up what it
    may have missed, as after any reconnection)."""

    def __init__(self, cluster: RedisCluster, url: str, node: str, followed: Collection[str] = ()) -> None:
        self._cluster = cluster
        self._options = _node_options(url)
        self._node = node
        self._followed = followed  # the rooms the node follows (their channels are subscribed first)
        self._items: asyncio.Queue[tuple[str, bytes] | Exception] = asyncio.Queue()
        self._shards: dict[str, _Shard] = {}  # by cluster node name ("host:port")
        self._channels: dict[bytes, str] = {}  # channel -> its cluster node's name
        self._waiting: dict[bytes, asyncio.Future[None]] = {}  # channel -> confirmed
        self._leaving: collections.Counter[bytes] = collections.Counter()  # our SUNSUBSCRIBEs not confirmed yet
        self._broken: Exception | None = None

    async def subscribe(self) -> None:
        """Refresh the map of the slots (a failover may have moved them), subscribe to the channels of
        the rooms the node follows, and say ``subscribe``."""
        await self._cluster.initialize()
        await self._cluster.nodes_manager.initialize()
        await self.add(list(self._followed))
        self._items.put_nowait(("subscribe", b""))

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        try:
            item = await asyncio.wait_for(self._items.get(), timeout_s)
        except TimeoutError:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    async def add(self, rooms: Sequence[str]) -> None:
        """Subscribe to this node's channels of ``rooms`` not subscribed yet, and wait for Redis to confirm."""
        if self._broken is not None:
            raise StoreUnavailable(str(self._broken))
        loop = asyncio.get_running_loop()
        confirmed = []
        for room in rooms:
            name = node_shard_channel(self._node, room)
            channel = name.encode()
            if channel in self._channels:
                continue
            node = self._cluster.get_node_from_key(name)
            assert node is not None
            shard = self._shard(node)
            self._channels[channel] = node.name
            self._waiting[channel] = future = loop.create_future()
            confirmed.append(future)
            await shard.pubsub.ssubscribe(channel)
            if shard.reader is None:
                shard.reader = loop.create_task(self._read(shard))
        if confirmed:
            await asyncio.wait_for(asyncio.gather(*confirmed), CONFIRM_TIMEOUT_S)

    async def remove(self, rooms: Sequence[str]) -> None:
        for room in rooms:
            channel = node_shard_channel(self._node, room).encode()
            name = self._channels.pop(channel, None)
            shard = None if name is None else self._shards.get(name)
            if shard is not None:
                self._leaving[channel] += 1
                await shard.pubsub.sunsubscribe(channel)

    async def close(self) -> None:
        self._break(StoreUnavailable("closed"))
        for shard in self._shards.values():
            if shard.reader is not None:
                shard.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await shard.reader
            with contextlib.suppress(Exception):
                await shard.pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await shard.client.aclose()
        self._shards.clear()

    def _shard(self, node: ClusterNode) -> _Shard:
        shard = self._shards.get(node.name)
        if shard is None:
            # No retries: a lost connection must end the subscription (messages were missed), never be
            # mended silently by a reconnection.
            client = aioredis.Redis(**self._options, host=node.host, port=int(node.port), socket_timeout=None,
                                    socket_connect_timeout=5.0, socket_keepalive=True, health_check_interval=30,
                                    retry=Retry(NoBackoff(), 0))
            shard = self._shards[node.name] = _Shard(client)
        return shard

    async def _read(self, shard: _Shard) -> None:
        try:
            while True:
                message = await shard.pubsub.get_message(timeout=None)
                if message is not None:
                    self._take(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._break(exc)

    def _take(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            self._items.put_nowait(("message", message["data"]))
        elif kind == "ssubscribe":
            future = self._waiting.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == "sunsubscribe":
            if self._leaving[channel] > 0:
                self._leaving[channel] -= 1
                if not self._leaving[channel]:
                    del self._leaving[channel]
            elif channel in self._channels:  # not asked for: the cluster moved the channel's slot
                self._break(StoreUnavailable("a shard channel moved to another node of the cluster"))

    def _break(self, exc: Exception) -> None:
        if self._broken is not None:
            return
        self._broken = exc
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(StoreUnavailable(str(exc)))
        self._waiting.clear()
        self._items.put_nowait(exc)


def _node_options(url: str) -> dict[str, Any]:
    """The connection options of ``url`` (credentials, TLS) for a connection to one node of its cluster."""
    options: dict[str, Any] = dict(parse_url(url))
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    for name in ("host", "port", "db"):
        options.pop(name, None)
    return options
