"""The store's ports: what the relay's core asks of its storage, one small interface per concern.

- :class:`RoomLog`: a room's stream, the source of truth for order and history.
- :class:`Roster`: who is in a room, on every node (presence).
- :class:`NodeBus`: the nodes that follow a room, and what they tell each other (announcements of
  appends, frames that are not stored).
- :class:`RoomInstances`: which instance of a room is current (with auth on, a room token names
  the instance it was issued for).
- :class:`GenerationLocks` and :class:`RequestQueue`: the LLM bot's work (one generation per room,
  and the queue of questions any worker may answer).
- :class:`UsageCounters`: what the bot's answers cost, per room and for the whole deployment (the cost
  guard, :mod:`server.llm.quota`).

Two adapters implement every port with the same behaviour: :mod:`server.store.redis_store` (a Redis
URL) and :mod:`server.store.embedded` (an in-process fakeredis server, the zero-setup default); one
contract suite (``tests/server/store/``) runs against both. No adapter hands its client to the rest of
the server. Failures reach the core as these exceptions only: :class:`StoreUnavailable` (the store
cannot be reached right now: the client is told ``unavailable``), :class:`StoreRefused` (the store
refused to run a command, so nothing was written: it does not take writes right now, NOREPLICAS,
READONLY, OOM, MISCONF, BUSY...; the client is told ``unavailable`` too) and any other
:class:`StoreError` (the store refused a command otherwise: a bug, answered ``internal``).

Guarantees the core relies on:

- :meth:`RoomLog.append_batch` appends its entries in list order, each room's atomically (one step per
  room), so a room's entries get increasing ids in the order they were submitted. For each room it
  also reports the newest id the stream held *before* the batch: a caller that has delivered exactly
  up to that id may deliver the batch from memory, with no read. An entry with a cid is stored at most
  once per room, sender and cid within its dedupe window (:class:`Duplicate`), and the window belongs
  to the stream's epoch: once the stream is deleted, expires or is lost, its cids are forgotten (the
  same cid sent to the room's next epoch is stored anew).
- Each append is announced (``"<room> <newest id>"``) to every other node that follows the room
  (:meth:`NodeBus.follow`), on the node's :meth:`NodeBus.subscription`. Frames that are not stored
  (:meth:`NodeBus.publish`) travel on the same channel, ordered with the announcements.
- Ranges cost O(log N + count). Every append trims the stream approximately to ``maxlen`` and renews
  its expiry: a stream expires no sooner than ``ttl_s`` after its last append, and (from 1,000 s up,
  where an adapter may renew it only once in a while) no later than ``ttl_s`` + ``ttl_s`` / 1000, at
  most 60 s more; each stream has an epoch, a random id set when an append finds it empty or absent.
- A node is alive in a room until the deadline its last :meth:`NodeBus.follow` set (heartbeats renew
  it, and remove the followers whose deadline passed); roster entries of nodes that are not alive are
  dropped by :meth:`Roster.enter` and :meth:`Roster.sweep`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

Entry = tuple[bytes, dict[bytes, bytes]]  # (stream id, fields)
FENCE_TTL_S = 7 * 24 * 3600  # a room's fencing counter is kept this long after its last lock
ENDED_TTL_S = 24 * 3600  # how long a generation ended without a stored answer is remembered
#: The most bytes of a running generation's text kept for ``llm.snapshot``: past it, members entering get
#: no snapshot of it (its deltas from then on, and the whole text in its ``llm.response``).
PARTIAL_MAX_BYTES = 256 * 1024


class StoreUnavailable(Exception):
    """The store cannot be reached right now (lost connection, timeout): try again later."""


class NotReplicated(StoreUnavailable):
    """Written on the primary, but fewer replicas than asked for (``REDIS_MIN_REPLICAS``) acknowledged it in
    time: not acknowledged, as after a timeout. A failover may lose it; sending it again with the same cid
    answers the stored copy once it is replicated (or stores it anew where it was lost)."""


class StoreError(Exception):
    """The store refused a command."""


class StoreRefused(StoreError):
    """The store refused to run a command, and wrote nothing: it takes no writes right now (no replica
    to acknowledge them, a replica during a failover, out of memory, a failing disk, a script running
    too long). Try again later."""


class Fenced(StoreError):
    """A fenced write refused: its generation no longer holds the room's lock with its token (the lock
    expired, or another worker took the request over with a newer token)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """A generation's hold on its room's lock: the lock holds ``rid`` with ``token``, a number drawn
    from the room's counter each time the lock is taken or taken over (so it only grows)."""

    room: str
    rid: str
    token: int


