"""The store's ports: what the relay's core asks of its storage, one small interface per concern.

- :class:`RoomLog`: a room's stream, the source of truth for order and history.
- :class:`Roster`: who is in a room, on every node (presence).
- :class:`NodeBus`: the nodes that follow a room, and what they tell each other (announcements of
  appends, frames that are not stored).
- :class:`RoomInstances`: which instance of a room is current (with auth on, a room token names
  the instance it was issued for).
- :class:`GenerationLocks` and :class:`RequestQueue`: the LLM bot's work (one generation per room,
  and the queue of questions any worker may answer).

Two adapters implement every port with the same behaviour: :mod:`server.store.redis_store` (a Redis
URL) and :mod:`server.store.embedded` (an in-process fakeredis server, the zero-setup default); one
contract suite (``tests/server/store/``) runs against both. No adapter hands its client to the rest of
the server. Failures reach the core as two exceptions only: :class:`StoreUnavailable` (the store
cannot be reached right now: the client is told ``unavailable``) and :class:`StoreError` (the store
refused a command: a bug or a misconfigured Redis, answered ``internal``).

Guarantees the core relies on:

- :meth:`RoomLog.append_batch` appends its entries in list order, each room's atomically (one step per
  room), so a room's entries get increasing ids in the order they were submitted. For each room it
  also reports the newest id the stream held *before* the batch: a caller that has delivered exactly
  up to that id may deliver the batch from memory, with no read. An entry with a cid is stored at most
  once per room, sender and cid within its dedupe window (:class:`Duplicate`).
- Each append is announced (``"<room> <newest id>"``) to every other node that follows the room
  (:meth:`NodeBus.follow`), on the node's :meth:`NodeBus.subscription`. Frames that are not stored
  (:meth:`NodeBus.publish`) travel on the same channel, ordered with the announcements.
- Ranges cost O(log N + count). Every append trims the stream approximately to ``maxlen`` and renews
  its expiry; each stream has an epoch, a random id set when an append finds it empty or absent.
- A node is alive in a room until the deadline its last :meth:`NodeBus.follow` set (heartbeats renew
  it, and remove the followers whose deadline passed); roster entries of nodes that are not alive are
  dropped by :meth:`Roster.enter` and :meth:`Roster.sweep`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Entry = tuple[bytes, dict[bytes, bytes]]  # (stream id, fields)
GENERATION_LOCK_TTL_MS = 10_000  # a generation's lock expires this long after it was taken or renewed


class StoreUnavailable(Exception):
    """The store cannot be reached right now (lost connection, timeout): try again later."""


class StoreError(Exception):
    """The store refused a command."""


@dataclass(frozen=True, slots=True)
class NewEntry:
    room: str
    participant: str
    body: bytes
    cid: str | None = None  # the client's message id: stored once per room, participant and cid
    dedupe_s: int | None = None  # how long the cid is remembered (None: the retention's default)


@dataclass(frozen=True, slots=True)
class Retention:
    maxlen: int = 0  # approximate length each stream is trimmed to (0 = no trimming)
    ttl_s: int = 0  # expiry renewed by every append (0 = never)
    dedupe_s: int = 0  # how long an entry's cid is remembered (0 = not at all)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An entry that was not appended: the same cid was stored within the dedupe window."""

    id: bytes  # the original entry's id
    body: bytes  # the original entry's body (the new one when the original was trimmed away)


