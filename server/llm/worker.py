"""An LLM worker: serves the bot's requests from the queue, streaming each answer into its room.

For each request (see :class:`~server.store.ports.RequestQueue` and
:class:`~server.store.ports.GenerationLocks`):

1. The worker starts it with :meth:`~server.store.ports.GenerationLocks.start`: the room's lock is
   taken over with a new fencing token (fencing out any earlier worker of the same request) and a
   lease the worker renews (``running_lease_ms``: twice ``LLM_RECLAIM_AFTER_S``, so a dead worker's
   request is taken over before its room could go to another question). A request whose answer is
   already stored, or that ended already, is only acknowledged; one whose room another question
   took (its lease lapsed) ends with ``llm.error`` ``expired``; one delivered too many times (its
   workers kept dying) with ``llm.error`` ``provider_error``.
2. The model sees the system prompt and the room's last messages up to the triggering one.
3. Each text delta goes to the room as an ``llm.streaming`` frame (not stored; every frame of an answer
   that regenerates another carries ``hd.regenerates``), after the triggering
   message and in ``seq`` order, on every node; the deltas of one loop pass go in one step that
   checks the token first (:meth:`~server.store.ports.GenerationLocks.frames`): a worker whose token
   is stale sends nothing, and stops. A request taken over from a dead worker starts again at
   ``seq`` 0 with ``hd.attempt`` 2, 3... The same step adds the deltas to the generation's text so
   far, kept in the store for ``llm.snapshot`` (members entering the room mid-answer), bounded and
   expiring with the lock's lease.
4. When the answer ends it gets exactly one terminal event, its generation's last write, which
   checks the token and releases the room's lock in the same step (the room is free before anyone
   hears the answer): the ``llm.response`` is stored (finished; or cancelled or failed after some
   text, with ``finish_reason`` ``cancelled`` / ``error``), or, when no text was streamed, an
   ``llm.error`` is sent (the provider's code, or ``cancelled``: nothing is stored). The store is
   retried (same cid: never stored twice); when it keeps failing, ``llm.error`` ``store_failed``.
   Then the request is acknowledged. The answer's tokens (its provider's usage) are counted for the
   cost guard (:mod:`server.llm.quota`) when the stream ends, before the answer is stored.

Generation runs as tasks on the worker's event loop: the provider is asynchronous, so a slow model
never blocks the relay or other rooms. While a generation runs, the worker renews the room's lock
and its claim on the request; a renewal that finds the token stale stops the generation.
``llm.cancel`` (heard on the cancel channel) and shutdown stop a generation; the provider then closes
its upstream stream.

The worker's four loops (``<label>-read``, ``-reclaim``, ``-keepalive``, ``-cancel``) are supervised
(:mod:`server.supervise`): whatever one raises (Redis unreachable or refusing writes, the consumer
group gone after a Redis restart, a bug), it starts again after a backoff, and it is down until it
works again.

A generation's lifecycle is a state machine, in the style of h11's ``_state.py``: :data:`TRANSITIONS`
maps ``(state, trigger)`` to the next state, and every change of state goes through
:meth:`Generation.fire`, which raises :class:`GenerationStateError` for a pair that is not in the
table. A final state is entered once the generation's effects are done (its terminal event written);
only the request's acknowledgement comes after it (none for FENCED and ABANDONED).

==========  ========  ==========  ===========================================================================
state       trigger   next state  what happened
==========  ========  ==========  ===========================================================================
CLAIMED     START     STARTING    the worker asks whether it is answered or cancelled, retaking the lock
STARTING    ANSWERED  SKIPPED     its answer is stored or it ended (its worker died before acknowledging it)
STARTING    LAPSED    EXPIRED     another question holds the room: ``llm.error`` ``expired`` sent
STARTING    WAIT      WAITING     it waits for its turn (another question runs, or is ahead of it)
WAITING     START     STARTING    the room's turn passed (or the poll came): the worker asks again
WAITING     ERROR     ABANDONED   (every state but the final ones may fail: left queued)
STARTING    GIVE_UP   GAVE_UP     delivered more than MAX_ATTEMPTS times: ``llm.error`` sent, lock released
STARTING    STREAM    STREAMING   the model is asked (unless cancelled already); its deltas go to the room
STARTING    FENCE     FENCED      its end was written by another worker: nothing more written, no ack
STARTING    ERROR     ABANDONED   an exception (the store unreachable): the request stays queued
STREAMING   END       STORING     the stream ended (finished, cancelled or failed), every delta sent
STREAMING   FENCE     FENCED      a frame or a renewal found the token stale: stopped, nothing stored, no ack
STREAMING   ERROR     ABANDONED   an exception (the history unreadable): the request stays queued
STORING     FINISH    DONE        the answer is stored (the lock released in the same step)
STORING     CANCEL    CANCELLED   the text so far stored, ``cancelled``; none: ``llm.error`` ``cancelled``
STORING     FAIL      FAILED      the text so far stored, ``error``; none (or the store failed): ``llm.error``
STORING     FENCE     FENCED      the final write found the token stale: another worker owns the question
STORING     ERROR     ABANDONED   an exception (nothing could be written): the request stays queued
==========  ========  ==========  ===========================================================================

An abandoned (or fenced) request is taken over after ``LLM_RECLAIM_AFTER_S`` by a worker (this one or
another), as a new generation with the next attempt number; so is a finished one whose
acknowledgement failed, which then ends SKIPPED.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol.codec import llm_error_body, llm_response_body, llm_streaming_frame
from protocol.errors import LLM_ERROR_CODES
from protocol.names import LLM_ROLE
from server import logs
from server.appender import Appender
from server.batching import Batcher
from server.ephemeral import Ephemeral
from server.llm.provider import Outcome, Provider, ProviderError, build_messages
from server.llm.quota import CostGuard
from server.llm.scripted import MODEL as SCRIPTED_MODEL
from server.metrics import COUNTS
from server.settings import LLMSettings
from server.states import next_state
from server.store.ports import (
    Duplicate,
    Fence,
    Fenced,
    GenerationLocks,
    NewEntry,
    Progress,
    Request,
    RequestQueue,
    RoomLog,
)
from server.supervise import Supervisor, backoff
from server.transcript import message

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # deliveries of one request that may generate; the next one ends with llm.error
ANSWER_DEDUPE_S = 24 * 3600  # how long a stored answer's rid is remembered (no second llm.response)
READ_BLOCK_MS = 1000
FINAL_WRITE_ATTEMPTS = 10  # tries of a generation's last write (store, then llm.error): about 10 s of backoff
TURN_POLL_S = 1.0  # how often a waiting question asks again without being told its room's turn passed

T = TypeVar("T")


class State(enum.Enum):
    """Where a generation is (see the module docstring's table)."""

    CLAIMED = "claimed"  # read or reclaimed by this worker
    WAITING = "waiting"  # parked until the room's turn is its own
    STARTING = "starting"
    STREAMING = "streaming"
    STORING = "storing"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    GAVE_UP = "gave_up"
    FENCED = "fenced"
    ABANDONED = "abandoned"


class Trigger(enum.Enum):
    """What moves a generation from one :class:`State` to the next."""

    START = "start"  # locks.start is asked
    ANSWERED = "answered"  # locks.start said its answer is stored, or it ended
    LAPSED = "lapsed"  # locks.start said another question holds the room: llm.error expired sent
    WAIT = "wait"  # locks.start said it waits for its turn
    GIVE_UP = "give_up"  # too many attempts: llm.error sent, the lock released
    STREAM = "stream"  # not answered: the model is asked
    END = "end"  # the stream ended (or was cancelled): the terminal event is written next
    FINISH = "finish"  # the complete answer is stored
    CANCEL = "cancel"  # the cancelled answer is stored, or llm.error cancelled sent
    FAIL = "fail"  # the failed answer is stored, or llm.error sent
    FENCE = "fence"  # a write was refused: the token is stale
    ERROR = "error"  # an exception: the request is left queued


(CLAIMED, WAITING, STARTING, STREAMING, STORING, DONE, CANCELLED, FAILED, SKIPPED, EXPIRED, GAVE_UP, FENCED,
 ABANDONED) = State

#: A generation's whole lifecycle: ``(state, trigger) -> next state``. A pair not listed is a bug.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (CLAIMED, Trigger.START): STARTING,
    (STARTING, Trigger.ANSWERED): SKIPPED,
    (STARTING, Trigger.LAPSED): EXPIRED,
    (STARTING, Trigger.WAIT): WAITING,
    (WAITING, Trigger.START): STARTING,
    (WAITING, Trigger.ERROR): ABANDONED,
    (STARTING, Trigger.GIVE_UP): GAVE_UP,
    (STARTING, Trigger.STREAM): STREAMING,
    (STARTING, Trigger.FENCE): FENCED,
    (STARTING, Trigger.ERROR): ABANDONED,
    (STREAMING, Trigger.END): STORING,
    (STREAMING, Trigger.FENCE): FENCED,
    (STREAMING, Trigger.ERROR): ABANDONED,
    (STORING, Trigger.FINISH): DONE,
    (STORING, Trigger.CANCEL): CANCELLED,
    (STORING, Trigger.FAIL): FAILED,
    (STORING, Trigger.FENCE): FENCED,
    (STORING, Trigger.ERROR): ABANDONED,
}

