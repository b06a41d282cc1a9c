"""Pages of a room's history: bounded reads of its stream, whatever the stream's length.

A page is one ``XREVRANGE`` (newest first, for no cursor or ``before``) or ``XRANGE`` (oldest
first, for ``after``) with ``COUNT limit + 1`` from an exclusive bound ``(id``: O(limit) work; the
extra entry only tells whether the page has a neighbour in its direction. Each cursor the other
way, and each guard below, costs one more O(log N) read of ``COUNT 1``.

Cursors are stream ids and exclusive: ``before=X`` pages through entries older than X, ``after=X``
through entries newer. An id without a sequence number means ``<ms>-0``. An empty page has no
cursors.

With a participant filter the read goes on, in growing chunks, until it has ``limit`` matches or
reaches the end of the stream. A cursor is then given whenever the stream holds entries (of anyone)
beyond the page, so the page it leads to may hold no match: knowing otherwise would mean reading on
to the end of the stream.

One Redis trap is avoided on purpose: ``XREVRANGE`` from a bound below the stream's first entry
walks the whole stream backwards to find nothing (O(N): 0.1 s on 1,000,000 entries). So before
reading back from a bound, a page asks ``XRANGE key - (bound COUNT 1`` whether anything is older.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from server.store.ports import Entry, RoomLog

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CHUNK = 2000  # entries per read while a participant filter looks for matches
EXPORT_CHUNK = 500  # entries per read of a whole-stream export

_FIRST_ID = "0-0"  # nothing is older
_LAST_ID = f"{2**64 - 1}-{2**64 - 1}"  # nothing is newer


@dataclass(frozen=True, slots=True)
class PageQuery:
    limit: int = DEFAULT_LIMIT
    before: str | None = None  # a valid stream id; at most one of before and after
    after: str | None = None
    participant: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]  # oldest first
    next_before: str | None  # pass as ``before`` for the older page; None: nothing older
    next_after: str | None  # pass as ``after`` for the newer page; None: nothing newer (or no cursor given)


async def read_page(room_log: RoomLog, room: str, query: PageQuery) -> Page:
    """The page ``query`` asks for; an absent stream reads as an empty one."""
    older, newer = _Older(room_log, room), _Newer(room_log, room)
    if query.after is not None:
        entries, has_newer = await _scan(newer, _complete(query.after), query.limit, query.participant)
        has_older = bool(entries) and await older.beyond(_id(entries[0]))
    else:
        entries, has_older = await _scan(older, _complete(query.before), query.limit, query.participant)
        entries.reverse()
        has_newer = query.before is not None and bool(entries) and await newer.beyond(_id(entries[-1]))
    if not entries:
        return Page([], None, None)
    return Page(entries, _id(entries[0]) if has_older else None, _id(entries[-1]) if has_newer else None)


async def read_all(room_log: RoomLog, room: str, size: int = EXPORT_CHUNK) -> AsyncIterator[list[Entry]]:
    """The whole stream, oldest first, in reads of ``size`` entries.

    Ends at the newest entry of the stream when it is called, so a busy room's export ends.
    """
    end = (await room_log.last_id(room)).decode()
    bound: str | None = None
    while end != _FIRST_ID and bound != end:
        chunk = await room_log.range(room, "-" if bound is None else "(" + bound, end, count=size)
        if not chunk:
            return  # trimmed or deleted meanwhile
        yield chunk
        bound = _id(chunk[-1])


async def _scan(reader: _Reader, bound: str | None, limit: int,
                participant: str | None) -> tuple[list[Entry], bool]:
    """Up to ``limit`` entries beyond ``bound`` in ``reader``'s direction (only ``participant``'s
    when given), and whether the stream holds any entry beyond the last of them."""
    wanted = None if participant is None else participant.encode()
    found: list[Entry] = []
    size = limit + 1
    while True:
        chunk = await reader.read(bound, size)
        for index, entry in enumerate(chunk):
            if wanted is None or entry[1].get(b"participant") == wanted:
                found.append(entry)
                if len(found) == limit:
                    return found, index + 1 < len(chunk) or (len(chunk) == size and await reader.beyond(_id(entry)))
        if len(chunk) < size:
            return found, False
        bound = _id(chunk[-1])
        size = min(size * 2, MAX_CHUNK)


class _Reader(Protocol):
    async def read(self, bound: str | None, count: int) -> list[Entry]:
        """Up to ``count`` entries beyond the exclusive ``bound`` (None: from the stream's end)."""

    async def beyond(self, bound: str) -> bool:
        """Whether the stream holds any entry beyond ``bound``."""


class _Older:
    """Newest first, going back in time."""

    def __init__(self, room_log: RoomLog, room: str) -> None:
        self._log, self._room = room_log, room

    async def read(self, bound: str | None, count: int) -> list[Entry]:
        if bound is None:
            return await self._log.revrange(self._room, "+", "-", count=count)
        # From a bound below the first entry, XREVRANGE walks the whole stream to find nothing (O(N)).
        if not await self.beyond(bound):
            return []
        return await self._log.revrange(self._room, "(" + bound, "-", count=count)

    async def beyond(self, bound: str) -> bool:
        # Forwards from the start: O(log N), where XREVRANGE "(bound" may be O(N) (see read).
        return bound != _FIRST_ID and bool(await self._log.range(self._room, "-", "(" + bound, count=1))


class _Newer:
    """Oldest first, going forward in time."""

    def __init__(self, room_log: RoomLog, room: str) -> None:
        self._log, self._room = room_log, room

    async def read(self, bound: str | None, count: int) -> list[Entry]:
        if bound == _LAST_ID:
            return []  # Redis refuses the empty interval "(<max>-<max> +"
        return await self._log.range(self._room, "-" if bound is None else "(" + bound, "+", count=count)

    async def beyond(self, bound: str) -> bool:
        return bool(await self.read(bound, 1))


def _complete(cursor: str | None) -> str | None:
    """``<ms>`` as ``<ms>-0``: Redis reads an incomplete exclusive end as ``<ms>-<max>`` instead."""
    return cursor if cursor is None or "-" in cursor else cursor + "-0"


def _id(entry: Entry) -> str:
    return entry[0].decode()
