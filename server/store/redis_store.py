"""The store's ports on Redis: :class:`RedisStore` and one adapter class per port.

The ports' contracts are in :mod:`server.store.ports`, the key names in :mod:`server.store.keys`, the
Lua scripts in ``lua/`` (each touches the keys of one room, all passed in ``KEYS``). An append batch
that spans several rooms is one script call for all of them on a single Redis (the call's fixed cost
paid once, measured in docs/benchmarks.md, issue 14), one per room on a Redis Cluster (each call
touches one slot), all written in one go (one round trip).

On a ``redis://`` URL, what runs per message or per generation (the append and ephemeral scripts,
the feed's catch-up reads, the bot's prompt reads; the generation scripts and acks) goes through
:mod:`server.store.resp`'s lean pipelined connection instead of redis-py's pool, and the node's
announcements arrive on a lean subscriber connection. Bulk reads (history pages, exports, resume
replays: :attr:`RedisStore.bulk_log`) go through a second lean connection of their own: a reply of
a megabyte on the hot connection would hold every append's reply queued behind it. Other URLs (TLS,
Unix sockets) use redis-py alone, whose pool gives each concurrent command a connection of its own.
On a Redis Cluster (found out when the store is opened: :mod:`server.store.cluster`) everything goes
through redis-py's ``RedisCluster``, and the nodes' channels are shard channels, one per node and room.
:mod:`server.store.embedded` runs these same adapters on an in-process fakeredis server.

Every public coroutine of an adapter raises :class:`~server.store.ports.StoreUnavailable` when Redis
cannot be reached, :class:`~server.store.ports.StoreRefused` when it refuses to run a command (no
writes taken right now: NOREPLICAS, READONLY, OOM, MISCONF, BUSY, CLUSTERDOWN, TRYAGAIN, ...) and
:class:`~server.store.ports.StoreError` when it refuses a command otherwise; nothing of
redis-py escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPubSub, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    MasterDownError,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol.names import LLM_ROLE
from server.store import cluster
from server.store.cluster import ShardChannels
from server.store.keys import (
    LLM_CANCEL_CHANNEL,
    LLM_GROUP,
    LLM_TURNS_CHANNEL,
    NODE_CHANNEL_PREFIX,
    dedupe_key,
    epoch_key,
    followers_key,
    llm_asker_key,
    llm_cancelled_key,
    llm_dropped_key,
    llm_ended_key,
    llm_fence_key,
    llm_generations_key,
    llm_lock_key,
    llm_partial_key,
    llm_partial_text_key,
    llm_requests_key,
    llm_room_tokens_key,
    llm_tokens_key,
    llm_waiting_key,
    node_channel,
    node_shard_suffix,
    presence_key,
    room_instance_key,
    stream_key,
)
from server.store.ports import (
    ENDED_TTL_S,
    FENCE_TTL_S,
    PARTIAL_MAX_BYTES,
    Admission,
    BatchResult,
    Cancel,
    Duplicate,
    Entry,
    Fence,
    Fenced,
    NewEntry,
    NotReplicated,
    Progress,
    Queued,
    Request,
    Retention,
    Running,
    SessionInfo,
    Started,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    Turn,
)
from server.store.resp import LeanRedis, LeanScript, LeanSubscriber
from server.supervise import Throttled

log = logging.getLogger(__name__)
_announcements = Throttled(log)
P = ParamSpec("P")
T = TypeVar("T")

#: Errors meaning "Redis cannot be reached right now" (on a cluster: no node answers, or redis-py
#: gave up following a topology change: ClusterError, RedisClusterException).
UNREACHABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError, ClusterError,
                                            RedisClusterException)
#: redis-py's cluster errors that are bugs of ours (keys of several slots in one transaction).
_CLUSTER_BUGS = (CrossSlotTransactionError, InvalidPipelineStack)
CANCELLED_TTL_S = 600
DROPPED_TTL_S = ENDED_TTL_S  # a question dropped from the waiting list is remembered as long as it may wait
ASKER_TTL_S = ENDED_TTL_S  # who asked a generation is kept as long as any question may wait and run
REQUESTS_MAXLEN = 100_000
TOKENS_TTL_S = 2 * 24 * 3600  # a day's token counters are kept through the next day
_POOL_CONNECTIONS = 64
#: The most a room's expiry may be renewed late, beyond ``ROOM_TTL_SECONDS`` (see :class:`Renewals`).
RENEW_SLACK_MAX_S = 60
_POOL_WAIT_S = 10.0
_LUA = resources.files("server.store").joinpath("lua")
#: Error replies of a Redis that runs no write right now (the command was not run): by their first word,
#: and by the classes redis-py makes of some of them (it strips the word from their message).
REFUSALS = frozenset({"NOREPLICAS", "READONLY", "OOM", "MISCONF", "BUSY", "MASTERDOWN", "TRYAGAIN", "LOADING",
                      "CLUSTERDOWN"})
_REFUSAL_CLASSES: tuple[tuple[type[ResponseError], str], ...] = (
    (ReadOnlyError, "READONLY"), (OutOfMemoryError, "OOM"), (MasterDownError, "MASTERDOWN"),
    (TryAgainError, "TRYAGAIN"), (ClusterDownError, "CLUSTERDOWN"))


def store_error(reply: Exception) -> StoreError:
    """The port's exception for an error reply: :class:`Fenced` for a fenced write its generation no
    longer holds, :class:`StoreRefused` when Redis refused to run the command (nothing was written),
    else :class:`StoreError`."""
    message = str(reply)
    if message.startswith("FENCED"):
        return Fenced(message)
    for cls, word in _REFUSAL_CLASSES:
        if isinstance(reply, cls):
            return StoreRefused(f"{word} {message}")
    if message.split(" ", 1)[0] in REFUSALS:
        return StoreRefused(message)
    return StoreError(message)


def translated(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """``method`` raising the ports' exceptions instead of redis-py's."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except ResponseError as exc:  # (before UNREACHABLE: CLUSTERDOWN is both)
            raise store_error(exc) from exc
        except _CLUSTER_BUGS as exc:
            raise StoreError(str(exc)) from exc
        except UNREACHABLE as exc:
            raise StoreUnavailable(str(exc)) from exc

    return call


