"""The rooms' streams: the one module that talks to Redis.

A room's messages live in the Redis Stream ``chat:session:<room>`` as entries with the fields
``participant`` (the sender's role) and ``body`` (the broadcast envelope as JSON, without
``hd.id``). Guarantees the rest of the server relies on:

- :meth:`StreamStore.append_batch` appends its items atomically and in list order (one Lua
  script call), so a room's entries get increasing ids in the order they were submitted. For
  each room it also reports the newest id the stream held *before* the batch: a caller that has
  delivered exactly up to that id may deliver the batch from memory, with no read.
- Each batch tells every other live node that follows a touched room (the set
  ``chat:room-nodes:<room>``, see :meth:`StreamStore.register`) by publishing
  ``"<room> <newest id>"`` on the node's channel ``chat:node:<node>``, which its
  :class:`Subscriber` hears. A node is alive while its key ``chat:node:<node>:alive`` exists
  (:meth:`StreamStore.heartbeat`); appends forget nodes that are not.
- :meth:`StreamStore.range` returns entries oldest first, :meth:`StreamStore.revrange` newest
  first; both cost O(log N + count), so bounded reads stay cheap on long streams.
- Every append trims the stream approximately to ``maxlen`` entries and renews the key's
  expiry to ``ttl_s`` (0 = no trimming / no expiry).
- Each stream has an epoch (``chat:epoch:<room>``), a random id set when an append finds the
  stream empty or absent: a cursor from another epoch does not belong to this stream.
- An entry with a cid is stored at most once per room, sender and cid within the dedupe window:
  the check and the append are one step of the same script (:class:`Duplicate`).
- Frames that are not stored (presence, generation deltas) reach the other nodes of a room on
  the same channels as the announcements, ordered with them (:meth:`StreamStore.ephemeral`).
- A room's presence roster (``chat:presence:<room>``) maps ``<node>/<connection>`` to a role;
  :meth:`StreamStore.session` drops the connections of nodes that are no longer alive.

The embedded mode runs the same code on an in-process fakeredis server instead of a Redis URL. On
a real Redis (``redis://`` URLs), what runs per message or per generation - the append and ephemeral
scripts, stream ranges (catch-up, replays, history pages, prompts), :meth:`StreamStore.script` and
:meth:`StreamStore.call` - goes through :mod:`server.resp`'s lean pipelined connection instead of
redis-py's pool, and the node's announcements arrive on a lean subscriber connection.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol.names import STREAM_KEY_PREFIX, stream_key
from server.resp import LeanRedis, LeanScript, LeanSubscriber

Entry = tuple[bytes, dict[bytes, bytes]]

#: Errors meaning "Redis cannot be reached right now" (the client gets ``unavailable``).
UNREACHABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

NODE_PREFIX = "chat:node:"
ROOM_NODES_PREFIX = "chat:room-nodes:"
EPOCH_PREFIX = "chat:epoch:"
PRESENCE_PREFIX = "chat:presence:"
CID_PREFIX = "chat:cid:"
_POOL_CONNECTIONS = 64
_POOL_WAIT_S = 10.0
_SCRIPTS = resources.files("server")


@dataclass(frozen=True, slots=True)
class NewEntry:
    key: str
    participant: str
    body: bytes
    cid: str | None = None  # the client's message id: stored once per room, participant and cid
    dedupe_s: int | None = None  # how long the cid is remembered (None: the batch's default)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An entry that was not appended: the same cid was stored within the dedupe window."""

    id: bytes  # the original entry's id
    body: bytes  # the original entry's body (the new one when the original was trimmed away)


