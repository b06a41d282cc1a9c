"""Batched appends: the appends requested during one event-loop pass go to Redis as one pipeline.

One awaited XADD per message costs a round trip each and several times the rest of the relay's
work; a pipeline per pass costs little more than one. A single flusher task sends one pipeline at
a time, in submission order, so a room's entries keep the order in which its members' frames
were accepted. While a pipeline is in flight, new appends gather for the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from server.store import UNREACHABLE, Fields, StreamStore

log = logging.getLogger(__name__)

#: Called once per append: ``(entry_id, None)`` on success, ``(None, error)`` on failure.
Done = Callable[[bytes | None, Exception | None], None]

MAX_BATCH = 2048


@dataclass(frozen=True, slots=True)
class Retention:
    maxlen: int  # approximate trim length of every stream (0 = unbounded)
    ttl_s: int  # expiry renewed on every write (0 = never)


class Appender:
    def __init__(self, store: StreamStore, retention: Retention) -> None:
        self._store = store
        self._retention = retention
        self._pending: list[tuple[str, Fields, Done]] = []
        self._wake = asyncio.Event()

    def submit(self, key: str, fields: Fields, done: Done) -> None:
        """Queue one append; ``done`` is called when its outcome is known."""
        self._pending.append((key, fields, done))
        self._wake.set()

    async def append(self, key: str, fields: Fields) -> bytes:
        """Append one entry and wait for its id (for callers that need the outcome inline)."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def done(entry_id: bytes | None, error: Exception | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                assert entry_id is not None
                future.set_result(entry_id)

        self.submit(key, fields, done)
        return await future

    async def run(self) -> None:
        """The flusher loop; runs until cancelled, then fails whatever is still pending."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    batch = self._pending[:MAX_BATCH]
                    del self._pending[:MAX_BATCH]
                    await self._flush(batch)
        finally:
            pending, self._pending = self._pending, []
            for _, _, done in pending:
                done(None, ConnectionError("server shutting down"))

    async def _flush(self, batch: list[tuple[str, Fields, Done]]) -> None:
        try:
            results = await self._store.append_many(
                [(key, fields) for key, fields, _ in batch],
                maxlen=self._retention.maxlen, ttl_s=self._retention.ttl_s,
            )
        except UNREACHABLE as exc:
            log.warning("append of %d entries failed: Redis unreachable (%s)", len(batch), exc)
            results = [exc] * len(batch)
        except Exception as exc:
            log.exception("append of %d entries failed", len(batch))
            results = [exc] * len(batch)
        for (_, _, done), result in zip(batch, results, strict=True):
            try:
                if isinstance(result, Exception):
                    done(None, result)
                else:
                    done(result, None)
            except Exception:
                log.exception("append callback failed")