@dataclass(frozen=True, slots=True)
class Started:
    """What :meth:`GenerationLocks.start` found."""

    answered: bool  # its answer is stored, or the generation ended already (an llm.error was sent)
    cancelled: bool  # llm.cancel named it
    fence: Fence | None  # the lock, taken again with a new token; None: answered, or the room is another's
    cancelled_by: str | None = None  # the role whose llm.cancel named it (None: not cancelled, or unknown)
    waits: bool = False  # it waits for its turn (fence None): another question runs or is ahead of it


class Cancel(enum.Enum):
    """What :meth:`GenerationLocks.cancel` did."""

    CANCELLED = "cancelled"  # it was running: marked cancelled, every worker told
    DEQUEUED = "dequeued"  # it was waiting for its turn: taken off the room's waiting list, never answered
    NOT_RUNNING = "not_running"  # no such generation holds the room's lock or waits
    NOT_ASKER = "not_asker"  # only its asker may cancel it, and another role asked: nothing done


@dataclass(frozen=True, slots=True)
class Queued:
    """A question waiting for its turn (``LLM_TURNS=queue``): generation ``rid`` will answer ``reply_to``."""

    rid: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class Turn:
    """What :meth:`GenerationLocks.take_turn` did with a question: ``fence`` set, the room's lock is
    taken for it (queue it now); ``position`` > 0, it waits, with that many questions ahead of it (the
    running one counted); neither: the room is busy (its waiting list is full, or the policy refuses).
    An interrupt names the generation it stops (``interrupted``) and the questions it took off the
    waiting list (``dropped``: never answered)."""

    fence: Fence | None = None
    position: int = 0
    interrupted: str = ""
    dropped: tuple[Queued, ...] = ()
    asked: bool = False  # ``once``: the rid took its turn before (nothing done now)


@dataclass(frozen=True, slots=True)
class NewEntry:
    room: str
    participant: str
    body: bytes
    cid: str | None = None  # the client's message id: stored once per room, participant and cid
    dedupe_s: int | None = None  # how long the cid is remembered (None: the retention's default)
    #: A generation's answer: appended only while this fence holds (else :class:`Fenced`), and the
    #: room's lock is released in the same step. Its cid is checked first: a resend of a stored
    #: answer is a :class:`Duplicate` whatever the lock holds.
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class Retention:
    maxlen: int = 0  # approximate length each stream is trimmed to (0 = no trimming)
    ttl_s: int = 0  # expiry renewed by the appends (0 = never; see the module's docstring)
    dedupe_s: int = 0  # how long an entry's cid is remembered (0 = not at all)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An entry that was not appended: the same cid was stored within the dedupe window."""

    id: bytes  # the original entry's id
    body: bytes  # the original entry's body (the new one when the original was trimmed away)


@dataclass(frozen=True, slots=True)
class BatchResult:
    before: dict[str, bytes]  # room -> newest id before the batch (b"0-0": none)
    ids: list[bytes | Duplicate | Exception]  # per entry, in submission order


@dataclass(frozen=True, slots=True)
class Progress:
    """What a batch of a generation's deltas adds to its text so far (kept for ``llm.snapshot``)."""

    reply_to: str
    attempt: int
    seq: int  # the batch's last delta
    text: str  # the batch's deltas joined


