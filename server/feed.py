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
  room's followers *before* the cursor is read, so every later append by another node is either
  announced to it or already behind the cursor. A heartbeat keeps the node alive in each room it
  follows; when Redis had forgotten it in a room (a stall, a Redis restart), the room is caught up and
  its members here are put back in its roster (the ``restorer``); when the channel reconnects, every
  room is caught up.
- A catch-up to the end that finds nothing after the cursor and then a newest id beyond it reads
  again: an entry was appended between its two reads, and a local batch reported meanwhile did not
  take the fast path, so nothing else would deliver it.
- Entries lost with Redis (a restart from an older snapshot, a failover to a replica that lagged; the
  channel reconnects then). A catch-up to the end that finds nothing after the cursor reads the
  stream's newest id: when it is older than the cursor, entries delivered here are gone from the
  stream, and the cursor moves back to that id: ``session.ready`` no longer names a lost entry, and
  entries stored from then on with ids below the lost ones (a replica whose clock is behind) are not
  skipped.
- Frames that are not stored (presence, generation deltas) carry the id they must follow
  (``after``): a generation's deltas follow the message that triggered it. They are delivered at
  once when the cursor has reached that id, else held, in arrival order, until it has. Other
  nodes hear them on the same channel as the announcements, so a node never delivers an entry
  announced after a frame before that frame. For the same reason a catch-up delivers entries
  only up to the newest id it heard of (except after a reconnection, when it reads to the end).
- When Redis is unreachable or refuses a command, readers retry with backoff and resume from their
  cursors. The listener (``announcements``), the ``heartbeat`` and the readers (``catch-up``) are
  supervised (:mod:`server.supervise`): whatever they raise, they come back by themselves, and the
  node is reported not ready while one of them is failing. Rooms where Redis had forgotten the node
  are restored at the next heartbeat that can, however many heartbeats failed in between.

Each followed room's cursor is a state machine, in the style of h11's ``_state.py``:
:data:`TRANSITIONS` maps ``(state, trigger)`` to the next state, and every change of state goes
through :meth:`_Cursor.fire`, which raises :class:`FeedStateError` for a pair not in the table.

=============  ==========  =============  ==============================================================
state          trigger     next state     when
=============  ==========  =============  ==============================================================
LIVE           GAP         CATCHING_UP    something was appended that does not follow the cursor: a reader starts
LIVE           UNFOLLOW    UNFOLLOWED     the room's last member left
CATCHING_UP    GAP         CATCHING_UP    more was heard of: the reader's target moves on
CATCHING_UP    HOLD        HOLDING        a frame must wait for entries the reader has not delivered yet
CATCHING_UP    CAUGHT_UP   LIVE           the reader reached its target (or found nothing more to read)
CATCHING_UP    UNFOLLOW    UNFOLLOWED     the room's last member left: the reader stops at its next step
HOLDING        GAP         HOLDING        more was heard of: the reader's target moves on
HOLDING        HOLD        HOLDING        another frame waits, behind the held ones
HOLDING        RELEASED    CATCHING_UP    the reader delivered the entries every held frame follows, and them
HOLDING        CAUGHT_UP   LIVE           the reader stopped: held frames whose entries are gone are released
HOLDING        UNFOLLOW    UNFOLLOWED     the room's last member left: held frames are dropped
UNFOLLOWED     CAUGHT_UP   UNFOLLOWED     the reader of a room no longer followed stops, delivering nothing
=============  ==========  =============  ==============================================================

- LIVE: no reader, nothing held. A local batch whose ``before`` is the cursor is delivered from
  memory (the fast path: :meth:`RoomFeed.appended` checks the state and the id, nothing else), and
  a frame that follows the cursor is delivered at once.
- CATCHING_UP: a reader task reads the stream from the cursor up to the newest id heard of; local
  batches only move that target on. Nothing is held: a frame following the cursor goes out at once.
- HOLDING: CATCHING_UP with frames held, in arrival order; every new frame queues behind them, and
  the reader releases each one right after the entry it follows.
- UNFOLLOWED: the cursor is no longer the room's (a new follow makes a new cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from server.states import next_state
from server.store.ports import NodeBus, RoomLog, StoreError, StoreUnavailable
from server.supervise import Supervisor, backoff

log = logging.getLogger(__name__)

Item = tuple[bytes, bytes]  # (stream id, body)


class Sink(Protocol):
    """Where the feed delivers: the members of a room on this process."""

    def deliver(self, room: str, items: list[Item]) -> None:
        """Entries, in stream order."""

    def deliver_frame(self, room: str, frame: str, skip: object) -> None:
        """One unstored frame, to every member but ``skip`` (a member, or None)."""