@dataclass(frozen=True, slots=True)
class Replicas:
    """``REDIS_MIN_REPLICAS``: how many replicas each append batch waits for (``WAIT``), and how long."""

    count: int = 0  # 0: none (appends are acknowledged once the primary has them)
    timeout_ms: int = 1000


class Connections:
    """The clients of one Redis: a pool (``client``), a client for subscriptions, and, when the URL
    allows it, the lean pipelined connection for the hot path (``lean``) and a second one for bulk
    reads (``bulk``). On a Redis Cluster (``sharded``) the client and the listener are
    ``RedisCluster`` clients, and there is no lean connection. With ``replicas`` the appends have a
    lean connection of their own (``appends``): their ``WAIT`` blocks its connection, and nothing else
    must wait behind it (a replica down makes each ``WAIT`` last its whole timeout)."""

    def __init__(self, client: Any, listener: Any, lean: LeanRedis | None = None,
                 bulk: LeanRedis | None = None, *, cluster_url: str | None = None,
                 replicas: Replicas = Replicas(), appends: LeanRedis | None = None) -> None:
        self.client = client
        self.listener = listener
        self.lean = lean
        self.bulk = bulk  # bulk reads' own lean connection (never the one appends are pipelined on)
        self.cluster_url = cluster_url  # set on a Redis Cluster
        self.sharded = cluster_url is not None
        self.replicas = replicas
        self.appends = appends if appends is not None else lean  # the appends' (and their WAIT's) connection

    @classmethod
    def connect(cls, url: str, *, lean: bool = True, timeout_s: float = 10.0,
                replicas: Replicas = Replicas()) -> Connections:
        """The clients of the Redis at ``url``: a Redis Cluster's when it is a node of one."""
        if cluster.is_cluster(url, wait_s=timeout_s):
            log.info("Redis Cluster: commands go to each room's shard, nodes hear each other on shard channels")
            return cls(cluster.connect(url, timeout_s=timeout_s), cluster.connect(url, timeout_s=timeout_s,
                                                                                   listener=True), cluster_url=url,
                       replicas=replicas)
        return cls.connect_single(url, lean=lean, timeout_s=timeout_s, replicas=replicas)

    @classmethod
    def connect_single(cls, url: str, *, lean: bool = True, timeout_s: float = 10.0,
                       replicas: Replicas = Replicas()) -> Connections:
        # redis-py's default pool raises MaxConnectionsError when exhausted: wait instead. A pooled
        # connection that Redis dropped (a restart) fails its next command: that command is sent
        # again on a new connection, twice at most. Timeouts are not retried (the command may
        # have run).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=_POOL_CONNECTIONS, timeout=_POOL_WAIT_S,
            socket_timeout=timeout_s, socket_connect_timeout=5.0, health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(RedisConnectionError,)),
        )
        # The subscriber waits for messages indefinitely: no socket timeout (the default 5 s would
        # cut its reads), but TCP keepalive and periodic health checks instead.
        listener = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5.0,
                                           socket_keepalive=True, health_check_interval=30)
        fast = LeanRedis.from_url(url, timeout_s=timeout_s, connect_timeout_s=5.0) if lean else None
        bulk = LeanRedis.from_url(url, timeout_s=timeout_s, connect_timeout_s=5.0) if fast is not None else None
        appends = (LeanRedis.from_url(url, timeout_s=timeout_s, connect_timeout_s=5.0)
                   if fast is not None and replicas.count else None)
        return cls(aioredis.Redis(connection_pool=pool), listener, fast, bulk, replicas=replicas, appends=appends)

    def script(self, name: str, *, lean: LeanRedis | None = None) -> Script:
        """A script of ``lua/``, run on ``lean`` (default: the hot path's lean connection, when there is one)."""
        return Script(self, _LUA.joinpath(name).read_text(), lean=lean)

    def fanout(self, node: str, room: str) -> list[Any]:
        """The scripts' arguments naming the channels of ``room``'s followers, for a message from
        ``node``: the sender, the channels' prefix and suffix (shard channels on a cluster), the room."""
        return [node, NODE_CHANNEL_PREFIX, node_shard_suffix(room) if self.sharded else "", room]

    async def call(self, *args: Any) -> Any:
        """One command, raw (on the lean connection when there is one; never a blocking one)."""
        if self.lean is None:
            return await self.client.execute_command(*args)
        return await self.lean.execute(*args)

    def subscription(self, channel: str) -> TranslatedSubscription:
        """The messages of ``channel`` (a plain one, not a shard channel)."""
        if self.lean is not None:
            return TranslatedSubscription(self.lean.subscriber(channel))
        return TranslatedSubscription(PubSubSubscription(self.listener.pubsub(), channel))

    async def close(self) -> None:
        for lean in {self.lean, self.bulk, self.appends} - {None}:
            if lean is not None:
                await lean.aclose()
        await self.listener.aclose()
        await self.client.aclose()


