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

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 2.0


def is_cluster(url: str, wait_s: float) -> bool:
    """Whether the Redis at ``url`` is a node of a Redis Cluster (``INFO cluster``), asked again for up to
    ``wait_s`` while it cannot be reached; then a single Redis is assumed (and a warning logged). It
    blocks: it runs once, when the store is opened."""
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
        except redis.RedisError as exc:  # it answers, but not that (an ACL without INFO): not a cluster's
            log.warning("Redis did not say whether it is a cluster node (%s): taken for a single Redis", exc)
            return False


def connect(url: str, *, timeout_s: float, listener: bool = False) -> RedisCluster:
    """A cluster client for ``url`` (``listener``: no read timeout, for subscriptions)."""
    return RedisCluster.from_url(url, socket_timeout=None if listener else timeout_s, socket_connect_timeout=5.0,
                                 socket_keepalive=True, health_check_interval=30)


class _Shard:
    """One cluster node's subscriber connection, and the task that reads it."""

    def __init__(self, name: str, client: aioredis.Redis) -> None:
        self.name = name
        self.client = client
        self.pubsub = client.pubsub()
        self.reader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self.client.aclose()


class ShardChannels:
    """The shard channels of node ``node``: :meth:`add` subscribes to those of some rooms (and returns
    once Redis has confirmed), :meth:`remove` unsubscribes; :meth:`next` gives ``("subscribe", b"")``
    first, then ``("message", data)``.

    Each shard's channels are on a connection of their own. When one is lost (a master died, the
    network dropped it) or the cluster moves a channel's slot (resharding, failover), only the rooms of
    that shard are concerned: their channels are subscribed again in the background, on the shard the
    refreshed map of the slots names, retrying with backoff; then ``("subscribe", b"")`` comes again, and
    the caller catches every room up, as after any reconnection (what was sent in between is in the
    streams). Rooms on the other shards never wait for it."""

    def __init__(self, cluster: RedisCluster, url: str, node: str, followed: Collection[str] = ()) -> None:
        self._cluster = cluster
        self._options = _node_options(url)
        self._node = node
        self._followed = followed  # the rooms the node follows: their channels are the ones wanted
        self._items: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._shards: dict[str, _Shard] = {}  # by cluster node name ("host:port")
        self._channels: dict[bytes, str] = {}  # channel -> its cluster node's name
        self._waiting: dict[bytes, asyncio.Future[bool]] = {}  # channel -> confirmed (False: its shard was lost)
        self._leaving: collections.Counter[bytes] = collections.Counter()  # our SUNSUBSCRIBEs not confirmed yet
        self._recovery: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # lost shards' connections being closed
        self._closed = False

    async def subscribe(self) -> None:
        """Refresh the map of the slots (a failover may have moved them), subscribe to the channels of
        the rooms the node follows, and say ``subscribe``."""
        await self._cluster.initialize()
        await self._cluster.nodes_manager.initialize()
        await self.add(list(self._followed))
        self._items.put_nowait(("subscribe", b""))

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        try:
            return await asyncio.wait_for(self._items.get(), timeout_s)
        except TimeoutError:
            return None

    async def add(self, rooms: Sequence[str]) -> bool:
        """Subscribe to this node's channels of ``rooms`` not subscribed yet, and wait for Redis to confirm;
        True when every one is. The channels of a shard that cannot be reached (a master just died) are
        left to the background, which subscribes them once the cluster names their new shard. Raises
        :class:`~server.store.ports.StoreUnavailable` when a shard that took the subscriptions does not
        confirm them in time."""
        loop = asyncio.get_running_loop()
        confirmed: list[asyncio.Future[bool]] = []
        unreachable: set[str] = set()
        try:
            for room in rooms:
                name = node_shard_channel(self._node, room)
                channel = name.encode()
                if channel in self._channels:
                    continue
                node = self._cluster.get_node_from_key(name)
                if node is None or node.name in unreachable:
                    continue
                shard = self._shard(node)
                try:
                    await shard.pubsub.ssubscribe(channel)
                except Exception as exc:
                    log.debug("shard %s cannot be reached (%s)", node.name, exc)
                    unreachable.add(node.name)
                    if shard.reader is None:  # it never connected
                        del self._shards[node.name]
                        await shard.close()
                    continue
                self._channels[channel] = shard.name
                self._waiting[channel] = future = loop.create_future()
                confirmed.append(future)
                if shard.reader is None:
                    shard.reader = loop.create_task(self._read(shard))
            results = await asyncio.wait_for(asyncio.gather(*confirmed), CONFIRM_TIMEOUT_S) if confirmed else []
        except BaseException:
            for future in confirmed:
                future.cancel()
            for channel, future in list(self._waiting.items()):
                if future in confirmed:
                    del self._waiting[channel]
                    self._channels.pop(channel, None)  # wanted still: subscribed again later
            raise
        complete = not unreachable and all(results)
        if not complete:
            self._recover()
        return complete

    async def remove(self, rooms: Sequence[str]) -> None:
        for room in rooms:
            channel = node_shard_channel(self._node, room).encode()
            name = self._channels.pop(channel, None)
            shard = None if name is None else self._shards.get(name)
            if shard is not None:
                self._leaving[channel] += 1
                await shard.pubsub.sunsubscribe(channel)

    async def close(self) -> None:
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close()

    def _shard(self, node: ClusterNode) -> _Shard:
        shard = self._shards.get(node.name)
        if shard is None:
            # No retries: a lost connection must be noticed (messages were missed), never be mended
            # silently by a reconnection.
            client = aioredis.Redis(**self._options, host=node.host, port=int(node.port), socket_timeout=None,
                                    socket_connect_timeout=5.0, socket_keepalive=True, health_check_interval=30,
                                    retry=Retry(NoBackoff(), 0))
            shard = self._shards[node.name] = _Shard(node.name, client)
        return shard

    async def _read(self, shard: _Shard) -> None:
        try:
            while True:
                message = await shard.pubsub.get_message(timeout=None)
                if message is not None:
                    self._take(shard, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("lost the connection of shard %s (%s): its rooms' channels are subscribed again",
                        shard.name, exc)
            self._lose(shard)

    def _take(self, shard: _Shard, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            self._items.put_nowait(("message", message["data"]))
        elif kind == "ssubscribe":
            future = self._waiting.pop(channel, None)
            if future is not None and not future.done():
                future.set_result(True)
        elif kind == "sunsubscribe":
            if self._leaving[channel] > 0:
                self._leaving[channel] -= 1
                if not self._leaving[channel]:
                    del self._leaving[channel]
            elif self._channels.get(channel) == shard.name:  # not asked for: the cluster moved its slot
                del self._channels[channel]
                self._recover()

    def _lose(self, shard: _Shard) -> None:
        """Forget ``shard``'s connection and channels, and subscribe to them again in the background."""
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        for channel, name in list(self._channels.items()):
            if name == shard.name:
                del self._channels[channel]
                future = self._waiting.pop(channel, None)
                if future is not None and not future.done():
                    future.set_result(False)
        closing = asyncio.get_running_loop().create_task(shard.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        self._recover()

    def _recover(self) -> None:
        if self._recovery is None and not self._closed:
            self._recovery = asyncio.get_running_loop().create_task(self._resubscribe())

    async def _resubscribe(self) -> None:
        """Subscribe again to every wanted channel, on the shards a refreshed map of the slots names; then
        say ``subscribe`` (the caller catches every room up)."""
        failures = 0
        try:
            while True:
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                try:
                    await self._cluster.nodes_manager.initialize()
                    complete = await self.add(list(self._followed))
                except Exception as exc:
                    complete = False
                    log.debug("subscribing again failed (%s); retrying", exc)
                if not complete:
                    failures += 1
                    continue
                self._items.put_nowait(("subscribe", b""))
                return
        finally:
            self._recovery = None


def _node_options(url: str) -> dict[str, Any]:
    """The connection options of ``url`` (credentials, TLS) for a connection to one node of its cluster."""
    options: dict[str, Any] = dict(parse_url(url))
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    for name in ("host", "port", "db"):
        options.pop(name, None)
    return options
