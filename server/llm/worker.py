"""An LLM worker: serves the bot's requests from the queue, streaming each answer into its room.

For each request (see :class:`~server.store.ports.RequestQueue` and
:class:`~server.store.ports.GenerationLocks`):

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

The worker's four loops (``<label>-read``, ``-reclaim``, ``-keepalive``, ``-cancel``) are supervised
(:mod:`server.supervise`): whatever one raises (Redis unreachable or refusing writes, the consumer
group gone after a Redis restart, a bug), it starts again after a backoff, and it is down until it
works again.

A generation's lifecycle is a state machine, in the style of h11's ``_state.py``: :data:`TRANSITIONS`
maps ``(state, trigger)`` to the next state, and every change of state goes through
:meth:`Generation.fire`, which raises :class:`GenerationStateError` for a pair that is not in the
table. A final state is entered once the generation's effects are done (the lock released, the
answer stored, ``llm.error`` sent); only the request's acknowledgement comes after it.

==========  ========  ==========  ===========================================================================
state       trigger   next state  what happened
==========  ========  ==========  ===========================================================================
CLAIMED     GIVE_UP   GAVE_UP     delivered more than MAX_ATTEMPTS times: lock released, ``llm.error`` sent
CLAIMED     START     STARTING    the worker asks whether it is answered or cancelled (retaking the lock)
CLAIMED     ERROR     ABANDONED   an exception: not acknowledged, the request stays queued
STARTING    ANSWERED  SKIPPED     its answer is already stored (its worker died before acknowledging it)
STARTING    STREAM    STREAMING   the model is asked (unless cancelled already); its deltas go to the room
STARTING    ERROR     ABANDONED   an exception (the store unreachable): the request stays queued
STREAMING   END       STORING     the stream ended (finished, cancelled or failed): the lock is released
STREAMING   ERROR     ABANDONED   an exception (the history unreadable): the request stays queued
STORING     FINISH    DONE        the answer is stored
STORING     CANCEL    CANCELLED   the answer so far is stored with ``finish_reason`` ``cancelled``
STORING     FAIL      FAILED      the answer so far (if any) is stored with ``error``, then ``llm.error`` sent
STORING     ERROR     ABANDONED   an exception (the answer not stored): the request stays queued
==========  ========  ==========  ===========================================================================

An abandoned request is taken over after ``LLM_RECLAIM_AFTER_S`` by a worker (this one or another),
as a new generation with the next attempt number; so is a finished one whose acknowledgement failed,
which then ends SKIPPED when its answer was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.codec import llm_error_frame, llm_response_body, llm_streaming_frame
from protocol.names import LLM_ROLE
from server.appender import Appender
from server.ephemeral import Ephemeral
from server.llm.provider import Outcome, Provider, ProviderError, build_messages
from server.llm.scripted import MODEL as SCRIPTED_MODEL
from server.metrics import COUNTS
from server.settings import LLMSettings
from server.store.ports import (
    GENERATION_LOCK_TTL_MS,
    GenerationLocks,
    NewEntry,
    Request,
    RequestQueue,
    RoomLog,
)
from server.supervise import Supervisor
from server.transcript import message

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # deliveries of one request that may generate; the next one ends with llm.error
ANSWER_DEDUPE_S = 24 * 3600  # how long a stored answer's rid is remembered (no second llm.response)
READ_BLOCK_MS = 1000


class State(enum.Enum):
    """Where a generation is (see the module docstring's table)."""

    CLAIMED = "claimed"  # read or reclaimed by this worker
    STARTING = "starting"
    STREAMING = "streaming"
    STORING = "storing"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"
    SKIPPED = "skipped"
    GAVE_UP = "gave_up"
    ABANDONED = "abandoned"


class Trigger(enum.Enum):
    """What moves a generation from one :class:`State` to the next."""

    GIVE_UP = "give_up"  # too many attempts: the lock released, llm.error sent
    START = "start"  # locks.start is asked
    ANSWERED = "answered"  # locks.start said its answer is stored
    STREAM = "stream"  # not answered: the model is asked
    END = "end"  # the stream ended (or was cancelled): the lock is released next
    FINISH = "finish"  # the complete answer is stored
    CANCEL = "cancel"  # the cancelled answer is stored
    FAIL = "fail"  # the failed answer is stored (when any text was streamed) and llm.error sent
    ERROR = "error"  # an exception: the request is left queued


CLAIMED, STARTING, STREAMING, STORING, DONE, CANCELLED, FAILED, SKIPPED, GAVE_UP, ABANDONED = State

#: A generation's whole lifecycle: ``(state, trigger) -> next state``. A pair not listed is a bug.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (CLAIMED, Trigger.GIVE_UP): GAVE_UP,
    (CLAIMED, Trigger.START): STARTING,
    (CLAIMED, Trigger.ERROR): ABANDONED,
    (STARTING, Trigger.ANSWERED): SKIPPED,
    (STARTING, Trigger.STREAM): STREAMING,
    (STARTING, Trigger.ERROR): ABANDONED,
    (STREAMING, Trigger.END): STORING,
    (STREAMING, Trigger.ERROR): ABANDONED,
    (STORING, Trigger.FINISH): DONE,
    (STORING, Trigger.CANCEL): CANCELLED,
    (STORING, Trigger.FAIL): FAILED,
    (STORING, Trigger.ERROR): ABANDONED,
}