class Script:
    """A Lua script, called as ``await script(keys, args)``, or for several calls in one round trip
    with :meth:`many`: on the lean connection when there is one."""

    def __init__(self, connections: Connections, source: str, *, lean: LeanRedis | None = None) -> None:
        lean = lean or connections.lean
        self._lean = None if lean is None else LeanScript(lean, source)
        self._client = connections.client
        self._script = connections.client.register_script(source)
        self._sharded = connections.sharded
        self._source = source
        self._refreshing = asyncio.Lock()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        if self._lean is not None:
            return await self._lean(keys, args)
        return await self._script(keys=keys, args=args)

    async def many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """The replies of each ``(keys, args)`` call, in order; an error reply is returned in place."""
        if self._lean is not None:
            return await self._lean.many(calls)
        if self._sharded:  # each call on its room's shard, all at once (redis-py's cluster pipelines take no scripts)
            return await _each(self._script(keys=keys, args=args) for keys, args in calls)
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._script(keys=keys, args=args, client=pipe)
            return list(await pipe.execute(raise_on_error=False))

    async def many_then_wait(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
                             replicas: Replicas) -> list[tuple[Any, Any]]:
        """Each call's reply with the reply of a ``WAIT`` sent right after it on the same connection (the
        replicas that acknowledged every write of that connection so far, or the error): one ``WAIT`` after
        all the calls on a single Redis, one per call (on its shard's connection) on a cluster."""
        wait = ("WAIT", replicas.count, replicas.timeout_ms)
        if self._sharded:
            return list(await asyncio.gather(*(self._on_shard(keys, args, wait) for keys, args in calls)))
        if self._lean is not None:
            replies = await self._lean.many(calls, then=wait)
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self._script(keys=keys, args=args, client=pipe)
                pipe.execute_command(*wait)
                replies = list(await pipe.execute(raise_on_error=False))
        return [(reply, replies[-1]) for reply in replies[:-1]]

    async def _on_shard(self, keys: Sequence[Any], args: Sequence[Any], wait: Sequence[Any]) -> tuple[Any, Any]:
        """The script, then ``wait``, on one connection of the master that owns the slot of ``keys``: the
        cluster client would send them on two (and a ``WAIT`` to every node). A call that cannot be sent
        there (the master died, its slot moved) refreshes the map of the slots and fails in place."""
        evalsha = ("EVALSHA", self._script.sha, len(keys), *keys, *args)
        try:
            for _ in range(3):
                node = self._client.get_node_from_key(keys[0])
                commands = [PipelineCommand(0, *evalsha), PipelineCommand(1, *wait)]
                await node.execute_pipeline(commands)
                reply, waited = commands[0].result, commands[1].result
                if isinstance(reply, NoScriptError):
                    await node.execute_command("SCRIPT", "LOAD", self._source)
                elif isinstance(reply, MovedError | ReadOnlyError):  # not run: the slot has another master now
                    await self._refresh()
                else:
                    break
            if isinstance(reply, MovedError):  # the map kept moving: nothing was run
                reply = StoreRefused(f"MOVED {reply}")
            return reply, waited
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # (a lost connection: the script may have run)
            with contextlib.suppress(Exception):
                await self._refresh()
            return _failure(exc), exc

    async def _refresh(self) -> None:
        """Ask the cluster for its map of the slots again (once at a time: a shard's every room fails at once)."""
        if self._refreshing.locked():
            async with self._refreshing:  # the refresh under way will do
                return
        async with self._refreshing:
            await self._client.nodes_manager.initialize()


