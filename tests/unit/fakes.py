"""In-memory fakes of the store's ports (:mod:`server.store.ports`) and a clock, for unit tests of the
core: no sockets, no Redis, no fakeredis.

They keep the ports' contracts (ids increase per room, batches report the newest id before them,
appends are announced to the room's other followers, a cid is stored once within its window and the
stream's epoch)
and let a test take control where the real store would race:

- :attr:`FakeLog.gate`: when set to an unset :class:`asyncio.Event`, every append and read waits for
  it (a slow Redis), so a test decides what happens while a batch is in flight.
- :attr:`FakeLog.failing` / :attr:`FakeBus.failing` / ...: an exception every call raises until it is
  cleared (``StoreUnavailable(...)`` for a lost Redis).
- :class:`FakeSubscription` holds what was published to a node until the test lets the node read it
  (:meth:`FakeSubscription.hold`), so announcements can arrive late.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server.store.ports import (
    PARTIAL_MAX_BYTES,
    Admission,
    BatchResult,
    Cancel,
    Duplicate,
    Entry,
    Fence,
    Fenced,
    NewEntry,
    NotReplicated,
    Progress,
    Queued,
    Request,
    Retention,
    Running,
    SessionInfo,
    Started,
    StoreUnavailable,
    Turn,
)


class FakeClock:
    """Wall-clock milliseconds that move only when the test says so."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


def id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _bound(value: str | bytes, low: bool) -> tuple[tuple[int, int], bool]:
    """An XRANGE bound as ``(id, exclusive)``."""
    text = value.decode() if isinstance(value, bytes) else value
    if text == "-":
        return (0, 0), False
    if text == "+":
        return (2**64, 0), False
    exclusive = text.startswith("(")
    text = text.removeprefix("(")
    ms, _, seq = text.partition("-")
    return (int(ms), int(seq) if seq else (0 if low else 2**64)), exclusive


class _Failing:
    failing: Exception | None = None

    def _check(self) -> None:
        if self.failing is not None:
            raise self.failing


class FakeSubscription:
    """One node's channel: ``("subscribe", b"")`` first, then what was published to it."""

    def __init__(self) -> None:
        self.messages: deque[tuple[str, bytes]] = deque()
        self.subscribed = False
        self.closed = False
        self.failing: Exception | None = None
        self._held = False
        self._wake = asyncio.Event()

    def put(self, data: bytes) -> None:
        if self.subscribed and not self.closed:
            self.messages.append(("message", data))
            self._wake.set()

    def hold(self, held: bool = True) -> None:
        """While held, :meth:`next` delivers nothing (announcements arrive late)."""
        self._held = held
        self._wake.set()

    def lose(self, exc: Exception | None = None) -> None:
        """The connection drops: the next :meth:`next` raises."""
        self.failing = exc or StoreUnavailable("connection to Redis lost")
        self._wake.set()

    async def subscribe(self) -> None:
        if self.failing is not None:
            raise self.failing
        self.subscribed = True
        self.messages.append(("subscribe", b""))
        self._wake.set()

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    if self.failing is not None:
                        raise self.failing
                    if self.messages and not self._held:
                        return self.messages.popleft()
                    self._wake.clear()
                    await self._wake.wait()
        return None

    async def close(self) -> None:
        self.closed = True
        self.subscribed = False