FINAL_STATES = frozenset({DONE, CANCELLED, FAILED, SKIPPED, GAVE_UP, ABANDONED})


class GenerationStateError(RuntimeError):
    """A trigger that the generation's current state does not allow: a bug in the worker."""


@dataclass(slots=True)
class Generation:
    request: Request
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    text: list[str] = field(default_factory=list)
    state: State = CLAIMED

    def fire(self, trigger: Trigger) -> State:
        """The only place the state changes: the next state from :data:`TRANSITIONS`."""
        try:
            self.state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise GenerationStateError(f"generation {self.request.rid} of room {self.request.room}: can't handle "
                                       f"{trigger.name} in state {self.state.name}") from None
        return self.state


class Worker:
    def __init__(self, name: str, locks: GenerationLocks, requests: RequestQueue, room_log: RoomLog,
                 appender: Appender, ephemeral: Ephemeral, provider: Provider, settings: LLMSettings,
                 concurrency: int, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 supervisor: Supervisor | None = None, label: str = "llm") -> None:
        self.name = name  # the consumer's name in the group
        self.label = label  # its loops' names start with it (``/readyz``, ``/metrics``)
        self._supervisor = supervisor or Supervisor(sleep)
        self._locks = locks
        self._requests = requests
        self._log = room_log
        self._appender = appender
        self._ephemeral = ephemeral
        self._provider = provider
        self._settings = settings
        self._concurrency = concurrency
        self._sleep = sleep  # the loops' pauses (tests pass their own)
        self._running: dict[str, Generation] = {}  # rid -> generation
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._slot_freed = asyncio.Event()

    def loop_names(self) -> list[str]:
        return [f"{self.label}-{kind}" for kind in ("read", "reclaim", "keepalive", "cancel")]

    async def run(self) -> None:
        """Serve requests until cancelled (call :meth:`stop` first to end generations cleanly)."""
        loops = [self._read_loop, self._reclaim_loop, self._keepalive_loop, self._cancel_loop]
        await asyncio.gather(*(self._supervisor.run(name, loop)
                               for name, loop in zip(self.loop_names(), loops, strict=True)))

    def _up(self, kind: str) -> None:
        self._supervisor.up(f"{self.label}-{kind}")

    async def stop(self, timeout_s: float) -> None:
        """Take no new requests; end running generations as ``cancelled`` (stored) and wait for them."""
        self._stopping = True
        for generation in self._running.values():
            generation.cancel.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    async def forget(self) -> None:
        """Leave the consumer group, unless requests are still pending for this worker."""
        await self._requests.forget_consumer(self.name)

    def _free(self) -> int:
        return 0 if self._stopping else self._concurrency - len(self._running)

    def _start(self, requests: list[Request]) -> None:
        for request in requests:
            if request.rid in self._running or self._stopping:  # (read while stopping: left for a retake)
                continue
            self._running[request.rid] = generation = Generation(request)
            task = asyncio.get_running_loop().create_task(self._serve(generation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read_loop(self) -> None:
        await self._requests.ensure_group()
        while True:
            free = self._free()
            if free <= 0:  # every slot is taken: read again as soon as one frees
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            requests = await self._requests.read(self.name, free, READ_BLOCK_MS)
            self._up("read")
            self._start(requests)

    async def _reclaim_loop(self) -> None:
        idle_ms = int(self._settings.reclaim_after_s * 1000)
        while True:
            await self._sleep(min(self._settings.reclaim_after_s / 3, 5.0))
            free = self._free()
            if free > 0:
                requests = await self._requests.reclaim(self.name, idle_ms, free)
                self._up("reclaim")
                self._start(requests)

    async def _keepalive_loop(self) -> None:
        while True:
            await self._sleep(GENERATION_LOCK_TTL_MS / 3000)
            running = [generation.request for generation in self._running.values()]
            await self._locks.renew([(request.room, request.rid) for request in running])
            await self._requests.touch(self.name, [request.entry_id for request in running])
            self._up("keepalive")

    async def _cancel_loop(self) -> None:
        cancellations = self._locks.cancellations()
        try:
            await cancellations.subscribe()
            self._up("cancel")
            while True:
                event = await cancellations.next(timeout_s=1.0)
                if event is not None and event[0] == "message":
                    generation = self._running.get(event[1].decode())
                    if generation is not None:
                        generation.cancel.set()
        finally:
            await cancellations.close()

    async def _serve(self, generation: Generation) -> None:
        request = generation.request
        try:
            if request.attempt > MAX_ATTEMPTS:
                await self._locks.release(request.room, request.rid)
                await self._fail(request, None, ProviderError(
                    "provider_error", f"The answer failed {MAX_ATTEMPTS} times (its workers stopped); gave up."))
                generation.fire(Trigger.GIVE_UP)
            else:
                generation.fire(Trigger.START)
                answered, cancelled = await self._locks.start(request.room, request.rid)
                if cancelled:
                    generation.cancel.set()
                if answered:
                    generation.fire(Trigger.ANSWERED)
                else:
                    generation.fire(Trigger.STREAM)
                    await self._generate(generation)
            await self._requests.ack([request.entry_id])
        except Exception:
            # Left pending: another worker (or this one) takes it over after LLM_RECLAIM_AFTER_S.
            log.exception("room %s: generation %s failed; the request stays queued", request.room, request.rid)
            if generation.state not in FINAL_STATES:
                generation.fire(Trigger.ERROR)
        finally:
            self._running.pop(request.rid, None)
            self._slot_freed.set()

    async def _generate(self, generation: Generation) -> None:
        request = generation.request
        entries = await self._log.revrange(request.room, request.reply_to, "-",
                                             count=self._settings.history_turns + 1)
        history = [message(entry) for entry in reversed(entries)]
        messages = build_messages(self._settings.system_prompt, history, self._settings.history_turns)
        outcome: Outcome | None = None
        error: ProviderError | None = None
        if not generation.cancel.is_set():  # cancelled while it was queued: the model is not asked
            outcome, error = await self._ask(generation, messages)
        generation.fire(Trigger.END)
        text = "".join(generation.text)
        COUNTS.generations[error.code if error else outcome.finish_reason if outcome else "cancelled"] += 1
        await self._locks.release(request.room, request.rid)
        response_id = None
        if error is None or text:
            response_id = await self._store_answer(request, text, outcome, error)
        if error is not None:
            await self._fail(request, response_id, error)
        generation.fire(Trigger.FAIL if error else Trigger.FINISH if outcome else Trigger.CANCEL)

    async def _ask(self, generation: Generation, messages: Any) -> tuple[Outcome | None, ProviderError | None]:
        """Stream the model's answer until it ends or the generation is cancelled: its outcome or its error
        (neither when cancelled)."""
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
        if pump.cancelled():
            return None, None
        try:
            return pump.result(), None
        except ProviderError as exc:
            return None, exc

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
        entry = NewEntry(request.room, LLM_ROLE, body, request.rid, ANSWER_DEDUPE_S)
        stored = await self._appender.append(entry)
        return stored if isinstance(stored, bytes) else stored.id

    async def _fail(self, request: Request, response_id: bytes | None, error: ProviderError) -> None:
        frame = llm_error_frame(request.room, request.rid, request.reply_to, _now_ms(), error.code, error.message,
                                request.attempt)
        await self._ephemeral.send(request.room, response_id or request.reply_to.encode(), frame)

    def _model_name(self) -> str:
        return self._settings.model if self._settings.provider == "openai" else SCRIPTED_MODEL


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