class Renewals:
    """Which rooms' expiry an append renews. Renewing it on every append cost two EXPIREs per script call
    (1-3 us of Redis CPU per message at L20, measured: docs/benchmarks.md, issue 14); instead a room is
    renewed by its first append of each period of ``slack_s(ttl_s)`` seconds, to ``ttl_s + slack`` (a
    stream this node's append creates always gets its expiry: append.lua). A room renewed at ``t0`` is
    not renewed again before its period ends, at most ``slack`` later, so any write ``t`` in between has
    ``t0 + ttl + slack >= t + ttl``: a room expires between ``ttl_s`` and ``ttl_s + slack`` after its
    last write, never earlier. ``slack`` is ``ttl_s / 1000``, at most :data:`RENEW_SLACK_MAX_S`: 0 below
    1,000 s (renewed by every append, as before); 60 s for the default week. Several nodes each keep
    their own periods: each renews no less often."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._renewed: set[str] = set()  # the rooms renewed in the current period
        self._since = clock()  # when the current period began

    @staticmethod
    def slack_s(ttl_s: int) -> int:
        return min(RENEW_SLACK_MAX_S, ttl_s // 1000)

    def ttl_s(self, ttl_s: int) -> int:
        """The expiry a renewal sets: ``ttl_s`` and the slack (0: none)."""
        return ttl_s + self.slack_s(ttl_s) if ttl_s > 0 else 0

    def due(self, rooms: Iterable[str], ttl_s: int) -> tuple[set[str], float]:
        """The rooms of ``rooms`` to renew now, and the period they are renewed in (for :meth:`renewed`)."""
        slack = self.slack_s(ttl_s)
        if slack == 0:
            return set(rooms), self._since
        now = self._clock()
        if now - self._since >= slack:
            self._renewed.clear()
            self._since = now
        return {room for room in rooms if room not in self._renewed}, self._since

    def renewed(self, rooms: Iterable[str], since: float) -> None:
        """``rooms`` were renewed by an append that :meth:`due` named them to in period ``since``."""
        if since == self._since:
            self._renewed.update(rooms)


class RedisRoomLog:
    """A room log; with ``bulk``, its reads go on the bulk connection (:attr:`Connections.bulk`).

    With :attr:`Connections.replicas` (``REDIS_MIN_REPLICAS``), a batch's script calls are followed by a
    ``WAIT`` on their connection; a room's outcomes stand only when enough replicas acknowledged it in
    time (else every entry appended or found again is :class:`NotReplicated`, and its ``before`` is not
    reported), and only then is the room's newest id announced to its other followers (``announce.lua``:
    the append script announces nothing itself then), so that no node delivers an entry before it is
    replicated."""

    def __init__(self, connections: Connections, *, bulk: bool = False) -> None:
        self._connections = connections
        self._client = connections.client
        self._lean = connections.bulk if bulk else connections.lean
        self._replicas = connections.replicas
        self._append = connections.script("append.lua", lean=connections.appends)
        self._renewals = Renewals()
        self._announce = connections.script("announce.lua", lean=connections.appends)

    @translated
    async def append_batch(self, entries: Sequence[NewEntry], retention: Retention, node: str) -> BatchResult:
        rooms: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            rooms.setdefault(entry.room, []).append(index)
        epoch = secrets.token_hex(8)
        waits = self._replicas.count > 0
        renewals, since = self._renewals.due(rooms, retention.ttl_s)
        groups = [[room] for room in rooms] if self._connections.sharded else [list(rooms)]
        calls = [self._call([(room, [entries[i] for i in rooms[room]], room in renewals) for room in group],
                            retention, node, epoch, waits) for group in groups]
        if waits:
            replies = await self._replicated(
                rooms, [(room_reply, acked) for group, (reply, acked)
                        in zip(groups, await self._append.many_then_wait(calls, self._replicas), strict=True)
                        for room_reply in _per_room(reply, group)], node)
        else:
            replies = [room_reply for group, reply in zip(groups, await self._append.many(calls), strict=True)
                       for room_reply in _per_room(reply, group)]
        before: dict[str, bytes] = {}
        ids: list[bytes | Duplicate | Exception] = [b""] * len(entries)
        for (room, indexes), reply in zip(rooms.items(), replies, strict=True):
            if isinstance(reply, Exception):
                renewals.discard(room)
                for i in indexes:
                    ids[i] = _failure(reply)
                continue
            if reply[0] != b"":  # (not replicated: its ``before`` is not known to be)
                before[room] = reply[0]
            if not any(isinstance(outcome, bytes) for outcome in reply[1:]):
                renewals.discard(room)  # (nothing appended: the script renewed nothing)
            for i, outcome in zip(indexes, reply[1:], strict=True):
                ids[i] = (Duplicate(outcome[0], outcome[1]) if isinstance(outcome, list)
                          else _failure(outcome) if isinstance(outcome, Exception) else outcome)
        self._renewals.renewed(renewals, since)
        return BatchResult(before=before, ids=ids)

    async def _replicated(self, rooms: Mapping[str, list[int]], replies: list[tuple[Any, Any]],
                          node: str) -> list[Any]:
        """Each room's reply, kept when enough replicas acknowledged it, else with :class:`NotReplicated` in
        place of each entry appended or found again (and no ``before``); then the rooms that were replicated
        are announced to their other followers."""
        out: list[Any] = []
        announce: list[tuple[list[Any], list[Any]]] = []
        for room, (reply, acked) in zip(rooms, replies, strict=True):
            if isinstance(reply, Exception):
                out.append(reply)
                continue
            if not isinstance(acked, int) or acked < self._replicas.count:
                short = NotReplicated(f"{acked if isinstance(acked, int) else 0} of {self._replicas.count} replicas"
                                      f" acknowledged the write within {self._replicas.timeout_ms} ms"
                                      + (f" ({acked})" if isinstance(acked, Exception) else ""))
                out.append([b"", *(outcome if isinstance(outcome, Exception) else short for outcome in reply[1:])])
                continue
            out.append(reply)
            appended = [outcome for outcome in reply[1:] if isinstance(outcome, bytes)]
            sender, prefix, suffix, _ = self._connections.fanout(node, room)
            announce.append(([followers_key(room)], [sender, prefix, suffix, room, appended[-1] if appended
                                                     else reply[0]]))
        if announce:
            try:
                for failed in await self._announce.many(announce):
                    if isinstance(failed, Exception):
                        raise failed
            except Exception as exc:  # stored and replicated: the other nodes hear of it at the room's next append
                _announcements.warning("announcing replicated appends failed", exc)
        return out

    def _call(self, rooms: list[tuple[str, list[NewEntry], bool]], retention: Retention, node: str,
              epoch: str, waits: bool) -> tuple[list[Any], list[Any]]:
        """One call of ``append.lua`` for ``rooms``: (room, its entries, whether to renew its expiry)."""
        keys: list[Any] = []
        args: list[Any] = [retention.maxlen, self._renewals.ttl_s(retention.ttl_s), node, epoch, NODE_CHANNEL_PREFIX,
                           int(waits)]
        for room, entries, renew in rooms:
            _, _, suffix, _ = self._connections.fanout(node, room)
            args += (room, suffix, int(renew), len(keys) + 1, len(entries))
            keys += (stream_key(room), epoch_key(room), followers_key(room))
            for entry in entries:
                window = retention.dedupe_s if entry.dedupe_s is None else entry.dedupe_s
                dedupe = 0
                if entry.cid is not None and window > 0:
                    keys.append(dedupe_key(room, entry.participant, entry.cid))
                    dedupe = len(keys)
                fence, held = 0, ""
                if entry.fence is not None:
                    keys += (llm_lock_key(room), llm_partial_key(room), llm_partial_text_key(room))
                    fence, held = len(keys) - 2, fence_value(entry.fence)
                args += (entry.participant, entry.body, dedupe, max(window, 1), fence, held)
        return keys, args

    @translated
    async def range(self, room: str, start: str | bytes = "-", end: str | bytes = "+",
                    count: int | None = None) -> list[Entry]:
        if self._lean is not None:
            return _entries(await self._lean.execute("XRANGE", stream_key(room), start, end, *_count(count)))
        return list(await self._client.xrange(stream_key(room), start, end, count=count))

    @translated
    async def revrange(self, room: str, end: str | bytes = "+", start: str | bytes = "-",
                       count: int | None = None) -> list[Entry]:
        if self._lean is not None:
            return _entries(await self._lean.execute("XREVRANGE", stream_key(room), end, start, *_count(count)))
        return list(await self._client.xrevrange(stream_key(room), end, start, count=count))

    @translated
    async def bodies(self, room: str, after: bytes, count: int) -> list[tuple[bytes, bytes]]:
        if self._lean is None:
            return [(entry_id, fields.get(b"body", b""))
                    for entry_id, fields in await self._client.xrange(stream_key(room), b"(" + after, "+",
                                                                      count=count)]
        reply = await self._lean.execute("XRANGE", stream_key(room), b"(" + after, "+", "COUNT", count)
        return [(entry_id, _field(fields, b"body")) for entry_id, fields in reply]

    @translated
    async def last_id(self, room: str) -> bytes:
        newest = await self._client.xrevrange(stream_key(room), count=1)
        return newest[0][0] if newest else b"0-0"

    @translated
    async def exists(self, room: str) -> bool:
        return bool(await self._client.exists(stream_key(room)))

    @translated
    async def delete(self, room: str) -> bool:
        # One transaction: an append between two DELs would give the stream an epoch the second DEL
        # removes, and the next append another one (forgetting the cids of the first).
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.exists(stream_key(room))
            pipe.delete(stream_key(room), epoch_key(room))
            existed, _ = await pipe.execute()
        return bool(existed)


class RedisRoster:
    def __init__(self, connections: Connections) -> None:
        self._client = connections.client
        self._session = connections.script("session.lua")
        self._sweep = connections.script("sweep.lua")

    @translated
    async def enter(self, room: str, field: str, role: str, ttl_s: int, most: int = 0,
                    cursor: bytes | None = None) -> SessionInfo:
        epoch, first, removed, roster, full, newest, kept, running, waiting = await self._session(
            [stream_key(room), epoch_key(room), presence_key(room), followers_key(room), llm_lock_key(room),
             llm_partial_key(room), llm_partial_text_key(room), llm_waiting_key(room)],
            [field, role, ttl_s, most, cursor or b""])
        pairs = [(roster[i].decode(), roster[i + 1].decode()) for i in range(0, len(roster), 2)]
        return SessionInfo(epoch.decode() if epoch else None, first or None, removed, pairs, bool(full),
                           newest_id=newest or None, cursor_kept=None if kept is None else bool(kept),
                           generations=_running(running),
                           queued=tuple(Queued(waiting[i].decode(), waiting[i + 1].decode())
                                        for i in range(0, len(waiting), 2)))

    @translated
    async def restore(self, entries: Sequence[tuple[str, str, str]], ttl_s: int) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for room, field, role in entries:
                pipe.hset(presence_key(room), field, role)
                if ttl_s > 0:
                    pipe.expire(presence_key(room), ttl_s)
            await pipe.execute()

    @translated
    async def sweep(self, rooms: Sequence[str]) -> list[tuple[str, str, str]]:
        if not rooms:
            return []
        replies = await self._sweep.many([([presence_key(room), followers_key(room)], []) for room in rooms])
        removed = []
        for room, flat in zip(rooms, replies, strict=True):
            if isinstance(flat, Exception):
                raise flat
            removed += [(room, flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]
        return removed

    @translated
    async def leave(self, room: str, field: str) -> None:
        await self._client.hdel(presence_key(room), field)


class RedisNodeBus:
    """On a Redis Cluster a node's subscription is its shard channels (:class:`ShardChannels`): following
    a room subscribes to the node's channel of the room first (confirmed), then adds the node to the
    room's followers; unfollowing does the reverse."""

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._client = connections.client
        self._follow = connections.script("follow.lua")
        self._ephemeral = connections.script("ephemeral.lua")
        self._channels: dict[str, ShardChannels] = {}  # node -> its current shard channels (cluster)
        self._followed: dict[str, set[str]] = {}  # node -> the rooms it follows (cluster)

    @translated
    async def follow(self, rooms: Sequence[str], node: str, ttl_s: int) -> list[str]:
        if not rooms:
            return []
        if self._connections.sharded:
            self._followed.setdefault(node, set()).update(rooms)
            channels = self._channels.get(node)
            if channels is not None:
                await channels.add(rooms)
        replies = await self._follow.many([([followers_key(room)], [node, ttl_s * 1000]) for room in rooms])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [room for room, new in zip(rooms, replies, strict=True) if new]

    @translated
    async def unfollow(self, rooms: Sequence[str], node: str) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.zrem(followers_key(room), node)
            await pipe.execute()
        if self._connections.sharded:
            self._followed.get(node, set()).difference_update(rooms)
            channels = self._channels.get(node)
            if channels is not None:
                await channels.remove(rooms)

    @translated
    async def publish(self, messages: Mapping[str, Sequence[bytes]], node: str) -> None:
        fanout = self._connections.fanout
        replies = await self._ephemeral.many([([followers_key(room)], [*fanout(node, room), *batch])
                                              for room, batch in messages.items()])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply

    def subscription(self, node: str) -> TranslatedSubscription:
        url = self._connections.cluster_url
        if url is None:
            return self._connections.subscription(node_channel(node))
        followed = self._followed.setdefault(node, set())
        channels = self._channels[node] = ShardChannels(self._connections.listener, url, node, followed)
        return TranslatedSubscription(channels)


