"""Batched appends: the appends requested during one event-loop pass go to Redis in one call.

One awaited XADD per message costs a round trip each and several times the rest of the relay's
work; one script call per pass costs little more than one. A single flusher sends one batch at a
time, in submission order, so a room's entries keep the order in which its members' frames were
accepted. While a batch is in flight, new appends gather for the next one. After each batch the
feed is told what was appended (it delivers from memory when it can), then each submitter.

The flusher never dies: a batch that fails (Redis unreachable, or refusing writes: NOREPLICAS,
READONLY, OOM, MISCONF, BUSY) fails its submitters with the error and the next batch goes on; a bug
that escapes it fails the batch in flight and ends :meth:`Appender.run`, which its supervisor (the
``appender`` loop) starts again with what was still waiting. Failed batches are logged once a minute
per kind of failure, not once per batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from server.metrics import ACCEPT_TO_DELIVERY_SECONDS, XADD_SECONDS
from server.store.ports import (
    Duplicate,
    NewEntry,
    NotReplicated,
    Retention,
    RoomLog,
    StoreRefused,
    StoreUnavailable,
)
from server.supervise import Throttled

log = logging.getLogger(__name__)
_failures = Throttled(log)  # a failing Redis fails every batch: logged once a minute per kind

#: Called once per append with its outcome: the new entry's id, a :class:`Duplicate` (the same
#: cid was stored within the dedupe window: nothing was appended), or the error.
Done = Callable[[bytes | Duplicate | Exception], None]
#: Told after each batch, per room: the newest id before the batch and the ``(id, body)`` appended (none:
#: the batch found only resends there; the entries up to that id, their originals included, are stored).
Appended = Callable[[str, bytes, list[tuple[bytes, bytes]]], None]

MAX_BATCH = 1024


class Appender:
    """With ``gather_s`` (``APPEND_GATHER_MS``), a batch is sent no sooner than ``gather_s`` after the
    previous one was: what is submitted meanwhile goes with it (a full batch, :data:`MAX_BATCH`, goes at
    once). Each batch costs Redis a round trip (a wake-up, a read, a write: measured 20-30 us of Redis
    CPU here, more than a script call's work) however few entries it carries: at a moderate load the
    batches carried one or two entries each; gathered, several (docs/benchmarks.md, issue 14). It adds
    at most ``gather_s`` to an append's latency; under saturation, when a batch takes longer than
    ``gather_s`` to come back, nothing."""

    def __init__(self, room_log: RoomLog, retention: Retention, node_id: str, appended: Appended,
                 gather_s: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._log = room_log
        self._retention = retention
        self._node_id = node_id
        self._appended = appended
        self._pending: list[tuple[NewEntry, Done | None]] = []
        self._wake = asyncio.Event()
        self._oldest_at = 0.0  # when the oldest pending append was submitted
        self._gather_s = gather_s
        self._clock = clock
        self._sleep = sleep
        self._sent_at = -math.inf  # when the last batch was sent (``clock``)

    def submit(self, entry: NewEntry, done: Done | None = None) -> None:
        """Queue one append; ``done`` is called when its outcome is known."""
        if not self._pending:
            self._oldest_at = time.perf_counter()
        self._pending.append((entry, done))
        self._wake.set()

    async def append(self, entry: NewEntry) -> bytes | Duplicate:
        """Append one entry and wait until it is stored and handed to the feed; returns its id."""
        future: asyncio.Future[bytes | Duplicate] = asyncio.get_running_loop().create_future()

        def done(outcome: bytes | Duplicate | Exception) -> None:
            if future.done():
                return
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.submit(entry, done)
        return await future

    async def run(self) -> None:
        """The flusher loop; runs until cancelled, then fails whatever is still pending (the batch in
        flight included: its outcome is unknown, and its submitters must not wait forever). An
        unexpected exception fails only the batch in flight and is raised: run it again (supervised),
        and what is pending is sent."""
        batch: list[tuple[NewEntry, Done | None]] = []
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    if self._gather_s > 0 and len(self._pending) < MAX_BATCH:
                        wait = self._sent_at + self._gather_s - self._clock()
                        if wait > 0:
                            await self._sleep(wait)
                    self._sent_at = self._clock()
                    batch, accepted_at = self._pending[:MAX_BATCH], self._oldest_at
                    del self._pending[:MAX_BATCH]
                    self._oldest_at = time.perf_counter()  # (for what is left, if anything)
                    await self._flush(batch, accepted_at)
                    batch = []
        except asyncio.CancelledError:
            pending, self._pending = batch + self._pending, []
            _fail(pending, ConnectionError("server shutting down"))
            raise
        except Exception as exc:
            _fail(batch, exc)
            if self._pending:
                self._wake.set()  # for the flusher started again
            raise

    async def _flush(self, batch: list[tuple[NewEntry, Done | None]], accepted_at: float) -> None:
        sent_at = time.perf_counter()
        try:
            result = await self._log.append_batch([entry for entry, _ in batch], self._retention, self._node_id)
            before, ids = result.before, result.ids
            XADD_SECONDS.observe(time.perf_counter() - sent_at)
        except StoreUnavailable as exc:
            _failures.warning("appends failed: Redis unreachable (the senders are told unavailable)", exc)
            before, ids = {}, [exc] * len(batch)
        except StoreRefused as exc:
            _failures.warning("appends refused by Redis (nothing stored; the senders are told unavailable)", exc)
            before, ids = {}, [exc] * len(batch)
        except Exception as exc:
            log.exception("append of %d entries failed", len(batch))
            before, ids = {}, [exc] * len(batch)
        short = next((outcome for outcome in ids if isinstance(outcome, NotReplicated)), None)
        if short is not None:
            _failures.warning("appends not acknowledged by enough replicas (stored on the primary, not delivered"
                              " yet; the senders are told unavailable)", short)
        self._report(batch, before, ids)
        ACCEPT_TO_DELIVERY_SECONDS.observe(time.perf_counter() - accepted_at)

    def _report(self, batch: list[tuple[NewEntry, Done | None]], before: dict[str, bytes],
                ids: list[bytes | Duplicate | Exception]) -> None:
        stored: dict[str, list[tuple[bytes, bytes]]] = defaultdict(list)
        for (entry, _), entry_id in zip(batch, ids, strict=True):
            if isinstance(entry_id, bytes):
                stored[entry.room].append((entry_id, entry.body))
            elif isinstance(entry_id, Duplicate) and entry.room in before:
                stored.setdefault(entry.room, [])  # (its original, and all before it, are stored)
        for room, items in stored.items():
            newest = before[room]
            try:
                self._appended(room, newest, items)
            except Exception:  # a bug in the feed: the senders still hear their outcome
                log.exception("room %s: the feed failed to take %d appended entries", room, len(items))
        for (_, done), entry_id in zip(batch, ids, strict=True):
            if done is None:
                continue
            try:
                done(entry_id)
            except Exception:
                log.exception("append callback failed")


def _fail(batch: list[tuple[NewEntry, Done | None]], exc: Exception) -> None:
    for _, done in batch:
        if done is not None:
            try:
                done(exc)
            except Exception:
                log.exception("append callback failed")
