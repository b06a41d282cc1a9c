"""An LLM worker: serves the bot's requests from the queue, streaming each answer into its room.

For each request (see :mod:`server.llm.jobs`):

1. A request delivered too many times (its workers kept dying) ends with ``llm.error``. One whose
   answer is already stored (a worker died between storing it and acknowledging the request) is
   only acknowledged: a request never leaves two ``llm.response`` entries.
2. The model sees the system prompt and the room's last messages up to the triggering one.
3. Each text delta goes to the room as an ``llm.streaming`` frame (not stored), after the
   triggering message and in ``seq`` order, on every node. A request taken over from a dead
   worker starts again at ``seq`` 0 with ``hd.attempt`` 2, 3...
4. When the answer ends (finished, cancelled, failed), the room's lock is released, then the
   answer is stored as ``llm.response`` (with whatever text was streamed) and broadcast; a failure
   also broadcasts ``llm.error``. Then the request is acknowledged.

Generation runs as tasks on the worker's event loop: the provider is asynchronous, so a slow model
never blocks the relay or other rooms. While a generation runs, the worker renews the room's lock
and its claim on the request. ``llm.cancel`` (heard on the cancel channel) and shutdown stop a
generation; the provider then closes its upstream stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.codec import llm_error_frame, llm_response_body, llm_streaming_frame
from protocol.names import LLM_ROLE, stream_key
from server.appender import Appender
from server.ephemeral import Ephemeral
from server.feed import backoff
from server.llm.jobs import CANCEL_CHANNEL, LOCK_TTL_MS, Jobs, Request
from server.llm.provider import Outcome, Provider, ProviderError, build_messages
from server.llm.settings import LLMSettings
from server.metrics import COUNTS
from server.store import UNREACHABLE, NewEntry, StreamStore, cid_key
from server.transcript import message

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # deliveries of one request that may generate; the next one ends with llm.error
ANSWER_DEDUPE_S = 24 * 3600  # how long a stored answer's rid is remembered (no second llm.response)
READ_BLOCK_MS = 1000


@dataclass(slots=True)
class Generation:
    request: Request
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    text: list[str] = field(default_factory=list)


class Worker:
    def __init__(self, name: str, jobs: Jobs, store: StreamStore, appender: Appender, ephemeral: Ephemeral,
                 provider: Provider, settings: LLMSettings, concurrency: int) -> None:
        self.name = name  # the consumer's name in the group
        self._jobs = jobs
        self._store = store
        self._appender = appender
        self._ephemeral = ephemeral
        self._provider = provider
        self._settings = settings
        self._concurrency = concurrency
        self._running: dict[str, Generation] = {}  # rid -> generation
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._slot_freed = asyncio.Event()

    async def run(self) -> None:
        """Serve requests until cancelled (call :meth:`stop` first to end generations cleanly)."""
        loops = [self._read_loop, self._reclaim_loop, self._keepalive_loop, self._cancel_loop]
        await asyncio.gather(*(_forever(loop) for loop in loops))

    async def stop(self, timeout_s: float) -> None:
        """Take no new requests; end running generations as ``cancelled`` (stored) and wait for them."""
        self._stopping = True
        for generation in self._running.values():
            generation.cancel.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    async def forget(self) -> None:
        """Leave the consumer group, unless requests are still pending for this worker."""
        await self._jobs.forget_consumer(self.name)

    def _free(self) -> int:
        return 0 if self._stopping else self._concurrency - len(self._running)

    def _start(self, requests: list[Request]) -> None:
        for request in requests:
            if request.rid in self._running:
                continue
            self._running[request.rid] = generation = Generation(request)
            task = asyncio.get_running_loop().create_task(self._serve(generation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read_loop(self) -> None:
        await self._jobs.ensure_group()
        while True:
            free = self._free()
            if free <= 0:  # every slot is taken: read again as soon as one frees
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._start(await self._jobs.read(self.name, free, READ_BLOCK_MS))

    async def _reclaim_loop(self) -> None:
        idle_ms = int(self._settings.reclaim_after_s * 1000)
        while True:
            await asyncio.sleep(min(self._settings.reclaim_after_s / 3, 5.0))
            free = self._free()
            if free > 0:
                self._start(await self._jobs.reclaim(self.name, idle_ms, free))

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL_MS / 3000)
            running = [generation.request for generation in self._running.values()]
            await self._jobs.renew([(request.room, request.rid) for request in running])
            await self._jobs.touch(self.name, [request.entry_id for request in running])

    async def _cancel_loop(self) -> None:
        pubsub = self._jobs.cancellations()
        try:
            await pubsub.subscribe(CANCEL_CHANNEL)
            while True:
                event = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if event is not None and isinstance(event.get("data"), bytes):
                    generation = self._running.get(event["data"].decode())
                    if generation is not None:
                        generation.cancel.set()
        finally:
            await pubsub.aclose()

    async def _serve(self, generation: Generation) -> None:
        request = generation.request
        try:
            if request.attempt > MAX_ATTEMPTS:
                await self._jobs.release(request.room, request.rid)
                await self._fail(request, None, ProviderError(
                    "provider_error", f"The answer failed {MAX_ATTEMPTS} times (its workers stopped); gave up."))
            else:
                answered, cancelled = await self._jobs.start(
                    request, cid_key(stream_key(request.room), LLM_ROLE, request.rid))
                if cancelled:
                    generation.cancel.set()
                if not answered:
                    await self._generate(generation)
            await self._jobs.ack([request.entry_id])
        except Exception:
            # Left pending: another worker (or this one) takes it over after LLM_RECLAIM_AFTER_S.
            log.exception("room %s: generation %s failed; the request stays queued", request.room, request.rid)
        finally:
            self._running.pop(request.rid, None)
            self._slot_freed.set()

    async def _generate(self, generation: Generation) -> None:
        request = generation.request
        entries = await self._store.revrange(stream_key(request.room), request.reply_to, "-",
                                             count=self._settings.history_turns + 1)
        history = [message(entry) for entry in reversed(entries)]
        messages = build_messages(self._settings.system_prompt, history, self._settings.history_turns)
        outcome: Outcome | None = None
        error: ProviderError | None = None
        pump = asyncio.get_running_loop().create_task(self._pump(generation, messages))
        cancelled = asyncio.get_running_loop().create_task(generation.cancel.wait())
        try:
            await asyncio.wait([pump, cancelled], return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        if not pump.cancelled():
            try:
                outcome = pump.result()
            except ProviderError as exc:
                error = exc
        text = "".join(generation.text)
        COUNTS.generations[error.code if error else outcome.finish_reason if outcome else "cancelled"] += 1
        await self._jobs.release(request.room, request.rid)
        response_id = None
        if error is None or text:
            response_id = await self._store_answer(request, text, outcome, error)
        if error is not None:
            await self._fail(request, response_id, error)

    async def _pump(self, generation: Generation, messages: Any) -> Outcome:
        request, after = generation.request, generation.request.reply_to.encode()
        sent: list[asyncio.Future[None]] = []  # the deltas' sends, awaited before the answer is stored
        seq = 0
        try:
            async with contextlib.aclosing(self._provider.stream(messages)) as events:
                async for event in events:
                    if isinstance(event, Outcome):
                        return event
                    # Counted when handed over: from then on the delta reaches the members even if
                    # the generation is cancelled.
                    generation.text.append(event)
                    COUNTS.tokens_streamed += 1
                    told = self._ephemeral.post(request.room, after, llm_streaming_frame(
                        request.room, request.rid, request.reply_to, seq, event, request.attempt))
                    if not sent or sent[-1] is not told:
                        sent.append(told)
                    seq += 1
            raise ProviderError("provider_unavailable", "The answer ended without a finish reason.")
        finally:
            # Every node has heard the deltas before the answer is appended (and announced).
            results = await asyncio.shield(asyncio.gather(*sent, return_exceptions=True))
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None and not isinstance(failed, asyncio.CancelledError):
                log.warning("room %s: some deltas of %s did not reach other nodes: %s", request.room, request.rid,
                            failed)

    async def _store_answer(self, request: Request, text: str, outcome: Outcome | None,
                            error: ProviderError | None) -> bytes | None:
        finish = outcome.finish_reason if outcome else "error" if error else "cancelled"
        body = llm_response_body(request.room, request.rid, request.reply_to, _now_ms(), text, finish,
                                 outcome.model if outcome else self._model_name(),
                                 outcome.usage if outcome else None, request.attempt)
        entry = NewEntry(stream_key(request.room), LLM_ROLE, body, request.rid, ANSWER_DEDUPE_S)
        stored = await self._appender.append(entry)
        return stored if isinstance(stored, bytes) else stored.id

    async def _fail(self, request: Request, response_id: bytes | None, error: ProviderError) -> None:
        frame = llm_error_frame(request.room, request.rid, request.reply_to, _now_ms(), error.code, error.message,
                                request.attempt)
        await self._ephemeral.send(request.room, response_id or request.reply_to.encode(), frame)

    def _model_name(self) -> str:
        from server.llm.scripted import MODEL

        return self._settings.model if self._settings.provider == "openai" else MODEL


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _forever(loop: Callable[[], Awaitable[None]]) -> None:
    """Run one of the worker's loops; when it fails (Redis unreachable, or restarted and without the
    consumer group), start it again after a pause."""
    failures = 0
    while True:
        try:
            await loop()
        except UNREACHABLE as exc:
            log.warning("LLM worker: Redis unreachable (%s); retrying", exc)
        except Exception:
            log.exception("LLM worker: %s failed; restarting it", getattr(loop, "__name__", loop))
        await asyncio.sleep(backoff(failures))
        failures += 1