class RedisRoomInstances:
    def __init__(self, connections: Connections) -> None:
        self._client = connections.client

    @translated
    async def open(self, room: str, ttl_s: int) -> str:
        key = room_instance_key(room)
        async with self._client.pipeline(transaction=True) as pipe:  # MULTI: one step
            pipe.set(key, secrets.token_hex(8), nx=True, ex=ttl_s)
            pipe.expire(key, ttl_s, gt=True)  # never shortened
            pipe.get(key)
            *_, instance = await pipe.execute()
        return str(instance.decode())

    @translated
    async def current(self, room: str) -> str | None:
        instance = await self._client.get(room_instance_key(room))
        return None if instance is None else str(instance.decode())

    @translated
    async def delete(self, room: str) -> bool:
        return bool(await self._client.delete(room_instance_key(room)))


class RedisLocks:
    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self._script = connections.script("jobs.lua")

    @translated
    async def lock(self, room: str, rid: str, lease_ms: int, asker: str = "") -> Fence | None:
        token = await self._script([llm_lock_key(room), llm_fence_key(room), llm_asker_key(room, rid)],
                                   ["lock", rid, lease_ms, FENCE_TTL_S, asker, ASKER_TTL_S])
        return Fence(room, rid, int(token)) if token else None

    @translated
    async def take_turn(self, request: Request, lease_ms: int, policy: str, most_waiting: int,
                        wait_ms: int, once: bool = False) -> Turn:
        room, rid = request.room, request.rid
        token, position, interrupted, dropped, asked = await self._script(
            [llm_lock_key(room), llm_fence_key(room), llm_asker_key(room, rid), llm_waiting_key(room),
             llm_dropped_key(room)],
            ["turn", rid, lease_ms, FENCE_TTL_S, request.asker, ASKER_TTL_S, policy, most_waiting, request.reply_to,
             request.regenerates or "-", wait_ms, DROPPED_TTL_S, int(once)])
        return Turn(Fence(room, rid, int(token)) if token else None, int(position),
                    interrupted.decode() if interrupted else "",
                    tuple(Queued(dropped[i].decode(), dropped[i + 1].decode()) for i in range(0, len(dropped), 2)),
                    bool(asked))

    @translated
    async def rename(self, fence: Fence, rid: str, asker: str = "", once: bool = False) -> Turn:
        done = await self._script([llm_lock_key(fence.room), llm_asker_key(fence.room, rid)],
                                  ["rename", fence_value(fence), rid, asker, ASKER_TTL_S, int(once)])
        if done == 2:
            return Turn(asked=True)
        return Turn(Fence(fence.room, rid, fence.token) if done else None)

    @translated
    async def confirm(self, room: str, rid: str, fence: Fence | None, lease_ms: int) -> bool:
        value = fence_value(fence) if fence is not None else ""
        return bool(await self._script([llm_lock_key(room), llm_waiting_key(room)], ["confirm", rid, value, lease_ms]))

    @translated
    async def start(self, room: str, rid: str, lease_ms: int) -> Started:
        answered, cancelled, token, by, waits = await self._script(
            [llm_lock_key(room), llm_cancelled_key(room, rid), dedupe_key(room, LLM_ROLE, rid),
             llm_ended_key(room, rid), llm_fence_key(room), llm_waiting_key(room), llm_dropped_key(room)],
            ["start", rid, lease_ms, FENCE_TTL_S])
        return Started(bool(answered), bool(cancelled), Fence(room, rid, int(token)) if token else None,
                       by.decode() if by else None, bool(waits))

    @translated
    async def withdraw(self, room: str, rid: str) -> bool:
        return bool(await self._script([llm_lock_key(room), llm_waiting_key(room), llm_dropped_key(room)],
                                       ["withdraw", rid, DROPPED_TTL_S, LLM_TURNS_CHANNEL, room]))

    @translated
    async def pass_turn(self, room: str) -> int:
        return int(await self._script([llm_lock_key(room), llm_waiting_key(room)], ["pass", LLM_TURNS_CHANNEL, room]))

    def turns(self) -> TranslatedSubscription:
        return TranslatedSubscription(PubSubSubscription(self._connections.listener.pubsub(), LLM_TURNS_CHANNEL))

    @translated
    async def renew(self, fences: Sequence[Fence], lease_ms: int) -> list[bool]:
        if not fences:
            return []
        replies = await self._script.many([([llm_lock_key(fence.room), llm_partial_key(fence.room),
                                             llm_partial_text_key(fence.room)], ["renew", fence_value(fence), lease_ms])
                                           for fence in fences])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [bool(reply) for reply in replies]

    @translated
    async def release(self, fence: Fence) -> bool:
        return bool(await self._script([llm_lock_key(fence.room), llm_waiting_key(fence.room)],
                                       ["release", fence_value(fence), LLM_TURNS_CHANNEL, fence.room]))

    @translated
    async def frames(self, fence: Fence, messages: Sequence[bytes], node: str,
                     progress: Progress | None = None) -> bool:
        room = fence.room
        kept = (progress.reply_to, progress.attempt, progress.seq, progress.text) if progress else ("", 1, -1, "")
        return bool(await self._script([llm_lock_key(room), llm_partial_key(room), llm_partial_text_key(room),
                                        followers_key(room)],
                                       ["frames", fence_value(fence), *self._connections.fanout(node, room),
                                        *kept, PARTIAL_MAX_BYTES, *messages]))

    @translated
    async def cancel(self, room: str, rid: str, by: str = "", asker_only: bool = False) -> tuple[Cancel, str]:
        done, reply_to = await self._script(
            [llm_lock_key(room), llm_cancelled_key(room, rid), llm_asker_key(room, rid), llm_waiting_key(room),
             llm_dropped_key(room)],
            ["cancel", rid, LLM_CANCEL_CHANNEL, CANCELLED_TTL_S, by, int(asker_only), DROPPED_TTL_S])
        return ({0: Cancel.NOT_RUNNING, 1: Cancel.CANCELLED, 2: Cancel.NOT_ASKER, 3: Cancel.DEQUEUED}[int(done)],
                reply_to.decode())

    def cancellations(self) -> TranslatedSubscription:
        return TranslatedSubscription(PubSubSubscription(self._connections.listener.pubsub(), LLM_CANCEL_CHANNEL))

    @translated
    async def answer(self, room: str, rid: str) -> bytes | None:
        marker, epoch = await self._connections.call("MGET", dedupe_key(room, LLM_ROLE, rid), epoch_key(room))
        if not marker:
            return None
        marker_epoch, _, entry_id = bytes(marker).rpartition(b" ")
        epoch = bytes(epoch).split(b" ", 1)[0] if epoch else epoch  # ("<epoch> <newest id>": append.lua)
        if marker_epoch and marker_epoch != epoch:  # remembered from an earlier epoch of the stream
            return None
        return entry_id