@dataclass(frozen=True, slots=True)
class Running:
    """A room's running generation as a connection entering the room found it: the deltas 0 to ``seq``
    sent so far, joined (``text`` None: past :data:`PARTIAL_MAX_BYTES`, not kept)."""

    rid: str
    reply_to: str
    attempt: int
    seq: int
    text: str | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a connection entering a room learns, read in one step with its roster entry."""

    epoch: str | None  # None: the room has no stream
    first_id: bytes | None  # the oldest retained entry
    removed: int | None  # how many entries were ever trimmed or deleted (None: unknown)
    roster: list[tuple[str, str]]  # (node/connection, role) of every connection on a live node
    full: bool = False  # the room held the most connections allowed: this one was not added
    newest_id: bytes | None = None  # the newest retained entry (None: the room has no stream)
    # whether the stream still holds the resume cursor's own entry (None: no cursor was given, or no stream)
    cursor_kept: bool | None = None
    #: the room's running generations that have sent deltas, read in the same step (one at most today)
    generations: tuple[Running, ...] = ()
    #: the room's questions waiting for their turn, oldest first (position 1, 2...)
    queued: tuple[Queued, ...] = ()


@dataclass(frozen=True, slots=True)
class Request:
    """A question for the bot: generation ``rid`` answers entry ``reply_to`` of ``room``."""

    room: str
    rid: str
    reply_to: str
    asker: str  # the role that asked
    entry_id: str = ""  # the request's id in its queue (set when read)
    attempt: int = 1  # 2, 3...: the request was taken over from a worker that died
    regenerates: str = ""  # the rid of the stored answer this one gives again (``llm.regenerate``)


@dataclass(frozen=True, slots=True)
class Admission:
    """What :meth:`UsageCounters.admit` found: ``over`` is "" when the generation was counted, else the
    budget that refused it (``generations`` or ``tokens``); ``retry_after_ms``, for ``generations``, is
    how long until the oldest generation counted leaves the window."""

    over: str = ""
    retry_after_ms: int = 0


class Subscription(Protocol):
    """Messages on one channel: :meth:`subscribe`, then :meth:`next` until :meth:`close`."""

    async def subscribe(self) -> None: ...

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        """``(kind, data)`` of the next message (kind ``subscribe`` first, then ``message``), or None
        after ``timeout_s``. Raises :class:`StoreUnavailable` when the connection is lost."""
        ...

    async def close(self) -> None: ...


class RoomLog(Protocol):
    async def append_batch(self, entries: Sequence[NewEntry], retention: Retention, node: str) -> BatchResult:
        """Append ``entries`` in order (announced to the rooms' other followers than ``node``)."""
        ...

    async def range(self, room: str, start: str | bytes = "-", end: str | bytes = "+",
                    count: int | None = None) -> list[Entry]:
        """Entries from ``start`` to ``end`` (``XRANGE`` bounds), oldest first."""
        ...

    async def revrange(self, room: str, end: str | bytes = "+", start: str | bytes = "-",
                       count: int | None = None) -> list[Entry]:
        """Entries from ``end`` down to ``start``, newest first (the end comes first)."""
        ...

    async def bodies(self, room: str, after: bytes, count: int) -> list[tuple[bytes, bytes]]:
        """``(id, body)`` of up to ``count`` entries after the id ``after``, oldest first."""
        ...

    async def last_id(self, room: str) -> bytes:
        """The newest entry's id, or ``0-0`` when the stream is empty or absent."""
        ...

    async def exists(self, room: str) -> bool: ...

    async def delete(self, room: str) -> bool:
        """Remove the room's stream and its epoch, in one step (so the cids sent to it are forgotten:
        the room's next append starts a new epoch); False when there was no stream."""
        ...


class Roster(Protocol):
    async def enter(self, room: str, field: str, role: str, ttl_s: int, most: int = 0,
                    cursor: bytes | None = None) -> SessionInfo:
        """Add ``field`` (``node/connection``; "" to only read) as ``role``, unless the room already holds
        ``most`` connections (0 = no limit; then ``full`` is set); read what ``session.ready`` needs, with
        whether the stream still holds the entry ``cursor`` (a full ``<ms>-<seq>`` id) names, and the
        running generation's text so far (as :meth:`GenerationLocks.frames` last wrote it, in this step:
        every delta after its ``seq`` is sent after this step)."""
        ...

    async def restore(self, entries: Sequence[tuple[str, str, str]], ttl_s: int) -> None:
        """Put ``(room, node/connection, role)`` entries back in their rosters."""
        ...

    async def sweep(self, rooms: Sequence[str]) -> list[tuple[str, str, str]]:
        """Drop the entries of nodes no longer alive: ``(room, node/connection, role)`` of each one
        this call removed (each is removed by one caller only)."""
        ...

    async def leave(self, room: str, field: str) -> None: ...


class NodeBus(Protocol):
    async def follow(self, rooms: Sequence[str], node: str, ttl_s: int) -> list[str]:
        """Record that ``node`` follows ``rooms`` and is alive in them for ``ttl_s`` more seconds (a
        heartbeat renews it). Returns the rooms it did not follow before (new, expired after a stall,
        or forgotten by Redis): announcements to it may have been missed there."""
        ...

    async def unfollow(self, rooms: Sequence[str], node: str) -> None: ...

    async def publish(self, messages: Mapping[str, Sequence[bytes]], node: str) -> None:
        """Send each room's ``messages`` (``b"<after id> <frame>"``) to the room's other followers,
        in one round trip (``node`` is the sender: "" when it follows no room)."""
        ...

    def subscription(self, node: str) -> Subscription:
        """The announcements and frames sent to ``node``."""
        ...


class RoomInstances(Protocol):
    """A room's current instance: a random id, made when a room is created (``POST /v1/session``) and
    kept until it is deleted or expires. A room deleted and created again is a new instance."""

    async def open(self, room: str, ttl_s: int) -> str:
        """The room's current instance, made now when it has none; in either case it lives at least
        ``ttl_s`` more seconds (a longer expiry is kept)."""
        ...

    async def current(self, room: str) -> str | None:
        """The room's current instance; None when it has none (never created, deleted or expired)."""
        ...

    async def delete(self, room: str) -> bool:
        """End the room's instance; False when it had none."""
        ...


class GenerationLocks(Protocol):
    """One generation per room, fenced. The room's lock holds ``(rid, token)``: the front takes it
    with a short joining lease, kept for a long one once the question's request is queued
    (:meth:`confirm`: the question keeps the room while it waits for a worker, but a relay that died
    before queueing it does not hold the room for long), the worker that starts the question takes it
    again with a new token and a shorter lease it renews. Every write of a generation (its frames, its
    answer, its end) checks the token in the same step, so a worker whose token is stale (its lease
    lapsed, or another worker took the request over) cannot write anything."""

    async def lock(self, room: str, rid: str, lease_ms: int, asker: str = "") -> Fence | None:
        """Take the room's lock for ``rid`` with a new token, recording ``asker`` (the role that asked,
        for :meth:`cancel`; "" records nothing); None when another generation holds it."""
        ...

    async def take_turn(self, request: Request, lease_ms: int, policy: str, most_waiting: int,
                        wait_ms: int, once: bool = False) -> Turn:
        """A question asks for the room, in one step (``policy``: ``queue`` or ``interrupt``, see
        ``LLM_TURNS``): the lock is taken for it (as :meth:`lock`) when the room is free and no question
        waits; else it joins the room's waiting list, at its end while fewer than ``most_waiting`` wait
        (``queue``), or in place of every waiting question (``interrupt``, which also names the running
        generation, for the caller to cancel). It waits at most ``wait_ms``. A rid that waits already
        gets its position again; with ``once``, a rid that took its turn before (its asker is recorded)
        gets :attr:`Turn.asked` and nothing is done."""
        ...

    async def rename(self, fence: Fence, rid: str, asker: str = "", once: bool = False) -> Turn:
        """The room's lock, taken under ``fence`` for a question before it had an id (``LLM_TURNS=refuse``:
        an ``llm.invoke`` takes the room before it is stored), is ``rid``'s now, under the same token and
        lease, recording ``asker``: :attr:`Turn.fence` is the new fence. With ``once``, when ``rid`` took
        its turn before (its asker is recorded: a resend whose first sending was asked),
        :attr:`Turn.asked` and nothing is done. Neither: the lock no longer holds ``fence``."""
        ...

    async def confirm(self, room: str, rid: str, fence: Fence | None, lease_ms: int) -> bool:
        """``rid``'s request is queued: the turn it took with the short joining lease (:meth:`lock`,
        :meth:`take_turn`) is kept for ``lease_ms`` from now (the queued lease): the lock's lease while it
        holds ``fence`` (None: ``rid`` waits), else ``rid``'s place in the waiting list. False when
        neither: a worker started it already, or its turn lapsed."""
        ...

    async def start(self, room: str, rid: str, lease_ms: int) -> Started:
        """A worker starts (or takes over) ``rid``, in one step: unless it is answered, ended or dropped
        from the waiting list, the lock is taken for it with a new token when it is ``rid``'s, or free and
        ``rid`` is not behind another waiting question (fencing out any earlier worker; ``rid`` leaves the
        waiting list); ``fence`` is None when another generation holds the room, and ``waits`` then tells
        that ``rid`` waits for its turn. ``answered`` holds for an answer stored in any epoch of the room
        within its window: a rid names one question, never generated (and paid for) twice, even when the
        room was deleted since."""
        ...

    async def withdraw(self, room: str, rid: str) -> bool:
        """``rid`` will not be answered: the lock is deleted if ``rid`` holds it (whatever its token), and
        ``rid`` leaves the waiting list; the workers are told when the room's turn passes. False when
        ``rid`` neither held nor waited."""
        ...

    async def pass_turn(self, room: str) -> int:
        """After a generation's last write released the room's lock: tell the workers (:meth:`turns`) when
        the room is free and questions wait. How many wait."""
        ...

    def turns(self) -> Subscription:
        """The rooms whose turn passed on any node (a question waiting there may start): messages
        ``b"<room>"``."""
        ...

    async def renew(self, fences: Sequence[Fence], lease_ms: int) -> list[bool]:
        """Renew these locks (and the text so far written under them), in one round trip: for each, whether
        its fence still holds."""
        ...

    async def release(self, fence: Fence) -> bool:
        """Delete the lock if ``fence`` holds it (compare-and-delete); the workers are told when questions
        wait (:meth:`turns`)."""
        ...

    async def frames(self, fence: Fence, messages: Sequence[bytes], node: str,
                     progress: Progress | None = None) -> bool:
        """Send ``messages`` (``b"<after id> <frame>"``, not stored) to the room's followers other than
        ``node``, only if ``fence`` holds the lock: False (nothing sent) when it does not. In the same
        step, ``progress`` (the deltas these messages carry) is added to the generation's text so far,
        which expires with the lock's lease (and is dropped when the answer is stored or ends), up to
        :data:`PARTIAL_MAX_BYTES`; what a connection entering the room reads (:meth:`Roster.enter`)."""
        ...

    async def cancel(self, room: str, rid: str, by: str = "", asker_only: bool = False) -> tuple[Cancel, str]:
        """If ``rid`` holds the lock, mark it cancelled by the role ``by`` and tell every worker, in one
        step; if it waits for its turn, take it off the waiting list (:attr:`Cancel.DEQUEUED`, with its
        ``reply_to``, the second value: "" otherwise); with ``asker_only``, only when ``by`` is the role
        that asked it (or who asked is unknown)."""
        ...

    def cancellations(self) -> Subscription:
        """The generations cancelled on any node: messages ``b"<rid> <role that cancelled>"``."""
        ...

    async def answer(self, room: str, rid: str) -> bytes | None:
        """The id of ``rid``'s stored answer (its ``llm.response``) in the room's current epoch, from the
        answer's marker; None when there is none (never answered, still running, ended with an
        ``llm.error``, or its marker forgotten)."""
        ...


class UsageCounters(Protocol):
    """The bot's spending: each room's generations in a sliding window (a sorted set of when each was
    accepted, by Redis's clock), and tokens per UTC day (``day``: days since 1970-01-01) for each room and
    for the whole deployment. Each call is one atomic step on one room's keys (or on the global key)."""

    async def admit(self, room: str, rid: str, window_ms: int, most_generations: int, day: int,
                    most_tokens: int) -> Admission:
        """Count generation ``rid`` in the room's window, unless the room used ``most_tokens`` tokens on
        ``day`` or ``most_generations`` generations within the last ``window_ms`` (0: no such limit).
        A rid counted already is admitted again without counting twice."""
        ...

    async def add_tokens(self, room: str, day: int, tokens: int) -> None:
        """Add ``tokens`` to the room's and the deployment's counts of ``day``."""
        ...

    async def room_usage(self, room: str, window_ms: int, day: int) -> tuple[int, int]:
        """``(generations within the last window_ms, tokens on day)`` of the room."""
        ...

    async def tokens(self, day: int) -> int:
        """The tokens every room used on ``day``."""
        ...


class RequestQueue(Protocol):
    """Requests for the bot, read by any worker of the queue; a dead worker's are taken over."""

    async def add(self, request: Request) -> None: ...

    async def ensure_group(self) -> None: ...

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Request]:
        """New requests for ``consumer`` (waits up to ``block_ms`` for one)."""
        ...

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Request]:
        """Requests idle for ``min_idle_ms`` (their worker died), now ``consumer``'s."""
        ...

    async def touch(self, consumer: str, entry_ids: Sequence[str]) -> None:
        """Keep ``consumer``'s claim on ``entry_ids`` fresh: their worker is alive."""
        ...

    async def ack(self, entry_ids: Sequence[str]) -> None: ...

    async def forget_consumer(self, consumer: str) -> None:
        """Remove a stopped worker's consumer, if nothing is pending for it."""
        ...


class Store(Protocol):
    """Every port of one storage backend, and its lifecycle."""

    @property
    def kind(self) -> str:
        """``redis`` or ``embedded``."""
        ...

    @property
    def log(self) -> RoomLog: ...

    @property
    def bulk_log(self) -> RoomLog:
        """The same room logs, for bulk reads (history pages, exports, resume replays): on a
        connection of their own, never the one appends (and the feed's catch-up) go through, so a
        big read never queues ahead of an append's reply."""
        ...

    @property
    def roster(self) -> Roster: ...

    @property
    def bus(self) -> NodeBus: ...

    @property
    def instances(self) -> RoomInstances: ...

    @property
    def locks(self) -> GenerationLocks: ...

    @property
    def usage(self) -> UsageCounters: ...

    def requests(self, queue: str) -> RequestQueue: ...

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` when the store cannot be reached."""
        ...

    async def close(self) -> None: ...
