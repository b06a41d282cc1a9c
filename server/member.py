"""A member: one WebSocket connection in one room, and its outbound side.

Theory of operation. Fan-out never awaits a client: :meth:`Member.push` appends a ready-made
text frame to the member's bounded queue and returns at once. What is queued during one pass of
the event loop is written at the end of it, all in one go: directly to the connection's transport
when the server allows it (:mod:`server.outlet`), else by the member's writer task through the
ASGI ``send`` callable. When the client reads slowly (its transport stops taking bytes), a writer
task waits for that member alone. A member whose queue passes ``queue_max`` frames is a slow
consumer: its queue is dropped and the connection is closed with 1013 and reason ``slow
consumer``, so it can resume from its last stream id instead of holding memory for everyone else.

A member that enters its room while the bot answers is sent an ``llm.snapshot`` of each running
generation (:mod:`server.session`); the deltas the snapshot holds are dropped for it, the held ones
when :meth:`Member.release` is given the :class:`~protocol.snapshots.SnapshotGate`, the later ones as
they come (until the gate has nothing left to drop). Held deltas are not merged: the gate sees each
delta as the worker sent it, so no merged frame ever straddles a snapshot.

``llm.streaming`` deltas (:meth:`Member.push_delta`) are not stored: a member that missed them could
not get them back, so they never count toward ``queue_max``. Instead, while the member is backed up
(SLOW, or an ASGI send under way: :attr:`Member.backed_up`), a delta that continues the one queued
last is merged into it (:mod:`server.outbox`, :mod:`protocol.deltas`): a stalled member
holds one frame per generation between two other frames, not one per token. A member that keeps
up gets every delta as it came. (A merge in progress, :attr:`Outbox.run`, is only ever open while
backed up, never in the held frames: the writer seals it before it writes.)

The outbound side is a state machine, in the style of h11's ``_state.py``: :data:`TRANSITIONS`
maps ``(state, trigger)`` to the next state, and every change of state goes through
:meth:`Member._fire`, which raises :class:`MemberStateError` for a pair that is not in the table.

=================  ===============  =================  ==========================================
state              trigger          next state         who fires it
=================  ===============  =================  ==========================================
NEW                START_DIRECT     DIRECT             start(), the transport can be written to
NEW                START_ASGI       ASGI               start(), no direct outlet: a writer task
NEW                CLOSE            CLOSE_REQUESTED    close() before start()
DIRECT             STALL            SLOW               a flush found the transport full
DIRECT             CLOSE            CLOSING            close()
DIRECT             GONE             CLOSED             a flush found the connection gone
SLOW               WRITABLE         DIRECT             the writer task wrote everything queued
SLOW               CLOSE            CLOSING            close()
SLOW               GONE             CLOSED             the writer task could not write
ASGI               CLOSE            CLOSING            close()
ASGI               GONE             CLOSED             the writer task could not send
CLOSE_REQUESTED    START_DIRECT     CLOSING            start(): the close goes out once accepted
CLOSE_REQUESTED    START_ASGI       CLOSING            start(), likewise
CLOSE_REQUESTED    CLOSE            CLOSE_REQUESTED    close() again: the first code is kept
CLOSING            CLOSE            CLOSING            close() again: the first code is kept
CLOSING            CLOSE_SENT       CLOSED             the writer task sent the close frame
CLOSING            GONE             CLOSED             the writer task could not send (or timed out)
CLOSED             CLOSE            CLOSED             close() again: nothing to do
=================  ===============  =================  ==========================================

What each state means for the frames:

- NEW: not accepted yet. Frames queue; nothing is written.
- DIRECT: frames are written straight to the transport by :meth:`Member._flush`, scheduled with
  ``call_soon`` by the first push of a loop pass, so a pass's frames go out in one ``write``.
- SLOW: the transport took no more bytes; the writer task waits until it does, writes what is
  queued, and hands back to DIRECT (WRITABLE). Pushes only queue.
- ASGI: no direct outlet (another server, a wrapped ``send``): the writer task sends each frame
  through the ASGI ``send`` and sleeps on an event while the queue is empty.
- CLOSE_REQUESTED: closed before being accepted (the held frames overflowed): the close frame is
  sent once :meth:`Member.start` is called.
- CLOSING: a writer task sends what is still queued, then the close frame. Pushes are ignored.
- CLOSED: nothing more is written (the close frame went out, or the client is gone).

Two bits of state stay outside the table, like h11's keep-alive flag. ``_awake`` is True when the
writing side will look at the queue without being woken (a flush is scheduled, the writer task is
running, writing has not started, or the member is closing); only DIRECT and an idle ASGI writer
clear it. ``_held`` is the resume's concern, not the lifecycle's: while a replay is read, live
frames are set aside (:meth:`hold`) and queued after the replay (:meth:`release`).

The hot path. Transitions happen a few times per connection; pushes, once per member per delivered
frame. So :meth:`push` never looks at the table: the states are ordered (an ``IntEnum``) so that
one comparison tells whether frames are still taken, then it picks the queue (``_held``), checks
its length (the deltas in it are subtracted only when that length reaches ``queue_max``), appends
(unless deltas are being merged at its end), and calls :meth:`_wake` only when ``_awake`` is False
(the first push of a loop pass, in DIRECT). :meth:`push_delta` is the same for a member that keeps
up; it merges only when the state says nothing can be written.

Cost, measured when the table was introduced (ten started members on a fake outlet, Python 3.11,
best of many runs; before -> after): a push alone, a flush already due, 108 -> 79 ns; five pushes
per member per loop pass, flushes included, 271 -> 249 ns per push; one push per member per pass
(a ``call_soon`` and a flush each time) 967 -> 946 ns per push.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.close import NORMAL, SLOW_CONSUMER
from protocol.deltas import DeltaFrame
from protocol.snapshots import SnapshotGate
from server.outbox import Outbox
from server.outlet import DirectOutlet, Gone, outlet_for
from server.states import next_state

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
OutletFor = Callable[[Send], DirectOutlet | None]

WS_1000_NORMAL = NORMAL.code  # the close codes and reasons are protocol.close's table
CLOSE_TIMEOUT_S = 5.0


class State(enum.IntEnum):
    """Where a member's outbound side is. Ordered: from CLOSE_REQUESTED on, frames are refused."""

    NEW = 0
    DIRECT = 1
    SLOW = 2
    ASGI = 3
    CLOSE_REQUESTED = 4
    CLOSING = 5
    CLOSED = 6