class RedisUsage:
    """The cost guard's counters (``usage.lua``)."""

    def __init__(self, connections: Connections) -> None:
        self._script = connections.script("usage.lua")

    @translated
    async def admit(self, room: str, rid: str, window_ms: int, most_generations: int, day: int,
                    most_tokens: int) -> Admission:
        over, retry_ms = await self._script([llm_generations_key(room), llm_room_tokens_key(room, day)],
                                            ["admit", rid, window_ms, most_generations, most_tokens])
        return Admission({0: "", 1: "generations", 2: "tokens"}[int(over)], int(retry_ms))

    @translated
    async def add_tokens(self, room: str, day: int, tokens: int) -> None:
        replies = await self._script.many([([llm_room_tokens_key(room, day)], ["add", tokens, TOKENS_TTL_S]),
                                           ([llm_tokens_key(day)], ["add", tokens, TOKENS_TTL_S])])
        for reply in replies:
            if isinstance(reply, Exception):
                raise _failure(reply)

    @translated
    async def room_usage(self, room: str, window_ms: int, day: int) -> tuple[int, int]:
        generations, tokens = await self._script([llm_generations_key(room), llm_room_tokens_key(room, day)],
                                                 ["usage", window_ms])
        return int(generations), int(tokens)

    @translated
    async def tokens(self, day: int) -> int:
        return int(await self._script([llm_tokens_key(day)], ["tokens"]))