FINAL_STATES = frozenset({DONE, CANCELLED, FAILED, SKIPPED, EXPIRED, GAVE_UP, FENCED, ABANDONED})
UNACKNOWLEDGED = frozenset({FENCED, ABANDONED})  # left queued: a worker with the current token owns them


class GenerationStateError(RuntimeError):
    """A trigger that the generation's current state does not allow: a bug in the worker."""


@dataclass(slots=True)
class Generation:
    request: Request
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    text: list[str] = field(default_factory=list)
    state: State = CLAIMED
    fence: Fence | None = None  # the room's lock as this worker holds it (set by the start)
    fenced: bool = False  # a frame or a renewal found the token stale: write nothing more
    cancelled_by: str | None = None  # the role whose llm.cancel stopped it (None: not cancelled, or the server)

    def cancel_by(self, role: str | None) -> None:
        """``llm.cancel`` from ``role`` stops it (the first cancel is the one recorded)."""
        if not self.cancel.is_set():
            self.cancelled_by = role or None
        self.cancel.set()

    def fire(self, trigger: Trigger) -> State:
        """The only place the state changes: the next state from :data:`TRANSITIONS`."""
        self.state = next_state(TRANSITIONS, self.state, trigger, GenerationStateError,
                                f"generation {self.request.rid} of room {self.request.room}")
        return self.state

    def fence_out(self) -> None:
        """Another worker owns the question now (or its lease lapsed): stop, write nothing more."""
        self.fenced = True
        self.cancel.set()


