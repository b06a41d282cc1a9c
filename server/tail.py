"""The stream tail: one XREAD BLOCK per process for every room that has members here.

Every member of a room, on every server process, receives the room's messages from its Redis
Stream, in stream order; nothing is broadcast from memory. Each followed room has a cursor (the
last id delivered here). A new room's cursor starts at the stream's newest id when it is first
followed, so its members get everything appended after they joined. A blocked XREAD does not see
rooms followed after it was sent, so following a room pokes this process's own wake stream,
which every read includes. When Redis is unreachable the loop retries with backoff and resumes
from the cursors: entries appended meanwhile are delivered, none twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from protocol.names import stream_key
from server.store import UNREACHABLE, Entry, StreamStore

log = logging.getLogger(__name__)

Deliver = Callable[[str, list[Entry]], None]

READ_COUNT = 1000  # entries per stream per read
WAKE_TTL_S = 3600
_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class StreamTail:
    def __init__(self, store: StreamStore, deliver: Deliver, wake_key: str, *, block_ms: int) -> None:
        self._store = store
        self._deliver = deliver
        self._wake_key = wake_key
        self._wake_cursor = b"0-0"
        self._block_ms = block_ms
        self._cursors: dict[str, bytes] = {}  # stream key -> last id delivered
        self._rooms: dict[str, str] = {}  # stream key -> room
        self._changed = asyncio.Event()
        self.connected = True

    async def follow(self, room: str) -> None:
        """Start delivering ``room``'s new entries. Raises when Redis is unreachable."""
        key = stream_key(room)
        cursor = await self._store.last_id(key)
        self._cursors[key] = cursor
        self._rooms[key] = room
        self._changed.set()
        await self._store.poke(self._wake_key, WAKE_TTL_S)

    def unfollow(self, room: str) -> None:
        key = stream_key(room)
        self._cursors.pop(key, None)
        self._rooms.pop(key, None)

    async def run(self) -> None:
        failures = 0
        while True:
            if not self._cursors:
                self._changed.clear()
                await self._changed.wait()
                continue
            sent = {self._wake_key: self._wake_cursor, **self._cursors}
            try:
                batch = await self._store.read(sent, count=READ_COUNT, block_ms=self._block_ms)
            except UNREACHABLE as exc:
                self.connected = False
                delay = _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]
                failures += 1
                log.warning("stream reader: Redis unreachable (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("stream reader: Redis reachable again; resuming from the last delivered ids")
            failures = 0
            self.connected = True
            for raw_key, entries in batch:
                self._take(raw_key.decode(), entries, sent)

    def _take(self, key: str, entries: list[Entry], sent: dict[str, bytes]) -> None:
        if key == self._wake_key:
            self._wake_cursor = entries[-1][0]
            return
        cursor = self._cursors.get(key)
        if cursor is None:
            return  # unfollowed while the read was in flight
        if cursor != sent[key]:  # re-followed meanwhile: keep only what is newer than the cursor
            entries = [e for e in entries if _id_tuple(e[0]) > _id_tuple(cursor)]
            if not entries:
                return
        self._cursors[key] = entries[-1][0]
        self._deliver(self._rooms[key], entries)


def _id_tuple(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