class Trigger(enum.Enum):
    """What moves a member from one :class:`State` to the next."""

    START_DIRECT = "start_direct"  # start(), with a direct outlet
    START_ASGI = "start_asgi"  # start(), without one
    STALL = "stall"  # a direct write found the transport full
    WRITABLE = "writable"  # the writer task wrote everything: direct writes again
    CLOSE = "close"  # close()
    CLOSE_SENT = "close_sent"  # the writer task sent the close frame
    GONE = "gone"  # the connection can no longer be written to (or the writer task stopped)


NEW, DIRECT, SLOW, ASGI, CLOSE_REQUESTED, CLOSING, CLOSED = State  # module globals: cheap on the hot path

#: The whole lifecycle: ``(state, trigger) -> next state``. A pair not listed is a bug.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (NEW, Trigger.START_DIRECT): DIRECT,
    (NEW, Trigger.START_ASGI): ASGI,
    (NEW, Trigger.CLOSE): CLOSE_REQUESTED,
    (DIRECT, Trigger.STALL): SLOW,
    (DIRECT, Trigger.CLOSE): CLOSING,
    (DIRECT, Trigger.GONE): CLOSED,
    (SLOW, Trigger.WRITABLE): DIRECT,
    (SLOW, Trigger.CLOSE): CLOSING,
    (SLOW, Trigger.GONE): CLOSED,
    (ASGI, Trigger.CLOSE): CLOSING,
    (ASGI, Trigger.GONE): CLOSED,
    (CLOSE_REQUESTED, Trigger.START_DIRECT): CLOSING,
    (CLOSE_REQUESTED, Trigger.START_ASGI): CLOSING,
    (CLOSE_REQUESTED, Trigger.CLOSE): CLOSE_REQUESTED,
    (CLOSING, Trigger.CLOSE): CLOSING,
    (CLOSING, Trigger.CLOSE_SENT): CLOSED,
    (CLOSING, Trigger.GONE): CLOSED,
    (CLOSED, Trigger.CLOSE): CLOSED,
}


class MemberStateError(RuntimeError):
    """A trigger that the member's current state does not allow: a bug in the server, not the client."""