class FencedFrames:
    """A generation's deltas, sent in one fenced step per loop pass (one in flight at a time).

    Each step checks the generation's token before anything is published, and adds the step's deltas
    to the generation's text so far (what ``llm.snapshot`` shows members entering the room); a refused
    step fences the generation out. This process's own members get a batch once the step has checked
    the token."""

    def __init__(self, locks: GenerationLocks, ephemeral: Ephemeral, generation: Generation) -> None:
        self._locks = locks
        self._ephemeral = ephemeral
        self._generation = generation
        self._batches: Batcher[tuple[bytes, str, int, str]] = Batcher(self._step)

    def post(self, after: bytes, frame: str, seq: int, delta: str) -> asyncio.Future[None]:
        """Send ``frame`` (delta ``seq``, whose text is ``delta``) after the entry ``after``; the future is
        done once the step ran (frames posted while one step is in flight share the next step's future)."""
        return self._batches.post((after, frame, seq, delta))

    async def _step(self, batch: list[tuple[bytes, str, int, str]]) -> None:
        generation = self._generation
        fence, request = generation.fence, generation.request
        assert fence is not None
        if generation.fenced:
            return
        progress = Progress(request.reply_to, request.attempt, batch[-1][2], "".join(item[3] for item in batch))
        held = await self._locks.frames(fence, [after + b" " + frame.encode() for after, frame, _, _ in batch],
                                        self._ephemeral.node, progress)
        if not held:
            log.warning("room %s: generation %s lost its room's lock (token %d): stopped", fence.room,
                        fence.rid, fence.token)
            generation.fence_out()
            return
        for after, frame, _, _ in batch:
            self._ephemeral.local(fence.room, after, frame)