@dataclass(frozen=True, slots=True)
class BatchResult:
    before: dict[str, bytes]  # stream key -> newest id before the batch (b"0-0": none)
    ids: list[bytes | Duplicate | Exception]  # per entry, in submission order


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a connection entering a room learns, read in one step with its roster entry."""

    epoch: str | None  # None: the room has no stream
    first_id: bytes | None  # the oldest retained entry
    removed: int | None  # how many entries were ever trimmed or deleted (None: unknown)
    roster: list[tuple[str, str]]  # (node/connection, role) of every connection on a live node
    full: bool = False  # the room held the most connections allowed: this one was not added


class StreamStore:
    def __init__(self, client: Any, listener_client: Any, *, embedded: bool, lean: LeanRedis | None = None) -> None:
        self._client = client  # shared pool: ranges, rosters, pings...
        self._listener_client = listener_client  # its own connection: the notification subscriber
        self._lean = lean  # one pipelined connection for the hot path (real Redis only)
        self._append = self._script("append.lua")
        self._session = client.register_script(_SCRIPTS.joinpath("session.lua").read_text())
        self._ephemeral = self._script("ephemeral.lua")
        self._sweep = client.register_script(_SCRIPTS.joinpath("sweep.lua").read_text())
        self.embedded = embedded

    def _script(self, name: str) -> Any:
        return self.script(_SCRIPTS.joinpath(name).read_text())

    def script(self, source: str) -> Any:
        """A Lua script, called as ``await script(keys=[...], args=[...])``: on the lean connection
        when there is one (for the scripts run per message or per generation)."""
        return self._client.register_script(source) if self._lean is None else LeanScript(self._lean, source)

    async def call(self, *args: Any) -> Any:
        """One command, raw (on the lean connection when there is one; never a blocking one)."""
        if self._lean is None:
            return await self._client.execute_command(*args)
        return await self._lean.execute(*args)

    @classmethod
    def connect(cls, url: str | None, *, lean: bool = True) -> StreamStore:
        """A store on the Redis at ``url``, or on a new in-process fakeredis server when None
        (``lean=False``: redis-py for everything, as for the URLs the lean client does not take)."""
        if url is None:
            import fakeredis

            server = fakeredis.FakeServer()
            return cls(fakeredis.FakeAsyncRedis(server=server), fakeredis.FakeAsyncRedis(server=server),
                       embedded=True)
        # redis-py's default pool raises MaxConnectionsError when exhausted: wait instead. A pooled
        # connection that Redis dropped (a restart) fails its next command: that command is sent
        # again on a new connection, twice at most. Timeouts are not retried (the command may
        # have run).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=_POOL_CONNECTIONS, timeout=_POOL_WAIT_S,
            socket_timeout=10.0, socket_connect_timeout=5.0, health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(RedisConnectionError,)),
        )
        # The subscriber waits for messages indefinitely: no socket timeout (the default 5 s would
        # cut its reads), but TCP keepalive and periodic health checks instead.
        listener = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5.0,
                                           socket_keepalive=True, health_check_interval=30)
        fast = LeanRedis.from_url(url, timeout_s=10.0, connect_timeout_s=5.0) if lean else None
        return cls(aioredis.Redis(connection_pool=pool), listener, embedded=False, lean=fast)

    @property
    def redis(self) -> Any:
        """The shared client, for the modules that keep their own keys (:mod:`server.llm.jobs`)."""
        return self._client

    @property
    def listener(self) -> Any:
        """The client whose connections wait on pub/sub channels."""
        return self._listener_client

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.aclose()
        await self._listener_client.aclose()
        await self._client.aclose()

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def append_batch(self, entries: Sequence[NewEntry], *, maxlen: int, ttl_s: int, node: str,
                           dedupe_s: int = 0) -> BatchResult:
        """Append ``entries`` in order, in one round trip."""
        keys: dict[str, int] = {}
        args: list[Any] = [maxlen, ttl_s, node, secrets.token_hex(8)]
        for entry in entries:
            index = keys.setdefault(entry.key, len(keys) + 1)
            window = dedupe_s if entry.dedupe_s is None else entry.dedupe_s
            dedupe = "" if entry.cid is None or window <= 0 else cid_key(entry.key, entry.participant, entry.cid)
            args += (index, entry.participant, entry.body, dedupe, max(window, 1))
        reply = await self._append(keys=list(keys), args=args)
        ids = [Duplicate(item[0], item[1]) if isinstance(item, list) else item for item in reply[len(keys):]]
        return BatchResult(before=dict(zip(keys, reply, strict=False)), ids=ids)

    async def session(self, room: str, field: str, role: str, ttl_s: int, most: int = 0) -> SessionInfo:
        """Add ``field`` (``node/connection``; "" to only read) to the room's roster as ``role``,
        unless the room already holds ``most`` connections (0 = no limit; then ``full`` is set)."""
        epoch, first, removed, roster, full = await self._session(
            keys=[stream_key(room), EPOCH_PREFIX + room, PRESENCE_PREFIX + room], args=[field, role, ttl_s, most])
        pairs = [(roster[i].decode(), roster[i + 1].decode()) for i in range(0, len(roster), 2)]
        return SessionInfo(epoch.decode() if epoch else None, first or None, removed, pairs, bool(full))

    async def restore_roster(self, entries: Sequence[tuple[str, str, str]], ttl_s: int) -> None:
        """Put ``(room, node/connection, role)`` entries back in their rosters."""
        async with self._client.pipeline(transaction=False) as pipe:
            for room, field, role in entries:
                pipe.hset(PRESENCE_PREFIX + room, field, role)
                if ttl_s > 0:
                    pipe.expire(PRESENCE_PREFIX + room, ttl_s)
            await pipe.execute()

    async def sweep(self, rooms: Sequence[str]) -> list[tuple[str, str, str]]:
        """Drop the roster entries of dead nodes in ``rooms``: ``(room, node/connection, role)``
        of each one this call removed."""
        if not rooms:
            return []
        flat = await self._sweep(keys=[PRESENCE_PREFIX + room for room in rooms], args=list(rooms))
        return [(flat[i].decode(), flat[i + 1].decode(), flat[i + 2].decode()) for i in range(0, len(flat), 3)]

    async def leave(self, room: str, field: str) -> None:
        await self._client.hdel(PRESENCE_PREFIX + room, field)

    async def ephemeral(self, messages: Mapping[str, Sequence[bytes]], node: str) -> None:
        """Send each room's ``messages`` (``b"<after id> <frame>"``) to the other live nodes that
        follow it, in one script call (``node`` is the sender: "" when it follows no room)."""
        args: list[Any] = [node]
        for room, batch in messages.items():
            args += (room, len(batch), *batch)
        await self._ephemeral(keys=[ROOM_NODES_PREFIX + room for room in messages], args=args)

    async def epoch(self, room: str) -> str | None:
        epoch = await self._client.get(EPOCH_PREFIX + room)
        return epoch.decode() if epoch else None

    async def last_id(self, key: str) -> bytes:
        """The newest entry's id in ``key``, or ``0-0`` when the stream is empty or absent."""
        newest = await self._client.xrevrange(key, count=1)
        return newest[0][0] if newest else b"0-0"

    async def range(self, key: str, start: str | bytes = "-", end: str | bytes = "+",
                    count: int | None = None) -> list[Entry]:
        if self._lean is not None:
            return _entries(await self._lean.execute("XRANGE", key, start, end, *_count(count)))
        return list(await self._client.xrange(key, start, end, count=count))

    async def bodies(self, key: str, after: bytes, count: int) -> list[tuple[bytes, bytes]]:
        """``(id, body)`` of up to ``count`` entries after the id ``after``, oldest first."""
        if self._lean is None:
            return [(entry_id, fields.get(b"body", b""))
                    for entry_id, fields in await self.range(key, b"(" + after, "+", count=count)]
        reply = await self._lean.execute("XRANGE", key, b"(" + after, "+", "COUNT", count)
        return [(entry_id, _field(fields, b"body")) for entry_id, fields in reply]

    async def revrange(self, key: str, end: str | bytes = "+", start: str | bytes = "-",
                       count: int | None = None) -> list[Entry]:
        """Entries from ``end`` down to ``start``, newest first (``XREVRANGE``: the end comes first)."""
        if self._lean is not None:
            return _entries(await self._lean.execute("XREVRANGE", key, end, start, *_count(count)))
        return list(await self._client.xrevrange(key, end, start, count=count))

    async def exists(self, key: str) -> bool:
        return bool(await self._client.exists(key))

    async def delete(self, key: str) -> bool:
        """Remove the stream ``key`` and its epoch; False when there was no stream."""
        room = key[len(STREAM_KEY_PREFIX):]
        deleted = await self._client.delete(key)
        await self._client.delete(EPOCH_PREFIX + room)
        return bool(deleted)

    async def register(self, rooms: Sequence[str], node: str) -> None:
        """Record that ``node`` follows ``rooms``: their appends will be announced to it."""
        async with self._client.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.sadd(ROOM_NODES_PREFIX + room, node)
            await pipe.execute()

    async def unregister(self, room: str, node: str) -> None:
        await self._client.srem(ROOM_NODES_PREFIX + room, node)

    async def heartbeat(self, node: str, ttl_s: int) -> bool:
        """Keep ``node`` alive for ``ttl_s`` more seconds. True when it was not alive before (first
        beat, expired after a stall, or Redis lost its data): its rooms must be registered again."""
        key = NODE_PREFIX + node + ":alive"
        if await self._client.set(key, b"1", ex=ttl_s, nx=True):
            return True
        await self._client.expire(key, ttl_s)
        return False

    async def forget_node(self, node: str) -> None:
        await self._client.delete(NODE_PREFIX + node + ":alive")

    def subscriber(self, node: str) -> Subscriber | LeanSubscriber:
        """The announcements to ``node``: ``subscribe()``, then ``next(timeout_s)``, then ``close()``."""
        if self._lean is not None:
            return self._lean.subscriber(NODE_PREFIX + node)
        return Subscriber(self._listener_client.pubsub(), NODE_PREFIX + node)


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


def cid_key(key: str, participant: str, cid: str) -> str:
    return f"{CID_PREFIX}{key[len(STREAM_KEY_PREFIX):]}:{participant}:{cid}"


class Subscriber:
    """The announcements sent to one node: ``(room, newest id)`` of appends made by others."""

    def __init__(self, pubsub: Any, channel: str) -> None:
        self._pubsub = pubsub
        self._channel = channel

    async def subscribe(self) -> None:
        await self._pubsub.subscribe(self._channel)

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        """``(kind, data)`` of the next message (kind ``subscribe``, ``message``...), or None."""
        message = await self._pubsub.get_message(timeout=timeout_s)
        if message is None:
            return None
        data = message["data"]
        return message["type"], data if isinstance(data, bytes) else b""

    async def close(self) -> None:
        await self._pubsub.aclose()
