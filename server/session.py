"""Sessions: a connection entering and leaving its room (roster, presence, resume, session.ready).

Entering, in this order:

1. The member joins the hub *holding* its live frames; the hub tells the id ``newest`` of the last
   entry delivered in the room before it joined. Every later entry reaches the member live.
2. Its roster entry is recorded and the room's epoch, oldest retained id, newest trimmed id and
   roster are read in one step (:meth:`~server.store.ports.Roster.enter`).
3. The other members hear ``presence.join``.
4. With ``last_id`` (a resume), the entries after it up to ``newest`` are read from the stream
   and queued, in pages of at most :data:`PAGE` entries and about :data:`PAGE_BYTES` (on the store's
   bulk connection, yielding to the event loop after each). Live frames queue after them, so nothing
   is missed or seen twice.
5. ``session.ready`` tells the newest id, the epoch, whether the resume is complete
   (``recovered``), who is present on every node and the bot's running generations; an
   ``llm.snapshot`` of each (its text so far, deltas 0..K, read in step 2) follows, then the held
   live frames, less the deltas the snapshots hold (:mod:`protocol.snapshots`: the member joined
   before step 2 read the text, so every delta after K reaches it, and those up to K are dropped).

A cursor cannot be honoured when entries after it are gone (trimmed, or the stream was deleted,
expired or lost and created again, which changes its epoch), nor when it is newer than the stream's
newest entry, or names an entry the stream no longer holds though older and newer ones are there
(entries the client received were lost with Redis: a restart from an older snapshot, a failover to a
replica that lagged, then maybe new entries stored): the member then gets everything retained and
``recovered: false``, never a partial replay presented as complete.

Leaving removes the roster entry and tells the others ``presence.leave``. A process that dies
cannot do that: once its time in the room's followers runs out (``NODE_TTL_S`` after its last
heartbeat), the next heartbeat of a node that follows the room (:meth:`Sessions.run`) drops its roster
entries and says ``presence.leave`` for each, once. When Redis forgets a live node's roster entries (a
restart without persistence), the node's next heartbeat puts them back (:class:`RosterRestorer`).
The sweeps run as a supervised loop (``sweep``, :mod:`server.supervise`): whatever a sweep raises, the
next one runs after a backoff. Redis refusing writes while a member leaves (a replica during a failover,
NOREPLICAS, OOM...) never keeps the connection from closing: its roster entry then goes with its node's
time, or with the next sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol.codec import frame_with_id, llm_snapshot_frame, presence_frame, session_ready_frame
from protocol.errors import ProtocolError
from protocol.names import DEFAULT_ROLE, Event
from protocol.snapshots import Snapshot, SnapshotGate
from server.ephemeral import Ephemeral
from server.feed import RoomFeed, id_tuple
from server.hub import Fanout
from server.member import Member
from server.pages import CHUNK_MAX_BYTES, Sizer
from server.store.ports import RoomLog, Roster, SessionInfo, StoreError, StoreUnavailable
from server.supervise import Supervisor

log = logging.getLogger(__name__)

PAGE = 500
PAGE_BYTES = CHUNK_MAX_BYTES
SWEEP_ROOMS = 200
SWEEP = "sweep"  # the supervised loop's name
_NONE = b"0-0"


@dataclass(frozen=True, slots=True)
class Resume:
    last_id: str  # the last entry the client has ("0": it has none)
    epoch: str | None  # the epoch its cursor belongs to, when it knows it


class RosterRestorer:
    """Puts this node's members back in the rosters of rooms where Redis had forgotten the node."""

    def __init__(self, roster: Roster, fanout: Fanout, node_id: str, roster_ttl_s: int) -> None:
        self._roster = roster
        self._fanout = fanout
        self._node = node_id
        self._roster_ttl_s = roster_ttl_s

    async def restore(self, rooms: Sequence[str]) -> None:
        entries = [(room, roster_field(self._node, member), role_of(member))
                   for room in rooms for member in self._fanout.members(room)]
        if entries:
            await self._roster.restore(entries, self._roster_ttl_s)