class FakeBus(_Failing):
    """Followers per room (node -> alive until, in ms of the fake clock) and one channel per node."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.followers: dict[str, dict[str, int]] = {}
        self.channels: dict[str, list[FakeSubscription]] = {}
        self.published: list[tuple[str, bytes]] = []  # (node, data), everything ever sent

    def alive(self, room: str) -> list[str]:
        now = self.clock.now_ms
        return [node for node, until in self.followers.get(room, {}).items() if until >= now]

    def send(self, node: str, data: bytes) -> None:
        self.published.append((node, data))
        for subscription in self.channels.get(node, []):
            subscription.put(data)

    async def follow(self, rooms: Sequence[str], node: str, ttl_s: int) -> list[str]:
        self._check()
        lost = []
        now = self.clock.now_ms
        for room in rooms:
            followers = self.followers.setdefault(room, {})
            if followers.get(node, -1) < now:
                lost.append(room)
            for dead in [other for other, until in followers.items() if until < now]:
                del followers[dead]
            followers[node] = now + ttl_s * 1000
        return lost

    async def unfollow(self, rooms: Sequence[str], node: str) -> None:
        self._check()
        for room in rooms:
            self.followers.get(room, {}).pop(node, None)

    async def publish(self, messages: Mapping[str, Sequence[bytes]], node: str) -> None:
        self._check()
        for room, batch in messages.items():
            for other in list(self.followers.get(room, {})):
                if other != node:
                    for message in batch:
                        self.send(other, room.encode() + b" " + message)

    def subscription(self, node: str) -> FakeSubscription:
        subscription = FakeSubscription()
        self.channels.setdefault(node, []).append(subscription)
        return subscription

    def forget(self, room: str | None = None) -> None:
        """Redis loses the followers (of one room, or of all): a restart without persistence."""
        if room is None:
            self.followers.clear()
        else:
            self.followers.pop(room, None)


class FakeLog(_Failing):
    """Streams in memory, announcing appends on a :class:`FakeBus`."""

    def __init__(self, bus: FakeBus, clock: FakeClock) -> None:
        self.bus = bus
        self.clock = clock
        self.streams: dict[str, list[Entry]] = {}
        self.epochs: dict[str, str] = {}
        self.added: dict[str, int] = {}  # entries ever added per room (XINFO's entries-added)
        self.cids: dict[tuple[str, str, str], tuple[str, bytes]] = {}  # (room, participant, cid) -> (epoch, id)
        self.gate: asyncio.Event | None = None
        self.failing_rooms: dict[str, Exception] = {}
        #: Rooms whose appends are stored but not acknowledged by enough replicas (REDIS_MIN_REPLICAS): each
        #: entry appended or found again is NotReplicated, and the room is neither reported nor announced.
        self.unreplicated_rooms: set[str] = set()
        self.batches: list[list[NewEntry]] = []  # every batch appended, as received
        self.locks: FakeLocks | None = None  # checks (and releases) the fence of a generation's answer
        self._last: tuple[int, int] = (0, 0)
        self._epochs = 0

    async def _wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self._check()

    def _next_id(self) -> bytes:
        ms = max(self.clock.now_ms, self._last[0])
        self._last = (ms, self._last[1] + 1) if ms == self._last[0] else (ms, 0)
        return f"{self._last[0]}-{self._last[1]}".encode()

    def add(self, room: str, body: bytes, participant: str = "A") -> bytes:
        """Append one entry directly (another node, or another tool), without announcing it."""
        entry_id = self._next_id()
        if not self.streams.get(room) or room not in self.epochs:  # a stream that held nothing: a new epoch
            self._epochs += 1
            self.epochs[room] = f"e{self._epochs}"
        self.streams.setdefault(room, []).append((entry_id, {b"participant": participant.encode(), b"body": body}))
        self.added[room] = self.added.get(room, 0) + 1
        return entry_id

    def trim(self, room: str, keep: int) -> None:
        self.streams[room] = self.streams.get(room, [])[-keep:] if keep else []

    def lose_newest(self, room: str, count: int, generated_too: bool = False) -> None:
        """Redis loses the room's ``count`` newest entries and their cids (restarted from an older
        snapshot, or failed over to a replica that lagged); the epoch stays. ``generated_too``: the last
        generated id goes back to the newest kept entry as well (the snapshot's; the fake has one for all
        rooms), so, while the clock stands still, the next ids are below the lost ones (a replica whose
        clock is behind)."""
        stream = self.streams.get(room, [])
        keep = max(len(stream) - count, 0)
        lost = {entry_id for entry_id, _ in stream[keep:]}
        self.streams[room] = stream[:keep]
        if generated_too:
            self._last = id_key(stream[keep - 1][0]) if keep else (0, 0)
        self.cids = {key: value for key, value in self.cids.items() if value[1] not in lost}

    async def append_batch(self, entries: Sequence[NewEntry], retention: Retention, node: str) -> BatchResult:
        await self._wait()
        self.batches.append(list(entries))
        before: dict[str, bytes] = {}
        ids: list[bytes | Duplicate | Exception] = []
        newest: dict[str, bytes] = {}
        for entry in entries:
            if entry.room not in before:
                before[entry.room] = self.last(entry.room)
            if entry.room in self.failing_rooms:
                ids.append(self.failing_rooms[entry.room])
                continue
            window = retention.dedupe_s if entry.dedupe_s is None else entry.dedupe_s
            key = (entry.room, entry.participant, entry.cid or "")
            prior_epoch, prior = self.cids.get(key, ("", b""))
            if (entry.cid is not None and window > 0 and self.streams.get(entry.room)
                    and prior_epoch == self.epochs.get(entry.room)):  # the window belongs to the epoch
                original = [fields for entry_id, fields in self.streams.get(entry.room, []) if entry_id == prior]
                ids.append(Duplicate(prior, original[0][b"body"] if original else entry.body))
                continue
            if entry.fence is not None:
                assert self.locks is not None
                if not self.locks.holds(entry.fence):
                    ids.append(Fenced(f"FENCED {entry.fence}"))
                    continue
                self.locks.drop(entry.room)
                self.locks.partials.pop(entry.room, None)
            entry_id = self.add(entry.room, entry.body, entry.participant)
            if entry.cid is not None and window > 0:
                self.cids[key] = (self.epochs[entry.room], entry_id)
            newest[entry.room] = entry_id
            ids.append(entry_id)
        for n, entry in enumerate(entries):
            if entry.room in self.unreplicated_rooms and not isinstance(ids[n], Exception):
                ids[n] = NotReplicated("0 of 1 replicas acknowledged the write within 1000 ms")
        for room in self.unreplicated_rooms:
            before.pop(room, None)
            newest.pop(room, None)
        for room, entry_id in newest.items():
            for other in list(self.bus.followers.get(room, {})):
                if other != node:
                    self.bus.send(other, room.encode() + b" " + entry_id)
        return BatchResult(before, ids)

    def last(self, room: str) -> bytes:
        stream = self.streams.get(room)
        return stream[-1][0] if stream else b"0-0"

    def _slice(self, room: str, start: str | bytes, end: str | bytes) -> list[Entry]:
        (low, low_open), (high, high_open) = _bound(start, True), _bound(end, False)
        return [entry for entry in self.streams.get(room, [])
                if (low < id_key(entry[0]) if low_open else low <= id_key(entry[0]))
                and (id_key(entry[0]) < high if high_open else id_key(entry[0]) <= high)]

    async def range(self, room: str, start: str | bytes = "-", end: str | bytes = "+",
                    count: int | None = None) -> list[Entry]:
        await self._wait()
        return self._slice(room, start, end)[:count]

    async def revrange(self, room: str, end: str | bytes = "+", start: str | bytes = "-",
                       count: int | None = None) -> list[Entry]:
        await self._wait()
        return list(reversed(self._slice(room, start, end)))[:count]

    async def bodies(self, room: str, after: bytes, count: int) -> list[tuple[bytes, bytes]]:
        return [(entry_id, fields[b"body"]) for entry_id, fields in await self.range(room, b"(" + after, "+", count)]

    async def last_id(self, room: str) -> bytes:
        await self._wait()
        return self.last(room)

    async def exists(self, room: str) -> bool:
        await self._wait()
        return room in self.streams

    async def delete(self, room: str) -> bool:
        await self._wait()
        self.epochs.pop(room, None)
        self.added.pop(room, None)
        return self.streams.pop(room, None) is not None


class FakeRoster(_Failing):
    def __init__(self, log: FakeLog, bus: FakeBus) -> None:
        self.log = log
        self.bus = bus
        self.rosters: dict[str, dict[str, str]] = {}

    def _dead(self, room: str) -> list[str]:
        alive = set(self.bus.alive(room))
        return [f for f in self.rosters.get(room, {}) if f.partition("/")[0] not in alive]

    async def enter(self, room: str, field: str, role: str, ttl_s: int, most: int = 0,
                    cursor: bytes | None = None) -> SessionInfo:
        self._check()
        roster = self.rosters.setdefault(room, {})
        for dead in self._dead(room):
            del roster[dead]
        full = False
        if field:
            if most and len(roster) >= most:
                full = True
            else:
                roster[field] = role
        stream = self.log.streams.get(room)
        first = stream[0][0] if stream else None
        removed = None if stream is None else self.log.added.get(room, 0) - len(stream)
        kept = None if stream is None or not cursor else any(entry_id == cursor for entry_id, _ in stream)
        running = () if self.log.locks is None else self.log.locks.running(room)
        queued = () if self.log.locks is None else self.log.locks.queued(room)
        return SessionInfo(self.log.epochs.get(room), first, removed, list(roster.items()), full,
                           newest_id=stream[-1][0] if stream else None, cursor_kept=kept, generations=running,
                           queued=queued)

    async def restore(self, entries: Sequence[tuple[str, str, str]], ttl_s: int) -> None:
        self._check()
        for room, roster_field, role in entries:
            self.rosters.setdefault(room, {})[roster_field] = role

    async def sweep(self, rooms: Sequence[str]) -> list[tuple[str, str, str]]:
        self._check()
        removed = []
        for room in rooms:
            for dead in self._dead(room):
                removed.append((room, dead, self.rosters[room].pop(dead)))
        return removed

    async def leave(self, room: str, field: str) -> None:
        self._check()
        self.rosters.get(room, {}).pop(field, None)


class FakeRoomInstances(_Failing):
    """Each room's current instance and when it expires (ms of the fake clock)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.instances: dict[str, tuple[str, int]] = {}  # room -> (instance, expires at ms)
        self._made = 0

    async def open(self, room: str, ttl_s: int) -> str:
        self._check()
        current = await self.current(room)
        if current is None:
            self._made += 1
            current = f"i{self._made}"
        expires = max(self.instances.get(room, ("", 0))[1], self.clock.now_ms + ttl_s * 1000)
        self.instances[room] = (current, expires)
        return current

    async def current(self, room: str) -> str | None:
        self._check()
        instance, expires = self.instances.get(room, (None, 0))
        if instance is not None and expires <= self.clock.now_ms:
            del self.instances[room]
            return None
        return instance

    async def delete(self, room: str) -> bool:
        self._check()
        return await self.current(room) is not None and self.instances.pop(room, None) is not None