class Member:
    __slots__ = ("_awake", "_close_frame", "_drained", "_gate", "_held", "_idle", "_loop", "_outlet", "_outlet_for",
                 "_queue", "_queue_max", "_send", "_sending", "_state", "_writer", "conn", "inflight", "role", "room")

    def __init__(self, send: Send, room: str, role: str | None, queue_max: int,
                 outlet_for: OutletFor = outlet_for) -> None:
        self._send = send
        self._outlet_for = outlet_for  # tests inject a fake outlet here
        self.room = room
        self.role = role  # the role the connection is bound to (?role=A), if any
        self.conn = secrets.token_hex(4)  # the connection's id in the room's roster
        self._state = NEW
        self._awake = True  # see the module docstring: push wakes the writing side only when False
        self._queue = Outbox()
        self._held: Outbox | None = None
        self._gate: SnapshotGate | None = None  # the deltas its llm.snapshot frames hold: dropped
        self._sending = False  # the ASGI writer waits for a send to return
        self._drained: asyncio.Event | None = None  # made while a history replay waits for the queue
        self._queue_max = queue_max
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._outlet: DirectOutlet | None = None
        self._idle: asyncio.Event | None = None  # wakes the writer task that sends through ASGI
        self._writer: asyncio.Task[None] | None = None  # the latest writer task
        self._close_frame: tuple[int, str] = (WS_1000_NORMAL, "")  # set by the first close()
        self.inflight = 0  # this member's appends not yet answered by Redis

    @property
    def state(self) -> State:
        return self._state

    @property
    def backed_up(self) -> bool:
        """Frames wait for the client to read: the transport takes no more (SLOW), or an ASGI send is under way."""
        return self._state is SLOW or self._sending

    @property
    def closing(self) -> bool:
        """Closing or closed: no more frames will be sent."""
        return self._state >= CLOSE_REQUESTED

    def start(self) -> None:
        """Start writing; call once the WebSocket is accepted."""
        self._loop = asyncio.get_running_loop()
        self._outlet = self._outlet_for(self._send)
        state = self._fire(Trigger.START_ASGI if self._outlet is None else Trigger.START_DIRECT)
        if state is DIRECT:
            if self._queue:
                self._wake()
            return
        if state is ASGI:
            self._idle = asyncio.Event()
        self._start_writer()  # ASGI, or CLOSING (closed before start: the close frame goes out now)

    def push(self, frame: str) -> None:
        """Queue one text frame for this member. Never blocks."""
        if self._state >= CLOSE_REQUESTED:
            return
        queue = self._queue if self._held is None else self._held
        frames = queue.frames
        if len(frames) >= self._queue_max and queue.counted() >= self._queue_max:
            self._overflow(queue.counted())
            return
        if queue.run is None:
            frames.append(frame)
        else:
            queue.add(frame)
        if not self._awake and self._held is None:
            self._wake()

    def push_delta(self, frame: DeltaFrame) -> None:
        """Queue one ``llm.streaming`` frame for this member. Never blocks, never overflows: while the
        connection is backed up, it is merged into the delta queued before it when it continues it."""
        if self._state >= CLOSE_REQUESTED:
            return
        if self._gate is not None and not self._admit(frame):
            return
        held = self._held
        if held is not None:  # one delta a frame until release() has gated them
            held.add_delta(frame, False)
            return
        queue = self._queue
        backed_up = self._state is SLOW or self._sending
        if backed_up or queue.run is not None:
            queue.add_delta(frame, backed_up)
        else:  # a reader that keeps up: the delta as it came
            queue.frames.append(frame)
            queue.deltas += 1
        if not self._awake:
            self._wake()

    def _admit(self, frame: DeltaFrame) -> bool:
        gate = self._gate
        assert gate is not None
        if not gate.admit(frame.delta):
            return False
        if not gate:
            self._gate = None  # nothing more to drop
        return True

    def hold(self) -> None:
        """Set live frames aside until :meth:`release`."""
        self._held = Outbox()

    async def push_history(self, frames: list[str]) -> None:
        """Queue frames ahead of the held ones; waits while the queue is more than half full."""
        while self._state < CLOSE_REQUESTED and self._queue.counted() > self._queue_max // 2:
            self._drained = asyncio.Event()
            await self._drained.wait()
        if self._state < CLOSE_REQUESTED:
            self._queue.extend(frames)
            self._wake()

    def release(self, gate: SnapshotGate | None = None) -> None:
        """Queue the frames held since :meth:`hold`, after everything queued so far; with ``gate`` (the
        ``llm.snapshot`` frames just queued), drop the deltas they hold, now and from then on."""
        held, self._held = self._held, None
        if gate:
            if held:
                held.keep_deltas(lambda frame: gate.admit(frame.delta))
            self._gate = gate if gate else None
        if held and self._state < CLOSE_REQUESTED:
            self._queue.take(held)
            self._wake()

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued (none, for a slow consumer) have been sent."""
        before = self._state
        after = self._fire(Trigger.CLOSE)
        if after is before:
            return  # closing or closed already: the first close() decides the code
        self._close_frame = (code, reason)
        if before is DIRECT:
            self._start_writer()
        elif before is ASGI:
            assert self._idle is not None
            self._idle.set()
        # SLOW: the writer task is waiting for the transport; it sends the close frame after the rest.
        # NEW: start() starts the writer task.
        self._history_may_go_on()

    async def wait_closed(self) -> None:
        if self._writer is not None:
            writer = self._writer
            await asyncio.wait([writer], timeout=CLOSE_TIMEOUT_S)
            writer.cancel()

    def _fire(self, trigger: Trigger) -> State:
        """The only place the state changes: the next state from :data:`TRANSITIONS`."""
        state = next_state(TRANSITIONS, self._state, trigger, MemberStateError,
                           f"member {self.conn} of room {self.room}")
        self._state = state
        self._awake = state is not DIRECT  # DIRECT is entered with no flush scheduled
        return state

    @property
    def _named(self) -> dict[str, str]:
        """A log line's ``extra``: this member's room and connection, whichever task writes the line."""
        return {"sid": self.room, "conn": self.conn}

    def _overflow(self, queued: int) -> None:
        log.warning("room %s: slow consumer disconnected (%d frames queued)", self.room, queued, extra=self._named)
        self._queue.clear()
        self._held = None
        self.close(SLOW_CONSUMER.code, SLOW_CONSUMER.reason)

    def _wake(self) -> None:
        """Make the writing side look at the queue: schedule a flush (DIRECT) or wake the writer (ASGI)."""
        if self._awake:
            return
        self._awake = True
        if self._state is DIRECT:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        else:
            assert self._state is ASGI and self._idle is not None
            self._idle.set()

    def _history_may_go_on(self) -> None:
        if self._drained is not None:
            self._drained.set()

    def _flush(self) -> None:
        """Write everything queued straight to the transport (the direct outlet's path)."""
        if self._state is not DIRECT:
            return  # closing since the flush was scheduled: the writer task has the queue
        self._awake = False
        queue, outlet = self._queue, self._outlet
        if not queue.frames or outlet is None:
            return
        try:
            if not outlet.write(queue.frames):
                self._fire(Trigger.STALL)  # the client reads slowly: wait for it in a task of its own
                self._start_writer()
                return
        except Gone:  # the receive loop sees the disconnect and ends the session
            queue.clear()
            self._fire(Trigger.GONE)
            self._history_may_go_on()
            return
        except Exception:
            log.exception("room %s: write failed", self.room, extra=self._named)
        queue.clear()
        if self._drained is not None:
            self._drained.set()

    def _start_writer(self) -> None:
        assert self._loop is not None
        self._writer = self._loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        """The writer task (SLOW, ASGI, CLOSING): ends with WRITABLE, CLOSE_SENT or GONE."""
        try:
            end = await self._write()
        except (OSError, RuntimeError, Gone) as exc:  # the client went away mid-send
            log.debug("room %s: writer stopped: %r", self.room, exc, extra=self._named)
            end = Trigger.GONE
        except asyncio.CancelledError:  # wait_closed() gave up on the client
            self._queue.clear()
            self._fire(Trigger.GONE)
            raise
        except Exception:
            log.exception("room %s: writer failed", self.room, extra=self._named)
            end = Trigger.GONE
        if end is Trigger.GONE:
            self._queue.clear()
        self._fire(end)
        self._history_may_go_on()

    async def _write(self) -> Trigger:
        queue, send, outlet = self._queue, self._send, self._outlet
        while True:
            if outlet is None:
                while queue:
                    self._sending = True  # meanwhile, deltas merge
                    try:
                        await send({"type": "websocket.send", "text": queue.popleft()})
                    finally:
                        self._sending = False
            else:
                while queue:
                    await outlet.writable()
                    queue.seal()  # the deltas merged while the client did not read: one frame
                    if outlet.write(queue.frames):
                        queue.clear()
            self._history_may_go_on()
            if self._state is CLOSING:
                code, reason = self._close_frame
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return Trigger.CLOSE_SENT
            if outlet is not None:
                return Trigger.WRITABLE  # writable again: back to direct writes
            assert self._idle is not None
            self._awake = False
            self._idle.clear()
            await self._idle.wait()
