"""The room feed: every member, on every server process, gets its room's entries in stream order.

Nothing is broadcast from memory that is not in the stream, and nothing is delivered twice or out
of order: each followed room has a cursor, the id of the last entry delivered here, and an entry
is delivered only when it directly follows the cursor.

- Local appends (the fast path). An append batch reports, per room, the newest id the stream held
  before the batch. When that equals the room's cursor, nothing else was appended in between, and
  the batch's entries are delivered from memory at once, with no read.
- Everything else (the catch-up). When another process appended in between, or announces an
  append on ``chat:notify:<room>``, or the notifications were interrupted, a reader task for the
  room reads ``XRANGE (cursor +`` and delivers what it finds, until it has reached the newest id
  it heard of. Meanwhile local batches do not take the fast path, so order is kept.
- Following a room subscribes to its notifications, waits until Redis confirms, and only then
  takes the stream's newest id as the cursor: every later append is either heard of or read.
- When Redis is unreachable, readers retry with backoff and resume from their cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from protocol.names import STREAM_KEY_PREFIX, stream_key
from server.store import UNREACHABLE, StreamStore, Subscriber

log = logging.getLogger(__name__)

Item = tuple[bytes, bytes]  # (stream id, body)
Deliver = Callable[[str, list[Item]], None]

READ_COUNT = 1000
_UNTIL_EMPTY = (2**64, 0)
_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def id_tuple(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class _Cursor:
    __slots__ = ("id", "reader", "target")

    def __init__(self, entry_id: bytes) -> None:
        self.id = entry_id  # last id delivered here
        self.target: tuple[int, int] | None = None  # newest id heard of but not yet delivered
        self.reader: asyncio.Task[None] | None = None


class RoomFeed:
    def __init__(self, store: StreamStore, deliver: Deliver, node_id: str) -> None:
        self._store = store
        self._deliver = deliver
        self._node = node_id.encode()
        self._cursors: dict[str, _Cursor] = {}
        self._subscriber: Subscriber = store.subscriber()
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._subscriptions = asyncio.Lock()
        self._listening = asyncio.Event()
        self.connected = True

    async def follow(self, room: str) -> None:
        """Start delivering ``room``'s new entries. Raises when Redis is unreachable."""
        async with self._subscriptions:
            confirmed = self._confirmations[room] = asyncio.get_running_loop().create_future()
            try:
                await self._subscriber.subscribe(room)
                self._listening.set()
                await asyncio.wait_for(confirmed, timeout=10)
            finally:
                self._confirmations.pop(room, None)
        self._cursors[room] = _Cursor(await self._store.last_id(stream_key(room)))

    def unfollow(self, room: str) -> None:
        self._cursors.pop(room, None)
        asyncio.get_running_loop().create_task(self._unsubscribe(room))

    async def _unsubscribe(self, room: str) -> None:
        async with self._subscriptions:
            if room not in self._cursors:
                with contextlib.suppress(*UNREACHABLE):  # the subscription died with the connection
                    await self._subscriber.unsubscribe(room)

    def appended(self, key: str, before: bytes, items: list[Item]) -> None:
        """A local batch appended ``items`` to ``key``, whose newest id was ``before``."""
        room = key[len(STREAM_KEY_PREFIX):]
        cursor = self._cursors.get(room)
        if cursor is None:
            return
        if cursor.reader is None and before == cursor.id:
            cursor.id = items[-1][0]
            self._deliver(room, items)
        else:
            self._lag(room, cursor, id_tuple(items[-1][0]))

    def _lag(self, room: str, cursor: _Cursor, newest: tuple[int, int]) -> None:
        if cursor.target is None or newest > cursor.target:
            cursor.target = newest
        if cursor.reader is None:
            cursor.reader = asyncio.get_running_loop().create_task(self._catch_up(room, cursor))

    async def _catch_up(self, room: str, cursor: _Cursor) -> None:
        key, failures = stream_key(room), 0
        try:
            while cursor.target is not None and cursor.target > id_tuple(cursor.id):
                try:
                    entries = await self._store.range(key, b"(" + cursor.id, "+", count=READ_COUNT)
                except UNREACHABLE as exc:
                    delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
                    failures += 1
                    log.warning("room %s: cannot read the stream (%s); retrying in %.2f s", room, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                if self._cursors.get(room) is not cursor or not entries:
                    break
                cursor.id = entries[-1][0]
                self._deliver(room, [(entry_id, fields.get(b"body", b"")) for entry_id, fields in entries])
        finally:
            cursor.target = None
            cursor.reader = None

    async def run(self) -> None:
        """Listen to the followed rooms' notifications until cancelled."""
        failures = 0
        try:
            while True:
                if not self._subscriber.subscribed and not self._confirmations:
                    self._listening.clear()
                    await self._listening.wait()
                try:
                    message = await self._subscriber.next(timeout_s=1.0)
                except UNREACHABLE as exc:
                    self.connected = False
                    delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
                    failures += 1
                    log.warning("notifications: Redis unreachable (%s); retrying in %.2f s", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                if failures:
                    failures = 0
                    self.connected = True
                    log.info("notifications: Redis reachable again; reading what was missed")
                    for room, cursor in list(self._cursors.items()):
                        self._lag(room, cursor, _UNTIL_EMPTY)
                if message is not None:
                    self._on_message(*message)
        finally:
            await self._subscriber.close()

    def _on_message(self, kind: str, room: str, data: bytes) -> None:
        if kind == "subscribe":
            confirmed = self._confirmations.get(room)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        elif kind == "message":
            node, _, newest = data.partition(b" ")
            cursor = self._cursors.get(room)
            if node != self._node and cursor is not None and newest:
                newest_id = id_tuple(newest)
                if newest_id > id_tuple(cursor.id):
                    self._lag(room, cursor, newest_id)