class FakeLocks(_Failing):
    """The rooms' locks: ``held`` room -> rid, ``tokens`` room -> its fencing token, ``until`` room ->
    when its lease ends (ms of the log's clock; a lock without one never expires, as one a test sets
    in ``held``). An expired lock is gone, as in Redis."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.held: dict[str, str] = {}  # room -> rid
        self.tokens: dict[str, int] = {}  # room -> the holder's token
        self.until: dict[str, int] = {}  # room -> lease end, in ms
        self.counters: dict[str, int] = {}  # room -> the last token drawn
        self.ended: dict[tuple[str, str], str] = {}  # (room, rid) -> the fence value that ended it
        self.cancelled: dict[tuple[str, str], str] = {}  # (room, rid) -> the role that cancelled it
        self.askers: dict[tuple[str, str], str] = {}  # (room, rid) -> the role that asked it
        #: room -> its waiting questions, oldest first: (rid, reply_to, asker, deadline in ms)
        self.waiting: dict[str, list[tuple[str, str, str, int]]] = {}
        self.dropped: set[tuple[str, str]] = set()  # (room, rid) taken off the waiting list unanswered
        self.renewed: list[tuple[str, str]] = []
        self.listeners: list[FakeSubscription] = []
        self.turn_listeners: list[FakeSubscription] = []
        self.frames_gate: asyncio.Event | None = None  # when set to an unset event, frames() waits for it
        #: room -> (the fence it was written under, the running generation's text so far)
        self.partials: dict[str, tuple[Fence, Running]] = {}

    def _holder(self, room: str) -> str | None:
        if room in self.until and self.until[room] <= self.log.clock.now_ms:
            self.drop(room)
        return self.held.get(room)

    def drop(self, room: str) -> None:
        self.held.pop(room, None)
        self.tokens.pop(room, None)
        self.until.pop(room, None)

    def holder(self, room: str) -> str | None:
        """The rid holding the room's lock now (None: free, or its lease ran out)."""
        return self._holder(room)

    def holds(self, fence: Fence) -> bool:
        return self._holder(fence.room) == fence.rid and self.tokens.get(fence.room, 0) == fence.token

    def _take(self, room: str, rid: str, lease_ms: int) -> Fence:
        self.counters[room] = token = self.counters.get(room, 0) + 1
        self.held[room], self.tokens[room] = rid, token
        self.until[room] = self.log.clock.now_ms + lease_ms
        return Fence(room, rid, token)

    async def lock(self, room: str, rid: str, lease_ms: int, asker: str = "") -> Fence | None:
        self._check()
        if self._holder(room) not in (None, rid):
            return None
        if asker:
            self.askers[room, rid] = asker
        return self._take(room, rid, lease_ms)

    def _waiting(self, room: str) -> list[tuple[str, str, str, int]]:
        """The room's waiting list, its heads past their deadline dropped."""
        waiting = self.waiting.setdefault(room, [])
        while waiting and waiting[0][3] < self.log.clock.now_ms:
            waiting.pop(0)
        return waiting

    def _position(self, room: str, rid: str) -> int:
        return next((n for n, entry in enumerate(self._waiting(room), 1) if entry[0] == rid), 0)

    def queued(self, room: str) -> tuple[Queued, ...]:
        return tuple(Queued(rid, reply_to) for rid, reply_to, _, deadline in self.waiting.get(room, [])
                     if deadline >= self.log.clock.now_ms)

    async def take_turn(self, request: Request, lease_ms: int, policy: str, most_waiting: int,
                        wait_ms: int, once: bool = False) -> Turn:
        self._check()
        room, rid = request.room, request.rid
        if once and (room, rid) in self.askers:
            return Turn(asked=True)
        position = self._position(room, rid)
        if position:
            return Turn(None, position)
        holder, waiting = self._holder(room), self._waiting(room)
        if holder == rid or (holder is None and not waiting):
            self.askers[room, rid] = request.asker
            return Turn(self._take(room, rid, lease_ms))
        dropped: tuple[Queued, ...] = ()
        if policy == "interrupt":
            dropped = tuple(Queued(old, reply_to) for old, reply_to, _, _ in waiting)
            self.dropped |= {(room, old.rid) for old in dropped}
            waiting.clear()
        elif policy != "queue" or len(waiting) >= most_waiting:
            return Turn()
        self.askers[room, rid] = request.asker
        waiting.append((rid, request.reply_to, request.asker, self.log.clock.now_ms + wait_ms))
        return Turn(None, len(waiting), (holder or "") if policy == "interrupt" else "", dropped)

    async def start(self, room: str, rid: str, lease_ms: int) -> Started:
        self._check()
        cancelled, by = (room, rid) in self.cancelled, self.cancelled.get((room, rid)) or None
        if (room, "llm", rid) in self.log.cids or (room, rid) in self.ended or (room, rid) in self.dropped:
            return Started(True, cancelled, None, by)
        position = self._position(room, rid)
        if self._holder(room) not in (None, rid):
            return Started(False, cancelled, None, by, waits=position > 0)
        if position > 1:
            return Started(False, cancelled, None, by, waits=True)
        if position == 1:
            self.waiting[room].pop(0)
        return Started(False, cancelled, self._take(room, rid, lease_ms), by)

    async def rename(self, fence: Fence, rid: str, asker: str = "", once: bool = False) -> Turn:
        self._check()
        if not self.holds(fence):
            return Turn()
        if once and (fence.room, rid) in self.askers:
            return Turn(asked=True)
        self.held[fence.room] = rid
        if asker:
            self.askers[fence.room, rid] = asker
        return Turn(Fence(fence.room, rid, fence.token))

    async def confirm(self, room: str, rid: str, fence: Fence | None, lease_ms: int) -> bool:
        self._check()
        if fence is not None:
            if not self.holds(fence):
                return False
            self.until[room] = self.log.clock.now_ms + lease_ms
            return True
        position = self._position(room, rid)
        if not position:
            return False
        kept = self.waiting[room][position - 1]
        self.waiting[room][position - 1] = (*kept[:3], self.log.clock.now_ms + lease_ms)
        return True

    def _tell_turn(self, room: str) -> int:
        waiting = self._waiting(room)
        if waiting and self._holder(room) is None:
            for listener in self.turn_listeners:
                listener.put(room.encode())
        return len(waiting)

    async def withdraw(self, room: str, rid: str) -> bool:
        self._check()
        done = self._holder(room) == rid
        if done:
            self.drop(room)
        position = self._position(room, rid)
        if position:
            del self.waiting[room][position - 1]
            self.dropped.add((room, rid))
        self._tell_turn(room)
        return done or position > 0

    async def pass_turn(self, room: str) -> int:
        self._check()
        return self._tell_turn(room)

    def turns(self) -> FakeSubscription:
        subscription = FakeSubscription()
        self.turn_listeners.append(subscription)
        return subscription

    async def renew(self, fences: Sequence[Fence], lease_ms: int) -> list[bool]:
        self._check()
        held = []
        for fence in fences:
            still = self.holds(fence)
            if still:
                self.until[fence.room] = self.log.clock.now_ms + lease_ms
                self.renewed.append((fence.room, fence.rid))
            held.append(still)
        return held

    async def release(self, fence: Fence) -> bool:
        self._check()
        if not self.holds(fence):
            return False
        self.drop(fence.room)
        self._tell_turn(fence.room)
        return True

    async def frames(self, fence: Fence, messages: Sequence[bytes], node: str,
                     progress: Progress | None = None) -> bool:
        if self.frames_gate is not None:
            await self.frames_gate.wait()
        self._check()
        if not self.holds(fence):
            return False
        if progress is not None:
            written, kept = self.partials.get(fence.room, (None, None))
            text = kept.text if kept is not None and written == fence else ""
            if text is not None:
                text += progress.text
                text = text if len(text.encode()) <= PARTIAL_MAX_BYTES else None
            self.partials[fence.room] = (fence, Running(fence.rid, progress.reply_to, progress.attempt, progress.seq,
                                                        text))
        self._publish(fence.room, messages, node)
        return True

    def running(self, room: str) -> tuple[Running, ...]:
        """The room's running generation with the text it sent so far (none: no lock, or no delta sent)."""
        written, kept = self.partials.get(room, (None, None))
        return (kept,) if kept is not None and written is not None and self.holds(written) else ()

    def _publish(self, room: str, messages: Sequence[bytes], node: str) -> None:
        bus = self.log.bus
        for other in list(bus.followers.get(room, {})):
            if other != node:
                for message in messages:
                    bus.send(other, room.encode() + b" " + message)

    async def cancel(self, room: str, rid: str, by: str = "", asker_only: bool = False) -> tuple[Cancel, str]:
        self._check()
        asker = self.askers.get((room, rid))
        if self._holder(room) != rid:
            position = self._position(room, rid)
            if not position:
                return Cancel.NOT_RUNNING, ""
            if asker_only and asker is not None and asker != by:
                return Cancel.NOT_ASKER, ""
            _, reply_to, _, _ = self.waiting[room].pop(position - 1)
            self.dropped.add((room, rid))
            return Cancel.DEQUEUED, reply_to
        if asker_only and asker is not None and asker != by:
            return Cancel.NOT_ASKER, ""
        self.cancelled[room, rid] = by
        for listener in self.listeners:
            listener.put(f"{rid} {by}".encode())
        return Cancel.CANCELLED, ""

    def cancellations(self) -> FakeSubscription:
        subscription = FakeSubscription()
        self.listeners.append(subscription)
        return subscription

    async def answer(self, room: str, rid: str) -> bytes | None:
        self._check()
        epoch, entry_id = self.log.cids.get((room, "llm", rid), ("", b""))
        return entry_id if entry_id and epoch == self.log.epochs.get(room) else None


