"""The room feed: every member, on every server process, gets its room's entries in stream order.

Nothing is broadcast from memory that is not in the stream, and nothing is delivered twice or out
of order: each followed room has a cursor, the id of the last entry delivered here, and an entry
is delivered only when it directly follows the cursor.

- Local appends (the fast path). An append batch reports, per room, the newest id the stream held
  before the batch. When that equals the room's cursor, nothing else was appended in between, and
  the batch's entries are delivered from memory at once, with no read.
- Everything else (the catch-up). When another node appended in between, or announced an append,
  or announcements may have been missed, a reader task for the room reads ``XRANGE (cursor +``
  and delivers what it finds until it has reached the newest id it heard of. Meanwhile local
  batches do not take the fast path, so order is kept.
- Announcements. This node listens on its own channel; following a room adds the node to the
  room's node set *before* the cursor is read, so every later append by another node is either
  announced to it or already behind the cursor. A heartbeat keeps the node alive; when Redis has
  forgotten it (a stall, a Redis restart) or the channel reconnects, the node registers its rooms
  again and catches every room up.
- Frames that are not stored (presence, generation deltas) carry the id they must follow
  (``after``): a generation's deltas follow the message that triggered it. They are delivered at
  once when the cursor has reached that id, else held, in arrival order, until it has. Other
  nodes hear them on the same channel as the announcements, so a node never delivers an entry
  announced after a frame before that frame. For the same reason a catch-up delivers entries
  only up to the newest id it heard of (except after a reconnection, when it reads to the end).
- When Redis is unreachable, readers retry with backoff and resume from their cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from protocol.names import STREAM_KEY_PREFIX, stream_key
from server.store import UNREACHABLE, StreamStore

log = logging.getLogger(__name__)

Item = tuple[bytes, bytes]  # (stream id, body)
Deliver = Callable[[str, list[Item]], None]
#: Deliver one unstored frame to a room's members, except ``skip`` (a member, or None).
DeliverFrame = Callable[[str, str, object], None]

READ_COUNT = 1000
ALIVE_TTL_S = 30  # a node that has not beaten for this long is dead; it beats every third of it
READY_TIMEOUT_S = 5.0
_UNTIL_EMPTY = (2**64, 0)
_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def id_tuple(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def backoff(failures: int) -> float:
    return _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]


class _Cursor:
    __slots__ = ("held", "id", "reader", "target")

    def __init__(self, entry_id: bytes) -> None:
        self.id = entry_id  # last id delivered here
        self.target: tuple[int, int] | None = None  # newest id heard of but not yet delivered
        self.reader: asyncio.Task[None] | None = None
        self.held: deque[tuple[tuple[int, int], str, object]] = deque()  # (after, frame, skip)


class RoomFeed:
    def __init__(self, store: StreamStore, deliver: Deliver, deliver_frame: DeliverFrame, node_id: str,
                 node_ttl_s: int = ALIVE_TTL_S) -> None:
        self._store = store
        self._node_ttl_s = node_ttl_s
        self._deliver = deliver
        self._deliver_frame = deliver_frame
        self._node = node_id
        self._cursors: dict[str, _Cursor] = {}
        self._membership = asyncio.Lock()
        self._ready = asyncio.Event()  # listening on the node's channel, and alive
        #: Called after Redis had forgotten this node (and its rooms were registered again).
        self.on_forgotten: Callable[[], Awaitable[None]] | None = None
        #: Called after each heartbeat with the rooms followed here.
        self.on_beat: Callable[[list[str]], Awaitable[None]] | None = None

    async def follow(self, room: str) -> None:
        """Start delivering ``room``'s new entries. Raises when Redis is unreachable."""
        await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT_S)
        async with self._membership:
            await self._store.register([room], self._node)
            self._cursors[room] = _Cursor(await self._store.last_id(stream_key(room)))

    def cursor(self, room: str) -> bytes | None:
        """The id of the last entry of ``room`` delivered here (None: the room is not followed)."""
        cursor = self._cursors.get(room)
        return None if cursor is None else cursor.id

    def unfollow(self, room: str) -> None:
        self._cursors.pop(room, None)
        asyncio.get_running_loop().create_task(self._unregister(room))

    async def _unregister(self, room: str) -> None:
        async with self._membership:
            if room not in self._cursors:
                # On failure: appends forget nodes that are not alive, and a Redis restart forgets all.
                with contextlib.suppress(*UNREACHABLE):
                    await self._store.unregister(room, self._node)

    def appended(self, key: str, before: bytes, items: list[Item]) -> None:
        """A local batch appended ``items`` to ``key``, whose newest id was ``before``."""
        room = key[len(STREAM_KEY_PREFIX):]
        cursor = self._cursors.get(room)
        if cursor is None:
            return
        if cursor.reader is None and before == cursor.id:
            self._advance(room, cursor, items)
        else:
            self._lag(room, cursor, id_tuple(items[-1][0]))

    def frame(self, room: str, after: bytes, frame: str, skip: object = None) -> None:
        """Deliver an unstored ``frame`` to ``room``'s members here once entries up to ``after`` are."""
        cursor = self._cursors.get(room)
        if cursor is None:
            return
        after_id = id_tuple(after)
        if not cursor.held and after_id <= id_tuple(cursor.id):
            self._deliver_frame(room, frame, skip)
            return
        cursor.held.append((after_id, frame, skip))
        if after_id > id_tuple(cursor.id):
            self._lag(room, cursor, after_id)

    def _advance(self, room: str, cursor: _Cursor, items: list[Item]) -> None:
        if not cursor.held:
            cursor.id = items[-1][0]
            self._deliver(room, items)
            return
        for item in items:  # frames are held: deliver them between the entries they follow
            cursor.id = item[0]
            self._deliver(room, [item])
            self._release(room, cursor)

    def _release(self, room: str, cursor: _Cursor) -> None:
        reached = id_tuple(cursor.id)
        while cursor.held and cursor.held[0][0] <= reached:
            _, frame, skip = cursor.held.popleft()
            self._deliver_frame(room, frame, skip)

    def _lag(self, room: str, cursor: _Cursor, newest: tuple[int, int]) -> None:
        if cursor.target is None or newest > cursor.target:
            cursor.target = newest
        if cursor.reader is None:
            cursor.reader = asyncio.get_running_loop().create_task(self._catch_up(room, cursor))

    def _catch_up_all(self) -> None:
        for room, cursor in list(self._cursors.items()):
            self._lag(room, cursor, _UNTIL_EMPTY)

    async def _catch_up(self, room: str, cursor: _Cursor) -> None:
        key, failures = stream_key(room), 0
        try:
            while cursor.target is not None and cursor.target > id_tuple(cursor.id):
                try:
                    entries = await self._store.bodies(key, cursor.id, READ_COUNT)
                except UNREACHABLE as exc:
                    log.warning("room %s: cannot read the stream (%s); retrying", room, exc)
                    await asyncio.sleep(backoff(failures))
                    failures += 1
                    continue
                failures = 0
                if self._cursors.get(room) is not cursor:
                    break
                target = cursor.target
                items = [item for item in entries if target is None or id_tuple(item[0]) <= target]
                if not items:
                    break
                self._advance(room, cursor, items)
        finally:
            cursor.target = None
            cursor.reader = None
            if self._cursors.get(room) is cursor:
                self._release_all(room, cursor)

    def _release_all(self, room: str, cursor: _Cursor) -> None:
        """Held frames whose entries cannot be read (trimmed, deleted) are not held forever."""
        if cursor.held and cursor.reader is None:
            while cursor.held:
                _, frame, skip = cursor.held.popleft()
                self._deliver_frame(room, frame, skip)

    async def run(self) -> None:
        """Listen to this node's announcements and keep it alive, until cancelled."""
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            await self._listen()
        finally:
            heartbeat.cancel()
            self._ready.clear()
            with contextlib.suppress(*UNREACHABLE):
                await self._store.forget_node(self._node)

    async def _listen(self) -> None:
        failures = 0
        while True:
            subscriber = self._store.subscriber(self._node)
            try:
                await subscriber.subscribe()
                while True:
                    message = await subscriber.next(timeout_s=1.0)
                    if message is None:
                        continue
                    kind, data = message
                    if kind == "subscribe":
                        await self._beat()
                        self._catch_up_all()
                        self._ready.set()
                        failures = 0
                    elif kind == "message":
                        self._announced(data)
            except UNREACHABLE as exc:
                if self._ready.is_set():
                    log.warning("announcements: Redis unreachable (%s); reconnecting", exc)
                self._ready.clear()
                await asyncio.sleep(backoff(failures))
                failures += 1
            finally:
                await subscriber.close()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._node_ttl_s / 3)
            if not self._ready.is_set():
                continue
            try:
                if await self._beat():
                    log.warning("this node had been forgotten by Redis; registered its rooms again")
                    self._catch_up_all()
                if self.on_beat is not None and self._cursors:
                    await self.on_beat(list(self._cursors))
            except UNREACHABLE as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _beat(self) -> bool:
        """Renew this node's liveness; when Redis had forgotten it, register its rooms again."""
        lost = await self._store.heartbeat(self._node, self._node_ttl_s)
        if lost and self._cursors:
            async with self._membership:
                await self._store.register(list(self._cursors), self._node)
            if self.on_forgotten is not None:
                await self.on_forgotten()
        return lost and bool(self._cursors)

    def _announced(self, data: bytes) -> None:
        """``<room> <newest id>`` (another node appended) or ``<room> <after id> <frame>``."""
        room, _, rest = data.decode().partition(" ")
        newest, _, frame = rest.partition(" ")
        cursor = self._cursors.get(room)
        if cursor is None or not newest:
            return
        if frame:
            self.frame(room, newest.encode(), frame)
            return
        newest_id = id_tuple(newest.encode())
        if newest_id > id_tuple(cursor.id):
            self._lag(room, cursor, newest_id)