def _running(reply: Any) -> tuple[Running, ...]:
    """session.lua's running generation: ``{rid, reply_to, attempt, seq, text or false}``, or false."""
    if not reply:
        return ()
    rid, reply_to, attempt, seq, text = reply
    return (Running(rid.decode(), reply_to.decode(), int(attempt), int(seq),
                    text.decode() if text else None if text is None else ""),)


def fence_value(fence: Fence) -> str:
    """What the room's lock holds while ``fence`` holds it."""
    return f"{fence.token} {fence.rid}"


class RedisRequestQueue:
    def __init__(self, connections: Connections, queue: str) -> None:
        self._connections = connections
        self._client = connections.client
        self._key = llm_requests_key(queue)

    @translated
    async def add(self, request: Request) -> None:
        await self._client.xadd(self._key, _fields(request), maxlen=REQUESTS_MAXLEN, approximate=True)

    @translated
    async def ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self._key, LLM_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @translated
    async def read(self, consumer: str, count: int, block_ms: int) -> list[Request]:
        reply = await self._client.xreadgroup(LLM_GROUP, consumer, {self._key: ">"}, count=count, block=block_ms)
        return requests_of(reply)

    @translated
    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Request]:
        reply = await self._client.xautoclaim(self._key, LLM_GROUP, consumer, min_idle_ms, "0-0", count=count)
        entries = [entry for entry in reply[1] if entry and entry[1]]
        deleted = _deleted_ids(reply)
        if deleted:
            await self._ack(deleted)
        if not entries:
            return []
        pending = await self._client.xpending_range(self._key, LLM_GROUP, min=entries[0][0], max=entries[-1][0],
                                                    count=len(entries) + 100, consumername=consumer)
        attempts = {item["message_id"]: int(item["times_delivered"]) for item in pending}
        return _requests(entries, attempts)

    @translated
    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self._client.xclaim(self._key, LLM_GROUP, consumer, 0, list(entry_ids), justid=True)

    @translated
    async def ack(self, entry_ids: Sequence[str]) -> None:
        await self._ack(entry_ids)

    async def _ack(self, entry_ids: Sequence[str | bytes]) -> None:
        if entry_ids:
            await self._connections.call("XACK", self._key, LLM_GROUP, *entry_ids)
            await self._connections.call("XDEL", self._key, *entry_ids)

    @translated
    async def forget_consumer(self, consumer: str) -> None:
        pending = await self._client.xpending_range(self._key, LLM_GROUP, min="-", max="+", count=1,
                                                    consumername=consumer)
        if not pending:
            await self._client.xgroup_delconsumer(self._key, LLM_GROUP, consumer)