class FakeUsage(_Failing):
    """The cost guard's counters on the clock: ``accepted`` room -> {rid: ms}, ``room_tokens`` (room, day) ->
    tokens, ``day_tokens`` day -> tokens."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.accepted: dict[str, dict[str, int]] = {}
        self.room_tokens: dict[tuple[str, int], int] = {}
        self.day_tokens: dict[int, int] = {}

    def _window(self, room: str, window_ms: int) -> dict[str, int]:
        since = self.clock.now_ms - window_ms
        kept = {rid: at for rid, at in self.accepted.get(room, {}).items() if at > since}
        self.accepted[room] = kept
        return kept

    async def admit(self, room: str, rid: str, window_ms: int, most_generations: int, day: int,
                    most_tokens: int) -> Admission:
        self._check()
        window = self._window(room, window_ms)
        if most_tokens and self.room_tokens.get((room, day), 0) >= most_tokens:
            return Admission("tokens")
        if rid in window:
            return Admission()
        if most_generations and len(window) >= most_generations:
            return Admission("generations", max(1, min(window.values()) + window_ms - self.clock.now_ms))
        window[rid] = self.clock.now_ms
        return Admission()

    async def add_tokens(self, room: str, day: int, tokens: int) -> None:
        self._check()
        self.room_tokens[room, day] = self.room_tokens.get((room, day), 0) + tokens
        self.day_tokens[day] = self.day_tokens.get(day, 0) + tokens

    async def room_usage(self, room: str, window_ms: int, day: int) -> tuple[int, int]:
        self._check()
        return len(self._window(room, window_ms)), self.room_tokens.get((room, day), 0)

    async def tokens(self, day: int) -> int:
        self._check()
        return self.day_tokens.get(day, 0)


@dataclass
class _Pending:
    request: Request
    consumer: str
    deliveries: int = 1
    idle_since_ms: int = 0


class FakeRequestQueue(_Failing):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.new: deque[Request] = deque()
        self.pending: dict[str, _Pending] = {}
        self.acked: list[str] = []
        self.forgotten: list[str] = []
        self._ids = 0
        self._added = asyncio.Event()

    async def add(self, request: Request) -> None:
        self._check()
        self._ids += 1
        self.new.append(Request(request.room, request.rid, request.reply_to, request.asker, f"{self._ids}-0",
                                regenerates=request.regenerates))
        self._added.set()

    async def ensure_group(self) -> None:
        self._check()

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Request]:
        self._check()
        if not self.new:
            self._added.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._added.wait(), block_ms / 1000)
            self._check()
        taken: list[Request] = []
        while self.new and len(taken) < count:
            request = self.new.popleft()
            self.pending[request.entry_id] = _Pending(request, consumer, 1, self.clock.now_ms)
            taken.append(request)
        return taken

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Request]:
        self._check()
        taken: list[Request] = []
        for entry_id, pending in self.pending.items():
            if len(taken) < count and self.clock.now_ms - pending.idle_since_ms >= min_idle_ms:
                pending.consumer, pending.idle_since_ms = consumer, self.clock.now_ms
                pending.deliveries += 1
                request = pending.request
                taken.append(Request(request.room, request.rid, request.reply_to, request.asker, entry_id,
                                     pending.deliveries, request.regenerates))
        return taken

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        self._check()
        for entry_id in entry_ids:
            if entry_id in self.pending:
                self.pending[entry_id].idle_since_ms = self.clock.now_ms

    async def ack(self, entry_ids: Sequence[str]) -> None:
        self._check()
        for entry_id in entry_ids:
            self.pending.pop(entry_id, None)
            self.acked.append(entry_id)

    async def forget_consumer(self, consumer: str) -> None:
        self._check()
        if not any(p.consumer == consumer for p in self.pending.values()):
            self.forgotten.append(consumer)


class BulkLog:
    """The bulk reads' view of a :class:`FakeLog` (the same streams; its own connection in Redis):
    counts its reads, so a test can tell which reads went there."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.reads = 0

    async def append_batch(self, entries: Sequence[NewEntry], retention: Retention, node: str) -> BatchResult:
        return await self.log.append_batch(entries, retention, node)

    async def range(self, room: str, start: str | bytes = "-", end: str | bytes = "+",
                    count: int | None = None) -> list[Entry]:
        self.reads += 1
        return await self.log.range(room, start, end, count)

    async def revrange(self, room: str, end: str | bytes = "+", start: str | bytes = "-",
                       count: int | None = None) -> list[Entry]:
        self.reads += 1
        return await self.log.revrange(room, end, start, count)

    async def bodies(self, room: str, after: bytes, count: int) -> list[tuple[bytes, bytes]]:
        self.reads += 1
        return await self.log.bodies(room, after, count)

    async def last_id(self, room: str) -> bytes:
        return await self.log.last_id(room)

    async def exists(self, room: str) -> bool:
        return await self.log.exists(room)

    async def delete(self, room: str) -> bool:
        return await self.log.delete(room)


@dataclass
class FakeStore:
    """Every port, in memory, sharing one clock."""

    clock: FakeClock = field(default_factory=FakeClock)
    kind: str = "fake"

    def __post_init__(self) -> None:
        self.bus = FakeBus(self.clock)
        self.log = FakeLog(self.bus, self.clock)
        self.bulk_log = BulkLog(self.log)
        self.roster = FakeRoster(self.log, self.bus)
        self.instances = FakeRoomInstances(self.clock)
        self.locks = FakeLocks(self.log)
        self.log.locks = self.locks
        self.usage = FakeUsage(self.clock)
        self.queues: dict[str, FakeRequestQueue] = {}
        self.closed = False

    def requests(self, queue: str) -> FakeRequestQueue:
        return self.queues.setdefault(queue, FakeRequestQueue(self.clock))

    async def ping(self) -> None:
        self.log._check()

    async def close(self) -> None:
        self.closed = True