class Sessions:
    def __init__(self, room_log: RoomLog, roster: Roster, ephemeral: Ephemeral, feed: RoomFeed, node_id: str,
                 roster_ttl_s: int, max_per_room: int = 0, supervisor: Supervisor | None = None,
                 bot: Mapping[str, str] | None = None) -> None:
        self._bot = bot  # the bot's policies, told in session.ready (``LLM_TURNS``, ``LLM_CANCEL``)
        self._max_per_room = max_per_room
        self._supervisor = supervisor or Supervisor()
        self._supervisor.register(SWEEP)
        self._log = room_log  # read for replays only: the store's bulk log
        self._roster = roster
        self._ephemeral = ephemeral
        self._feed = feed
        self._node = node_id
        self._roster_ttl_s = roster_ttl_s

    def field(self, member: Member) -> str:
        return roster_field(self._node, member)

    async def enter(self, member: Member, resume: Resume | None = None) -> SessionInfo:
        """Record ``member`` in its room's roster (and read whether the stream still holds the entry a
        resume's cursor names). Raises ``room_full`` when the room holds ``MAX_CONNECTIONS_PER_ROOM``
        connections (on all nodes), or when Redis is unreachable."""
        info = await self._roster.enter(member.room, self.field(member), role_of(member), self._roster_ttl_s,
                                         self._max_per_room, cursor_of(resume))
        if info.full:
            raise ProtocolError("room_full")
        return info

    async def start(self, member: Member, newest: bytes, info: SessionInfo, resume: Resume | None) -> None:
        """Steps 3 to 5 above, for a member that has joined (holding), entered and been accepted."""
        await self._presence(member, Event.PRESENCE_JOIN)
        recovered = True
        if resume is not None:
            start, recovered = replay_start(resume, info)
            if id_tuple(newest) > (0, 0) and (start == "-" or id_tuple(start[1:].encode()) < id_tuple(newest)):
                await self._replay(member, start, newest)
        snapshots = snapshots_of(info)
        await member.push_history([session_ready(member, newest, info, recovered, self._bot),
                                   *(snapshot_frame(member.room, snapshot) for snapshot in snapshots)])
        member.release(SnapshotGate(snapshots))

    async def _replay(self, member: Member, start: str, newest: bytes) -> None:
        sizer = Sizer(PAGE_BYTES, PAGE)
        while not member.closing:
            count = sizer.count()
            entries = await self._log.range(member.room, start, newest, count=count)
            sizer.saw(entries)
            frames = []
            for entry_id, fields in entries:
                try:
                    frames.append(frame_with_id(fields.get(b"body", b""), entry_id.decode()))
                except ValueError:
                    log.warning("room %s: entry %s has a body that is not JSON; skipped", member.room, entry_id)
            await member.push_history(frames)
            if len(entries) < count or entries[-1][0] == newest:
                return
            start = "(" + entries[-1][0].decode()
            await asyncio.sleep(0)  # a long replay shares the loop with every room

    async def run(self) -> None:
        """After each heartbeat of this node, sweep the rooms it follows (until cancelled; supervised)."""
        await self._supervisor.run(SWEEP, self._sweeps)

    async def _sweeps(self) -> None:
        while True:
            await self._feed.next_beat()
            await self.sweep(self._feed.rooms())
            self._supervisor.up(SWEEP)

    async def sweep(self, rooms: list[str]) -> None:
        """Drop the members of dead nodes from these rooms' rosters, with a ``presence.leave`` each."""
        for start in range(0, len(rooms), SWEEP_ROOMS):  # a script call holds Redis: keep each short
            for room, field, role in await self._roster.sweep(rooms[start:start + SWEEP_ROOMS]):
                frame = presence_frame(Event.PRESENCE_LEAVE, room, role, field.partition("/")[2], _now_ms())
                await self._ephemeral.send(room, _NONE, frame)

    async def leave(self, member: Member) -> None:
        """Remove ``member`` from the roster and tell the others; never raises."""
        with contextlib.suppress(StoreUnavailable, StoreError):
            await self._roster.leave(member.room, self.field(member))
            await self._presence(member, Event.PRESENCE_LEAVE)

    async def _presence(self, member: Member, event: str) -> None:
        frame = presence_frame(event, member.room, role_of(member), member.conn, _now_ms())
        try:
            await self._ephemeral.send(member.room, _NONE, frame, skip=member)
        except (StoreUnavailable, StoreError) as exc:
            log.warning("room %s: %s not sent to other nodes: %s", member.room, event, type(exc).__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def role_of(member: Member) -> str:
    return member.role or DEFAULT_ROLE


def roster_field(node_id: str, member: Member) -> str:
    """A connection's field in its room's roster: ``<node>/<connection>``."""
    return f"{node_id}/{member.conn}"


def cursor_of(resume: Resume | None) -> bytes | None:
    """A resume's cursor as a full stream id (``<ms>-<seq>``; ``<ms>`` means ``<ms>-0``), None for
    ``last_id=0`` or no resume: the entry whose presence :meth:`Roster.enter` checks."""
    if resume is None or resume.last_id == "0":
        return None
    ms, _, seq = resume.last_id.partition("-")
    return f"{ms}-{seq or 0}".encode()


def replay_start(resume: Resume, info: SessionInfo) -> tuple[str, bool]:
    """Where a resume's replay starts (an XRANGE start) and whether it will be complete.

    Streams only lose their oldest entries (trimming), so a cursor from the oldest retained entry
    up to the newest is honoured. One older than that is not: entries after it may be gone (Redis
    does not tell which ids trimming removed). One newer than the newest entry is not either: the
    stream lost entries the client had (Redis restarted from an older snapshot, or failed over to a
    replica that lagged), so the client's view is not the stream's: it gets everything retained.
    Nor is a cursor after the oldest retained entry whose own entry the stream no longer holds
    (``cursor_kept`` False): lost the same way, then new entries were stored after it; the client gets
    everything retained too. ``last_id=0`` is complete when nothing was removed.
    """
    if resume.epoch is not None and resume.epoch != info.epoch:
        return "-", False  # another stream than the client's: everything retained, incomplete
    if info.first_id is None:
        return "-", resume.last_id == "0"  # nothing stored: complete only for a client that had nothing
    if resume.last_id == "0":
        return "-", info.removed == 0
    cursor = id_tuple(resume.last_id.encode())
    if info.newest_id is not None and cursor > id_tuple(info.newest_id):
        return "-", False  # entries up to the cursor were lost: everything retained, incomplete
    first = id_tuple(info.first_id)
    if info.cursor_kept is False and cursor > first:
        return "-", False  # the cursor's own entry was lost (new ones came after): everything retained
    return "(" + resume.last_id, cursor >= first


def session_ready(member: Member, newest: bytes, info: SessionInfo, recovered: bool,
                  bot: Mapping[str, str] | None = None) -> str:
    members = ((role, field.partition("/")[2]) for field, role in info.roster)
    generations = [*((running.rid, running.reply_to, "running", 0) for running in info.generations),
                   *((queued.rid, queued.reply_to, "queued", n) for n, queued in enumerate(info.queued, 1))]
    return session_ready_frame(member.room, role_of(member), member.conn, None if newest == _NONE else newest.decode(),
                               info.epoch, recovered, members, generations, bot)


def snapshots_of(info: SessionInfo) -> list[Snapshot]:
    """The running generations whose text so far was kept (not past its cap): one ``llm.snapshot`` each."""
    return [Snapshot(running.rid, running.reply_to, running.attempt, running.seq, running.text)
            for running in info.generations if running.text is not None]


def snapshot_frame(room: str, snapshot: Snapshot) -> str:
    return llm_snapshot_frame(room, snapshot.rid, snapshot.reply_to, snapshot.seq, snapshot.text, snapshot.attempt)