class RedisStore:
    """Every port on one Redis."""

    kind = "redis"

    def __init__(self, connections: Connections) -> None:
        self._connections = connections
        self.log = RedisRoomLog(connections)
        self.bulk_log = RedisRoomLog(connections, bulk=True)
        self.roster = RedisRoster(connections)
        self.bus = RedisNodeBus(connections)
        self.instances = RedisRoomInstances(connections)
        self.locks = RedisLocks(connections)
        self.usage = RedisUsage(connections)
        self._queues: dict[str, RedisRequestQueue] = {}

    @classmethod
    def connect(cls, url: str, *, lean: bool = True, timeout_s: float = 10.0,
                replicas: Replicas = Replicas()) -> RedisStore:
        """The store on the Redis at ``url`` (``lean=False``: redis-py for everything, as for the URLs
        the lean client does not take); a reply later than ``timeout_s`` fails its command; each append
        batch waits for ``replicas``."""
        return cls(Connections.connect(url, lean=lean, timeout_s=timeout_s, replicas=replicas))

    def requests(self, queue: str) -> RedisRequestQueue:
        if queue not in self._queues:
            self._queues[queue] = self._queue(queue)
        return self._queues[queue]

    def _queue(self, queue: str) -> RedisRequestQueue:
        return RedisRequestQueue(self._connections, queue)

    @translated
    async def ping(self) -> None:
        if self._connections.sharded:  # every master (a replica down takes no room's writes away)
            await self._connections.client.ping(target_nodes=RedisCluster.PRIMARIES)
            return
        await self._connections.client.ping()

    async def close(self) -> None:
        await self._connections.close()


class PubSubSubscription:
    """One channel through redis-py's pub/sub."""

    def __init__(self, pubsub: Any, channel: str) -> None:
        self._pubsub = pubsub
        self._channel = channel

    async def subscribe(self) -> None:
        if isinstance(self._pubsub, ClusterPubSub):
            await self._pubsub.cluster.initialize()  # (it routes by the slot map, made here)
        await self._pubsub.subscribe(self._channel)

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        message = await self._pubsub.get_message(timeout=timeout_s)
        if message is None:
            return None
        data = message["data"]
        return message["type"], data if isinstance(data, bytes) else b""

    async def close(self) -> None:
        await self._pubsub.aclose()


class TranslatedSubscription:
    """A subscription raising the ports' exceptions."""

    def __init__(self, inner: PubSubSubscription | LeanSubscriber | ShardChannels) -> None:
        self._inner = inner

    @translated
    async def subscribe(self) -> None:
        await self._inner.subscribe()

    @translated
    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        return await self._inner.next(timeout_s)

    async def close(self) -> None:
        with contextlib.suppress(*UNREACHABLE):
            await self._inner.close()


def _fields(request: Request) -> dict[str, str]:
    fields = {"room": request.room, "rid": request.rid, "reply_to": request.reply_to, "asker": request.asker}
    if request.regenerates:
        fields["regenerates"] = request.regenerates
    return fields


def requests_of(reply: Any) -> list[Request]:
    return [request for _, entries in reply or [] for request in _requests(entries, attempts={})]


def _requests(entries: list[Any], attempts: dict[bytes, int]) -> list[Request]:
    requests = []
    for entry_id, raw in entries:
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        requests.append(Request(room=fields.get("room", ""), rid=fields.get("rid", ""),
                                reply_to=fields.get("reply_to", ""), asker=fields.get("asker", ""),
                                entry_id=entry_id.decode(), attempt=attempts.get(entry_id, 1),
                                regenerates=fields.get("regenerates", "")))
    return requests


def _deleted_ids(reply: list[Any]) -> list[bytes]:
    """XAUTOCLAIM (Redis >= 7) also lists pending ids whose entries were deleted."""
    return list(reply[2]) if len(reply) > 2 else []


async def _each(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """The replies of ``calls``, run at once, each error in place: an error reply as it is, a shard that
    could not be reached as :class:`StoreUnavailable` (the other shards' calls ran)."""
    replies = await asyncio.gather(*calls, return_exceptions=True)
    for n, reply in enumerate(replies):
        if isinstance(reply, BaseException) and not isinstance(reply, ResponseError):
            if not isinstance(reply, Exception):
                raise reply  # cancelled
            replies[n] = _failure(reply)
    return replies


def _per_room(reply: Any, rooms: Sequence[str]) -> list[Any]:
    """The replies of one call of append.lua for ``rooms``, one per room (its error for each, when it failed)."""
    if isinstance(reply, Exception):
        return [reply] * len(rooms)
    if not isinstance(reply, list) or len(reply) != len(rooms):
        return [StoreError(f"append.lua answered {len(reply) if isinstance(reply, list) else reply!r} replies"
                           f" for {len(rooms)} rooms")] * len(rooms)
    return reply


def _failure(exc: Exception) -> Exception:
    """The port's exception for what a call raised or replied."""
    if isinstance(exc, StoreError | StoreUnavailable):
        return exc
    if isinstance(exc, ResponseError):
        return store_error(exc)
    if isinstance(exc, _CLUSTER_BUGS):
        return StoreError(str(exc))
    if isinstance(exc, UNREACHABLE):
        return StoreUnavailable(str(exc))
    return exc


def _count(count: int | None) -> tuple[Any, ...]:
    return () if count is None else ("COUNT", count)


def _entries(reply: list[Any]) -> list[Entry]:
    return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in reply]


def _field(flat: list[bytes], name: bytes) -> bytes:
    """The value of ``name`` in a flat ``[field, value, ...]`` list (b"" when absent)."""
    for i in range(0, len(flat) - 1, 2):
        if flat[i] == name:
            return flat[i + 1]
    return b""
