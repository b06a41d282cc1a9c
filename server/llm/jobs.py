"""The LLM bot's work in Redis: the request queue, the room lock, cancellation.

- Requests go to one stream per queue, ``chat:llm:requests:<LLM_QUEUE>``, read by the consumer
  group ``llm-workers``: any worker of the queue, in a server process or in
  ``python -m server.llm_worker``, may serve any room. (Separate queues are separate worker
  pools: for instance one per model.)
  A worker that dies leaves its requests pending; another takes them over with ``XAUTOCLAIM``
  once they have been idle ``LLM_RECLAIM_AFTER_S``. A live worker keeps its claims fresh
  (``XCLAIM ... JUSTID`` resets the idle time without counting a delivery), so only the
  requests of dead workers are taken. The delivery count is the request's attempt number.
- One generation per room: the lock ``chat:llm:lock:<room>`` holds the generation's id (rid),
  with a short expiry renewed while it runs; only its owner renews or releases it
  (compare-and-delete), so a crashed process blocks a room for at most :data:`LOCK_TTL_MS`.
- ``llm.cancel`` marks the rid cancelled (``chat:llm:cancelled:<rid>``, for a worker that has not
  started it yet) and publishes it on ``chat:llm:cancel``, which every worker hears.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import ResponseError

from server.store import StreamStore

REQUESTS_PREFIX = "chat:llm:requests:"
GROUP = "llm-workers"
LOCK_PREFIX = "chat:llm:lock:"
CANCELLED_PREFIX = "chat:llm:cancelled:"
CANCEL_CHANNEL = "chat:llm:cancel"
LOCK_TTL_MS = 10_000
CANCELLED_TTL_S = 600
_SCRIPT = resources.files("server.llm").joinpath("jobs.lua").read_text()


@dataclass(frozen=True, slots=True)
class Request:
    """A question for the bot: generation ``rid`` answers entry ``reply_to`` of ``room``."""

    room: str
    rid: str
    reply_to: str
    asker: str  # the role that asked
    entry_id: str = ""  # the request's id in the request stream (set when read)
    attempt: int = 1  # 2, 3...: the request was taken over from a worker that died

    def fields(self) -> list[str]:
        return ["room", self.room, "rid", self.rid, "reply_to", self.reply_to, "asker", self.asker]


class Jobs:
    def __init__(self, store: StreamStore, queue: str) -> None:
        self._key = REQUESTS_PREFIX + queue
        self._redis = store.redis
        # The embedded store's XREADGROUP does not block (it answers at once): there, requests come
        # from this process only, and a reader waits for this event instead.
        self._queued: asyncio.Event | None = asyncio.Event() if store.embedded else None
        self._listener = store.listener
        self._store = store
        self._script = store.script(_SCRIPT)  # per generation: on the lean connection when there is one
        self._pipelined = self._redis.register_script(_SCRIPT)  # for the renewals, in a pipeline

    async def request(self, request: Request) -> bool:
        """Take the room's lock for the request and queue it; False when the room is busy."""
        queued = bool(await self._script(keys=[LOCK_PREFIX + request.room, self._key],
                                         args=["request", request.rid, LOCK_TTL_MS, *request.fields()]))
        if queued and self._queued is not None:
            self._queued.set()
        return queued

    async def lock(self, room: str, rid: str) -> bool:
        """Take the room's lock for ``rid`` (or keep it); False when another generation holds it."""
        return bool(await self._script(keys=[LOCK_PREFIX + room], args=["lock", rid, LOCK_TTL_MS]))

    async def start(self, request: Request, answer_key: str) -> tuple[bool, bool]:
        """A worker starts ``request``: ``(answered, cancelled)`` - its answer is already stored
        (``answer_key`` exists), it was cancelled - in one step; unless answered, the room's lock
        is taken for it again when free (it may have expired while the request waited)."""
        answered, cancelled = await self._script(
            keys=[LOCK_PREFIX + request.room, CANCELLED_PREFIX + request.rid, answer_key],
            args=["start", request.rid, LOCK_TTL_MS])
        return bool(answered), bool(cancelled)

    async def queue(self, request: Request) -> None:
        """Queue a request whose lock is already taken."""
        await self._redis.xadd(self._key, dict(zip(request.fields()[::2], request.fields()[1::2], strict=True)),
                               maxlen=100_000, approximate=True)
        if self._queued is not None:
            self._queued.set()

    async def renew(self, generations: Sequence[tuple[str, str]]) -> None:
        """Renew the locks of these ``(room, rid)`` generations (those they still hold), in one round trip."""
        if generations:
            async with self._redis.pipeline(transaction=False) as pipe:
                for room, rid in generations:
                    await self._pipelined(keys=[LOCK_PREFIX + room], args=["renew", rid, LOCK_TTL_MS],
                                          client=pipe)
                await pipe.execute()

    async def release(self, room: str, rid: str) -> bool:
        return bool(await self._script(keys=[LOCK_PREFIX + room], args=["release", rid]))

    async def cancel(self, room: str, rid: str) -> bool:
        """Stop generation ``rid`` of ``room``; False when it is not running."""
        return bool(await self._script(keys=[LOCK_PREFIX + room, CANCELLED_PREFIX + rid],
                                       args=["cancel", rid, CANCEL_CHANNEL, CANCELLED_TTL_S]))

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Request]:
        """New requests for ``consumer`` (waits up to ``block_ms`` for one)."""
        if self._queued is not None:
            self._queued.clear()
            reply = await self._redis.xreadgroup(GROUP, consumer, {self._key: ">"}, count=count)
            if not reply or not reply[0][1]:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), block_ms / 1000)
                reply = await self._redis.xreadgroup(GROUP, consumer, {self._key: ">"}, count=count)
        else:
            reply = await self._redis.xreadgroup(GROUP, consumer, {self._key: ">"}, count=count, block=block_ms)
        return [request for _, entries in reply or [] for request in _requests(entries, attempts={})]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Request]:
        """Requests idle for ``min_idle_ms`` (their worker died), now ``consumer``'s."""
        reply = await self._redis.xautoclaim(self._key, GROUP, consumer, min_idle_ms, "0-0", count=count)
        entries = [entry for entry in reply[1] if entry and entry[1]]
        deleted = [entry_id for entry_id in _deleted_ids(reply)]
        if deleted:
            await self.ack(deleted)
        if not entries:
            return []
        pending = await self._redis.xpending_range(self._key, GROUP, min=entries[0][0], max=entries[-1][0],
                                                   count=len(entries) + 100, consumername=consumer)
        attempts = {item["message_id"]: int(item["times_delivered"]) for item in pending}
        return _requests(entries, attempts)

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Keep ``consumer``'s claim on ``entry_ids`` fresh: their worker is alive."""
        if entry_ids:
            await self._redis.xclaim(self._key, GROUP, consumer, 0, list(entry_ids), justid=True)

    async def ack(self, entry_ids: Sequence[str | bytes]) -> None:
        if entry_ids:
            await asyncio.gather(self._store.call("XACK", self._key, GROUP, *entry_ids),
                                 self._store.call("XDEL", self._key, *entry_ids))

    async def forget_consumer(self, consumer: str) -> None:
        """Remove a stopped worker's consumer from the group, if nothing is pending for it."""
        pending = await self._redis.xpending_range(self._key, GROUP, min="-", max="+", count=1,
                                                   consumername=consumer)
        if not pending:
            await self._redis.xgroup_delconsumer(self._key, GROUP, consumer)

    def cancellations(self) -> Any:
        """A pubsub on the cancel channel (subscribe, then ``get_message``)."""
        return self._listener.pubsub()


def _requests(entries: list[Any], attempts: dict[bytes, int]) -> list[Request]:
    requests = []
    for entry_id, raw in entries:
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        requests.append(Request(room=fields.get("room", ""), rid=fields.get("rid", ""),
                                reply_to=fields.get("reply_to", ""), asker=fields.get("asker", ""),
                                entry_id=entry_id.decode(), attempt=attempts.get(entry_id, 1)))
    return requests


def _deleted_ids(reply: list[Any]) -> list[bytes]:
    """XAUTOCLAIM (Redis >= 7) also lists pending ids whose entries were deleted."""
    return list(reply[2]) if len(reply) > 2 else []