class Restorer(Protocol):
    async def restore(self, rooms: Sequence[str]) -> None:
        """Put this node's members of ``rooms`` back in the rosters (Redis had forgotten them)."""

READ_COUNT = 1000
ALIVE_TTL_S = 30  # a node that has not beaten for this long is dead; it beats every third of it
READY_TIMEOUT_S = 5.0
_UNTIL_EMPTY = (2**64, 0)
#: The feed's supervised loops (their names in ``/readyz`` and ``/metrics``).
ANNOUNCEMENTS, HEARTBEAT, CATCH_UP = "announcements", "heartbeat", "catch-up"


def id_tuple(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class CursorState(enum.Enum):
    """Where a followed room's cursor is (see the module docstring)."""

    LIVE = "live"
    CATCHING_UP = "catching_up"
    HOLDING = "holding"
    UNFOLLOWED = "unfollowed"


class CursorTrigger(enum.Enum):
    """What moves a cursor from one :class:`CursorState` to the next."""

    GAP = "gap"  # an id beyond the cursor was heard of (another node's append, a lag, a lost announcement)
    HOLD = "hold"  # a frame must wait until the reader has delivered the entry it follows
    RELEASED = "released"  # every held frame was delivered
    CAUGHT_UP = "caught_up"  # the reader task ended
    UNFOLLOW = "unfollow"  # the room is no longer followed here


LIVE, CATCHING_UP, HOLDING, UNFOLLOWED = CursorState  # module globals: cheap on the hot path
_GAP, _HOLD, _RELEASED, _CAUGHT_UP, _UNFOLLOW = CursorTrigger

#: The whole life of a cursor: ``(state, trigger) -> next state``. A pair not listed is a bug.
TRANSITIONS: dict[tuple[CursorState, CursorTrigger], CursorState] = {
    (LIVE, _GAP): CATCHING_UP,
    (LIVE, _UNFOLLOW): UNFOLLOWED,
    (CATCHING_UP, _GAP): CATCHING_UP,
    (CATCHING_UP, _HOLD): HOLDING,
    (CATCHING_UP, _CAUGHT_UP): LIVE,
    (CATCHING_UP, _UNFOLLOW): UNFOLLOWED,
    (HOLDING, _GAP): HOLDING,
    (HOLDING, _HOLD): HOLDING,
    (HOLDING, _RELEASED): CATCHING_UP,
    (HOLDING, _CAUGHT_UP): LIVE,
    (HOLDING, _UNFOLLOW): UNFOLLOWED,
    (UNFOLLOWED, _CAUGHT_UP): UNFOLLOWED,
}


class FeedStateError(RuntimeError):
    """A trigger that a cursor's current state does not allow: a bug in the feed."""


class _Cursor:
    __slots__ = ("held", "id", "reader", "room", "state", "target")

    def __init__(self, room: str, entry_id: bytes) -> None:
        self.room = room
        self.id = entry_id  # last id delivered here
        self.state = LIVE
        self.target: tuple[int, int] | None = None  # newest id heard of but not yet delivered
        self.reader: asyncio.Task[None] | None = None  # set while CATCHING_UP or HOLDING
        self.held: deque[tuple[tuple[int, int], str, object]] = deque()  # (after, frame, skip): while HOLDING

    def fire(self, trigger: CursorTrigger) -> CursorState:
        """The only place the state changes: the next state from :data:`TRANSITIONS`."""
        self.state = next_state(TRANSITIONS, self.state, trigger, FeedStateError, f"cursor of room {self.room}")
        return self.state


class RoomFeed:
    def __init__(self, room_log: RoomLog, bus: NodeBus, sink: Sink, restorer: Restorer, node_id: str,
                 node_ttl_s: int = ALIVE_TTL_S, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 supervisor: Supervisor | None = None) -> None:
        self._log = room_log
        self._sleep = sleep  # the heartbeat's interval and the backoffs (tests pass a fake)
        self._supervisor = supervisor or Supervisor(sleep)
        for name in (ANNOUNCEMENTS, HEARTBEAT, CATCH_UP):
            self._supervisor.register(name)
        self._bus = bus
        self._node_ttl_s = node_ttl_s
        self._deliver = sink.deliver
        self._deliver_frame = sink.deliver_frame
        self._restorer = restorer
        self._node = node_id
        self._cursors: dict[str, _Cursor] = {}
        self._membership = asyncio.Lock()
        self._ready = asyncio.Event()  # listening on the node's channel, and alive
        self._beaten = asyncio.Event()  # set (and replaced) after each heartbeat that succeeded
        self._unrestored: set[str] = set()  # rooms Redis had forgotten the node in, rosters not yet restored

    async def follow(self, room: str) -> None:
        """Start delivering ``room``'s new entries. Raises when Redis is unreachable or refuses it, and
        :class:`StoreUnavailable` when the node has not been listening for ``READY_TIMEOUT_S``."""
        try:
            await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            raise StoreUnavailable("this node is not listening to its announcements") from None
        async with self._membership:
            await self._bus.follow([room], self._node, self._node_ttl_s)
            cursor = _Cursor(room, await self._log.last_id(room))
            replaced = self._cursors.get(room)
            if replaced is not None:
                replaced.fire(_UNFOLLOW)
            self._cursors[room] = cursor

    def cursor(self, room: str) -> bytes | None:
        """The id of the last entry of ``room`` delivered here (None: the room is not followed)."""
        cursor = self._cursors.get(room)
        return None if cursor is None else cursor.id

    def state(self, room: str) -> CursorState | None:
        """Where the cursor of ``room`` is (None: the room is not followed)."""
        cursor = self._cursors.get(room)
        return None if cursor is None else cursor.state

    def rooms(self) -> list[str]:
        """The rooms followed here."""
        return list(self._cursors)

    async def next_beat(self) -> None:
        """Return after this node's next heartbeat that succeeds."""
        await self._beaten.wait()

    def unfollow(self, room: str) -> None:
        cursor = self._cursors.pop(room, None)
        if cursor is not None:
            cursor.fire(_UNFOLLOW)
        asyncio.get_running_loop().create_task(self._unregister(room))

    async def _unregister(self, room: str) -> None:
        async with self._membership:
            if room not in self._cursors:
                # On failure: the node's time in the room runs out, and a Redis restart forgets all.
                with contextlib.suppress(StoreUnavailable, StoreError):
                    await self._bus.unfollow([room], self._node)

    def appended(self, room: str, before: bytes, items: list[Item]) -> None:
        """A local batch appended ``items`` to ``room``, whose newest id was ``before`` (no items: it
        appended nothing, but the entries up to ``before`` are stored: with ``REDIS_MIN_REPLICAS``, a resend
        whose original's batch fell short of replicas says here that the original is replicated now)."""
        cursor = self._cursors.get(room)
        if cursor is None:
            return
        if not items:
            if id_tuple(before) > id_tuple(cursor.id):
                self._lag(room, cursor, id_tuple(before))
            return
        if cursor.state is LIVE and before == cursor.id:
            self._advance(room, cursor, items)
        else:
            self._lag(room, cursor, id_tuple(items[-1][0]))

    def frame(self, room: str, after: bytes, frame: str, skip: object = None) -> None:
        """Deliver an unstored ``frame`` to ``room``'s members here once entries up to ``after`` are."""
        cursor = self._cursors.get(room)
        if cursor is None:
            return
        after_id = id_tuple(after)
        if cursor.state is not HOLDING and after_id <= id_tuple(cursor.id):
            self._deliver_frame(room, frame, skip)
            return
        if after_id > id_tuple(cursor.id):
            self._lag(room, cursor, after_id)
        cursor.held.append((after_id, frame, skip))
        cursor.fire(_HOLD)

    def _advance(self, room: str, cursor: _Cursor, items: list[Item]) -> None:
        if cursor.state is not HOLDING:
            cursor.id = items[-1][0]
            self._deliver(room, items)
            return
        for item in items:  # frames are held: deliver them between the entries they follow
            cursor.id = item[0]
            self._deliver(room, [item])
            if cursor.state is HOLDING:
                self._release(room, cursor)

    def _release(self, room: str, cursor: _Cursor) -> None:
        reached = id_tuple(cursor.id)
        while cursor.held and cursor.held[0][0] <= reached:
            _, frame, skip = cursor.held.popleft()
            self._deliver_frame(room, frame, skip)
        if not cursor.held:
            cursor.fire(_RELEASED)

    def _lag(self, room: str, cursor: _Cursor, newest: tuple[int, int]) -> None:
        if cursor.target is None or newest > cursor.target:
            cursor.target = newest
        if cursor.state is LIVE:
            cursor.fire(_GAP)
            cursor.reader = asyncio.get_running_loop().create_task(self._catch_up(room, cursor))
        else:
            cursor.fire(_GAP)

    def _catch_up_all(self) -> None:
        for room, cursor in list(self._cursors.items()):
            self._lag(room, cursor, _UNTIL_EMPTY)

    async def _catch_up(self, room: str, cursor: _Cursor) -> None:
        failures = 0
        try:
            while cursor.target is not None and cursor.target > id_tuple(cursor.id):
                try:
                    entries = await self._log.bodies(room, cursor.id, READ_COUNT)
                    newest = None
                    if not entries and cursor.target == _UNTIL_EMPTY:  # at the end: is the cursor's entry there?
                        newest = await self._log.last_id(room)
                except Exception as exc:  # unreachable, refused, anything: read again from the cursor
                    self._supervisor.failed(CATCH_UP, exc, room)
                    await self._sleep(backoff(failures))
                    failures += 1
                    if cursor.state is UNFOLLOWED:
                        break
                    continue
                if failures:
                    failures = 0
                    self._supervisor.up(CATCH_UP, room)
                if cursor.state is UNFOLLOWED:
                    break
                if newest is not None and id_tuple(newest) < id_tuple(cursor.id):
                    log.warning("room %s: the stream's newest entry %s is older than the last one delivered here (%s):"
                                " entries were lost; following on from the stream", room, newest.decode(),
                                cursor.id.decode())
                    cursor.id = newest
                    continue
                if newest is not None and id_tuple(newest) > id_tuple(cursor.id):
                    continue  # appended between the two reads (reported here while reading): read it
                target = cursor.target
                items = [item for item in entries if target is None or id_tuple(item[0]) <= target]
                if not items:
                    break
                self._advance(room, cursor, items)
        finally:
            if failures:  # the reader stops (unfollowed, cancelled): its room no longer fails
                self._supervisor.up(CATCH_UP, room)
            cursor.target = None
            cursor.reader = None
            if cursor.fire(_CAUGHT_UP) is LIVE:
                self._release_all(room, cursor)

    def _release_all(self, room: str, cursor: _Cursor) -> None:
        """Held frames whose entries cannot be read (trimmed, deleted) are not held forever."""
        while cursor.held:
            _, frame, skip = cursor.held.popleft()
            self._deliver_frame(room, frame, skip)

    async def run(self) -> None:
        """Listen to this node's announcements and keep it alive, until cancelled (both supervised)."""
        heartbeat = asyncio.get_running_loop().create_task(self._supervisor.run(HEARTBEAT, self._heartbeat))
        try:
            await self._supervisor.run(ANNOUNCEMENTS, self._listen)
        finally:
            heartbeat.cancel()
            self._ready.clear()
            with contextlib.suppress(StoreUnavailable, StoreError):
                await self._bus.unfollow(list(self._cursors), self._node)

    async def _listen(self) -> None:
        """Subscribe to the node's channel, beat (following every room again), catch every room up
        and become ready; then take announcements until the channel fails (the supervisor starts
        this again after a backoff)."""
        subscriber = self._bus.subscription(self._node)
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
                    self._supervisor.up(ANNOUNCEMENTS)
                elif kind == "message":
                    self._announced(data)
        finally:
            self._ready.clear()
            await subscriber.close()

    async def _heartbeat(self) -> None:
        """Every third of the node's time to live, renew it in every room (while listening); a failure
        ends this (the supervisor starts it again after a backoff)."""
        while True:
            await self._sleep(self._node_ttl_s / 3)
            if not self._ready.is_set():
                continue
            await self._beat()
            self._supervisor.up(HEARTBEAT)
            beaten, self._beaten = self._beaten, asyncio.Event()
            beaten.set()

    async def _beat(self) -> None:
        """Renew this node's time in every room it follows. Rooms where Redis had forgotten it are
        caught up to the end (announcements may have been missed) and their members here put back in
        the rosters; a restore that fails is tried again at the next beat, until it succeeds."""
        async with self._membership:
            lost = await self._bus.follow(list(self._cursors), self._node, self._node_ttl_s)
        if lost:
            log.warning("Redis had forgotten this node in %d room(s); followed them again", len(lost))
            for room in lost:
                cursor = self._cursors.get(room)
                if cursor is not None:
                    self._lag(room, cursor, _UNTIL_EMPTY)
            self._unrestored.update(lost)
        self._unrestored.intersection_update(self._cursors)  # rooms no longer followed need nothing
        if self._unrestored:
            rooms = sorted(self._unrestored)
            await self._restorer.restore(rooms)
            self._unrestored.difference_update(rooms)

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