@dataclass(frozen=True, slots=True)
class BatchResult:
    before: dict[str, bytes]  # room -> newest id before the batch (b"0-0": none)
    ids: list[bytes | Duplicate | Exception]  # per entry, in submission order


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a connection entering a room learns, read in one step with its roster entry."""

    epoch: str | None  # None: the room has no stream
    first_id: bytes | None  # the oldest retained entry
    removed: int | None  # how many entries were ever trimmed or deleted (None: unknown)
    roster: list[tuple[str, str]]  # (node/connection, role) of every connection on a live node
    full: bool = False  # the room held the most connections allowed: this one was not added


@dataclass(frozen=True, slots=True)
class Request:
    """A question for the bot: generation ``rid`` answers entry ``reply_to`` of ``room``."""

    room: str
    rid: str
    reply_to: str
    asker: str  # the role that asked
    entry_id: str = ""  # the request's id in its queue (set when read)
    attempt: int = 1  # 2, 3...: the request was taken over from a worker that died


class Subscription(Protocol):
    """Messages on one channel: :meth:`subscribe`, then :meth:`next` until :meth:`close`."""

    async def subscribe(self) -> None: ...

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        """``(kind, data)`` of the next message (kind ``subscribe`` first, then ``message``), or None
        after ``timeout_s``. Raises :class:`StoreUnavailable` when the connection is lost."""
        ...

    async def close(self) -> None: ...


class RoomLog(Protocol):
    async def append_batch(self, entries: Sequence[NewEntry], retention: Retention, node: str) -> BatchResult:
        """Append ``entries`` in order (announced to the rooms' other followers than ``node``)."""
        ...

    async def range(self, room: str, start: str | bytes = "-", end: str | bytes = "+",
                    count: int | None = None) -> list[Entry]:
        """Entries from ``start`` to ``end`` (``XRANGE`` bounds), oldest first."""
        ...

    async def revrange(self, room: str, end: str | bytes = "+", start: str | bytes = "-",
                       count: int | None = None) -> list[Entry]:
        """Entries from ``end`` down to ``start``, newest first (the end comes first)."""
        ...

    async def bodies(self, room: str, after: bytes, count: int) -> list[tuple[bytes, bytes]]:
        """``(id, body)`` of up to ``count`` entries after the id ``after``, oldest first."""
        ...

    async def last_id(self, room: str) -> bytes:
        """The newest entry's id, or ``0-0`` when the stream is empty or absent."""
        ...

    async def exists(self, room: str) -> bool: ...

    async def delete(self, room: str) -> bool:
        """Remove the room's stream and its epoch; False when there was no stream."""
        ...


class Roster(Protocol):
    async def enter(self, room: str, field: str, role: str, ttl_s: int, most: int = 0) -> SessionInfo:
        """Add ``field`` (``node/connection``; "" to only read) as ``role``, unless the room already holds
        ``most`` connections (0 = no limit; then ``full`` is set); read what ``session.ready`` needs."""
        ...

    async def restore(self, entries: Sequence[tuple[str, str, str]], ttl_s: int) -> None:
        """Put ``(room, node/connection, role)`` entries back in their rosters."""
        ...

    async def sweep(self, rooms: Sequence[str]) -> list[tuple[str, str, str]]:
        """Drop the entries of nodes no longer alive: ``(room, node/connection, role)`` of each one
        this call removed (each is removed by one caller only)."""
        ...

    async def leave(self, room: str, field: str) -> None: ...


class NodeBus(Protocol):
    async def follow(self, rooms: Sequence[str], node: str, ttl_s: int) -> list[str]:
        """Record that ``node`` follows ``rooms`` and is alive in them for ``ttl_s`` more seconds (a
        heartbeat renews it). Returns the rooms it did not follow before (new, expired after a stall,
        or forgotten by Redis): announcements to it may have been missed there."""
        ...

    async def unfollow(self, rooms: Sequence[str], node: str) -> None: ...

    async def publish(self, messages: Mapping[str, Sequence[bytes]], node: str) -> None:
        """Send each room's ``messages`` (``b"<after id> <frame>"``) to the room's other followers,
        in one round trip (``node`` is the sender: "" when it follows no room)."""
        ...

    def subscription(self, node: str) -> Subscription:
        """The announcements and frames sent to ``node``."""
        ...


class RoomInstances(Protocol):
    """A room's current instance: a random id, made when a room is created (``POST /v1/session``) and
    kept until it is deleted or expires. A room deleted and created again is a new instance."""

    async def open(self, room: str, ttl_s: int) -> str:
        """The room's current instance, made now when it has none; in either case it lives at least
        ``ttl_s`` more seconds (a longer expiry is kept)."""
        ...

    async def current(self, room: str) -> str | None:
        """The room's current instance; None when it has none (never created, deleted or expired)."""
        ...

    async def delete(self, room: str) -> bool:
        """End the room's instance; False when it had none."""
        ...


class GenerationLocks(Protocol):
    """One generation per room: the lock holds its rid, with a short expiry its owner renews."""

    async def lock(self, room: str, rid: str) -> bool:
        """Take the room's lock for ``rid`` (or keep it); False when another generation holds it."""
        ...

    async def renew(self, generations: Sequence[tuple[str, str]]) -> None:
        """Renew the locks these ``(room, rid)`` generations still hold, in one round trip."""
        ...

    async def release(self, room: str, rid: str) -> bool:
        """Delete the lock if ``rid`` holds it (compare-and-delete)."""
        ...

    async def start(self, room: str, rid: str) -> tuple[bool, bool]:
        """A worker starts ``rid``: ``(answered, cancelled)``, in one step; unless its answer is already
        stored, the lock is taken for it again when free (it may have expired while it waited)."""
        ...

    async def cancel(self, room: str, rid: str) -> bool:
        """Mark ``rid`` cancelled and tell every worker, if it holds the lock; False otherwise."""
        ...

    def cancellations(self) -> Subscription:
        """The rids cancelled on any node."""
        ...


class RequestQueue(Protocol):
    """Requests for the bot, read by any worker of the queue; a dead worker's are taken over."""

    async def add(self, request: Request) -> None: ...

    async def ensure_group(self) -> None: ...

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Request]:
        """New requests for ``consumer`` (waits up to ``block_ms`` for one)."""
        ...

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Request]:
        """Requests idle for ``min_idle_ms`` (their worker died), now ``consumer``'s."""
        ...

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Keep ``consumer``'s claim on ``entry_ids`` fresh: their worker is alive."""
        ...

    async def ack(self, entry_ids: Sequence[str]) -> None: ...

    async def forget_consumer(self, consumer: str) -> None:
        """Remove a stopped worker's consumer, if nothing is pending for it."""
        ...


class Store(Protocol):
    """Every port of one storage backend, and its lifecycle."""

    @property
    def kind(self) -> str:
        """``redis`` or ``embedded``."""
        ...

    @property
    def log(self) -> RoomLog: ...

    @property
    def roster(self) -> Roster: ...

    @property
    def bus(self) -> NodeBus: ...

    @property
    def instances(self) -> RoomInstances: ...

    @property
    def locks(self) -> GenerationLocks: ...

    def requests(self, queue: str) -> RequestQueue: ...

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` when the store cannot be reached."""
        ...

    async def close(self) -> None: ...