class Worker:
    def __init__(self, name: str, locks: GenerationLocks, requests: RequestQueue, room_log: RoomLog,
                 appender: Appender, ephemeral: Ephemeral, provider: Provider, settings: LLMSettings,
                 concurrency: int, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 supervisor: Supervisor | None = None, label: str = "llm", guard: CostGuard | None = None) -> None:
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
        self._guard = guard  # counts each answer's tokens (None: not counted)
        self._concurrency = concurrency
        self._sleep = sleep  # the loops' pauses (tests pass their own)
        self._running: dict[str, Generation] = {}  # rid -> generation
        self._waiting: dict[str, Generation] = {}  # rid -> a generation parked until its room's turn (in read order)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._slot_freed = asyncio.Event()

    def loop_names(self) -> list[str]:
        return [f"{self.label}-{kind}" for kind in ("read", "reclaim", "keepalive", "cancel", "turns")]

    async def run(self) -> None:
        """Serve requests until cancelled (call :meth:`stop` first to end generations cleanly)."""
        loops = [self._read_loop, self._reclaim_loop, self._keepalive_loop, self._cancel_loop, self._turns_loop]
        await asyncio.gather(*(self._supervisor.run(name, loop)
                               for name, loop in zip(self.loop_names(), loops, strict=True)))

    def _up(self, kind: str) -> None:
        self._supervisor.up(f"{self.label}-{kind}")

    async def stop(self, timeout_s: float) -> None:
        """Take no new requests; end running generations as ``cancelled`` and wait for them."""
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
            if request.rid in self._running or request.rid in self._waiting or self._stopping:
                continue  # (read while stopping: left for a retake)
            self._launch(Generation(request))

    def _launch(self, generation: Generation) -> None:
        self._running[generation.request.rid] = generation
        task = asyncio.get_running_loop().create_task(self._serve(generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake(self, room: str | None) -> None:
        """The parked generations of ``room`` (None: of every room) ask for their turn again."""
        for rid, generation in list(self._waiting.items()):
            if (room is None or generation.request.room == room) and not self._stopping:
                del self._waiting[rid]
                self._launch(generation)

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
            await self._sleep(self._settings.keepalive_s)
            await self._keepalive()
            self._up("keepalive")

    async def _keepalive(self) -> None:
        """Renew the running generations' locks (fencing out those whose token is stale) and touch
        the claims of those still held."""
        running = [generation for generation in self._running.values()
                   if generation.fence is not None and not generation.fenced]
        held = await self._locks.renew([generation.fence for generation in running if generation.fence],
                                       self._settings.running_lease_ms)
        for generation, still in zip(running, held, strict=True):
            if not still and generation.state is STREAMING:
                log.warning("room %s: generation %s lost its room's lock: stopped", generation.request.room,
                            generation.request.rid)
                generation.fence_out()
        await self._requests.touch(self.name, [generation.request.entry_id
                                               for generation in [*self._running.values(), *self._waiting.values()]
                                               if not generation.fenced])

    async def _cancel_loop(self) -> None:
        cancellations = self._locks.cancellations()
        try:
            await cancellations.subscribe()
            self._up("cancel")
            while True:
                event = await cancellations.next(timeout_s=1.0)
                if event is not None and event[0] == "message":
                    rid, _, by = event[1].decode().partition(" ")
                    generation = self._running.get(rid)
                    if generation is not None:
                        generation.cancel_by(by)
        finally:
            await cancellations.close()

    async def _turns_loop(self) -> None:
        """Wake the parked generations of a room whose turn passed (on any node), and every parked one each
        :data:`TURN_POLL_S` (a notice can be lost: Redis's pub/sub delivers at most once)."""
        turns = self._locks.turns()
        try:
            await turns.subscribe()
            self._up("turns")
            polled = time.monotonic()
            while True:
                event = await turns.next(timeout_s=TURN_POLL_S)
                if event is not None and event[0] == "message":
                    self._wake(event[1].decode())
                if time.monotonic() - polled >= TURN_POLL_S:
                    polled = time.monotonic()
                    self._wake(None)
        finally:
            await turns.close()

    async def _serve(self, generation: Generation) -> None:
        request = generation.request
        logs.bind(sid=request.room, rid=request.rid)  # this task's log lines name the generation
        try:
            generation.fire(Trigger.START)
            started = await self._locks.start(request.room, request.rid, self._settings.running_lease_ms)
            if started.cancelled:
                generation.cancel_by(started.cancelled_by)
            if started.answered:
                generation.fire(Trigger.ANSWERED)
            elif started.fence is None and started.waits:
                generation.fire(Trigger.WAIT)  # parked: not acknowledged, its claim touched
                self._waiting[request.rid] = generation
                return
            elif started.fence is None:
                ended = await self._end(generation, "expired", LLM_ERROR_CODES["expired"])
                generation.fire(Trigger.LAPSED if ended else Trigger.FENCE)
            elif request.attempt > MAX_ATTEMPTS:
                generation.fence = started.fence
                ended = await self._end(generation, "provider_error",
                                        f"The answer failed {MAX_ATTEMPTS} times (its workers stopped); gave up.")
                generation.fire(Trigger.GIVE_UP if ended else Trigger.FENCE)
            else:
                generation.fence = started.fence
                generation.fire(Trigger.STREAM)
                await self._generate(generation)
            if generation.state not in UNACKNOWLEDGED:
                await self._requests.ack([request.entry_id])
            if generation.fence is not None and generation.state is not FENCED:
                await self._pass_turn(request.room)
        except Exception:
            # Left pending: another worker (or this one) takes it over after LLM_RECLAIM_AFTER_S.
            log.exception("room %s: generation %s failed; the request stays queued", request.room, request.rid)
            if generation.state not in FINAL_STATES:
                generation.fire(Trigger.ERROR)
        finally:
            self._running.pop(request.rid, None)
            self._slot_freed.set()

    async def _pass_turn(self, room: str) -> None:
        """The room's lock was released by this generation's last write: a waiting question may start."""
        try:
            await self._locks.pass_turn(room)
        except Exception as exc:  # the waiting questions' workers ask again within TURN_POLL_S
            log.warning("room %s: the next question was not told its turn (%s)", room, exc)

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
        if error is not None:
            log.warning("room %s: generation %s failed: %s (HTTP %s): %s", request.room, request.rid, error.code,
                        error.status or "-", error.message)
        if outcome is not None and outcome.usage and self._guard is not None:  # before the answer is heard
            await self._guard.spent(request.room, self._model_name(), outcome.usage)
        if generation.fenced:
            COUNTS.generations["fenced"] += 1
            generation.fire(Trigger.FENCE)
            return
        generation.fire(Trigger.END)
        text = "".join(generation.text)
        trigger = Trigger.FAIL if error else Trigger.FINISH if outcome else Trigger.CANCEL
        if outcome is not None or text:
            stored = await self._store_answer(generation, text, outcome, error)
            if stored is None:
                generation.fire(Trigger.FENCE)
                return
            if stored:
                COUNTS.generations[error.code if error else outcome.finish_reason if outcome else "cancelled"] += 1
                generation.fire(trigger)
                return
            code, trigger = "store_failed", Trigger.FAIL  # the answer is lost: say so, once
            reason = LLM_ERROR_CODES[code]
        else:
            code = error.code if error else "cancelled"
            reason = error.message if error else LLM_ERROR_CODES[code]
        if not await self._end(generation, code, reason, generation.cancelled_by if code == "cancelled" else None):
            generation.fire(Trigger.FENCE)
            return
        COUNTS.generations[code] += 1
        generation.fire(trigger)

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
        frames = FencedFrames(self._locks, self._ephemeral, generation)
        sent: list[asyncio.Future[None]] = []  # the deltas' sends, awaited before the answer is stored
        seq = 0
        try:
            async with contextlib.aclosing(self._provider.stream(messages)) as events:
                async for event in events:
                    if isinstance(event, Outcome):
                        return event
                    # Counted when handed over: from then on the delta reaches the members even if
                    # the generation is cancelled (unless its token is stale).
                    generation.text.append(event)
                    COUNTS.tokens_streamed += 1
                    told = frames.post(after, llm_streaming_frame(request.room, request.rid, request.reply_to, seq,
                                                                  event, request.attempt, request.regenerates),
                                     seq, event)
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

    async def _store_answer(self, generation: Generation, text: str, outcome: Outcome | None,
                            error: ProviderError | None) -> bool | None:
        """Store the answer, fenced (the lock released in the same step), retrying a failed store (its
        cid is the rid: never stored twice). True when stored (now or before), None when the token is
        stale, False when the store kept failing."""
        request = generation.request
        finish = outcome.finish_reason if outcome else "error" if error else "cancelled"
        body = llm_response_body(request.room, request.rid, request.reply_to, _now_ms(), text, finish,
                                 self._model_name(), outcome.usage if outcome else None, request.attempt,
                                 (error.code, error.message) if error else None,
                                 generation.cancelled_by if finish == "cancelled" else None, request.regenerates)
        entry = NewEntry(request.room, LLM_ROLE, body, request.rid, ANSWER_DEDUPE_S, generation.fence)
        try:
            stored = await self._final_write(request, "the answer", lambda: self._appender.append(entry))
        except Fenced:
            log.warning("room %s: the answer of %s was refused: its token is stale", request.room, request.rid)
            return None
        except Exception:
            return False
        return isinstance(stored, bytes | Duplicate)

    async def _end(self, generation: Generation, code: str, text: str, cancelled_by: str | None = None) -> bool:
        """End the generation with ``llm.error``, stored like an answer (cid = rid: never twice; fenced when
        the generation holds the room's lock, which the same step releases), so that every member hears
        it, a member that was away or whose node was re-subscribing included. False when the token is
        stale (or another worker ended it)."""
        request = generation.request
        body = llm_error_body(request.room, request.rid, request.reply_to, _now_ms(), code, text, request.attempt,
                              cancelled_by, request.regenerates)
        entry = NewEntry(request.room, LLM_ROLE, body, request.rid, ANSWER_DEDUPE_S, generation.fence)
        try:
            await self._final_write(request, "llm.error", lambda: self._appender.append(entry))
        except Fenced:
            log.warning("room %s: the llm.error of %s was refused: its token is stale", request.room, request.rid)
            return False
        return True

    async def _final_write(self, request: Request, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """``write()``, tried up to :data:`FINAL_WRITE_ATTEMPTS` times while it fails (not when it is
        fenced): the last failure is raised."""
        failures = 0
        while True:
            try:
                return await write()
            except Fenced:
                raise
            except Exception as exc:
                failures += 1
                if failures >= FINAL_WRITE_ATTEMPTS:
                    log.error("room %s: %s of %s failed %d times: %s", request.room, what, request.rid, failures, exc)
                    raise
                log.warning("room %s: %s of %s failed (%s); retrying", request.room, what, request.rid, exc)
                await self._sleep(backoff(failures - 1))

    def _model_name(self) -> str:
        """``bd.model`` of every answer, finished, failed or cancelled: the model asked for (``LLM_MODEL``,
        or the scripted provider's), never the name the upstream answers with (a gateway's alias, a
        dated snapshot), which a failed or cancelled answer may never have heard."""
        return self._settings.model if self._settings.provider == "openai" else SCRIPTED_MODEL


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
