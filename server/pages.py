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

Pages are bounded in bytes as well as in entries: a page holds at least one entry, and stops before
the next entry would take it past ``max_bytes`` (``HISTORY_PAGE_MAX_BYTES``, 1 MiB by default; an
entry's size is what Redis returns for it: its id, field names and values). The page's cursor in its
direction then leads to the entries it left out, as it would for a page that reached ``limit``. The
reads themselves are sized in bytes too: the first asks for at most :data:`FIRST_READ` entries, each
later one for about what the budget left holds at the mean entry size seen so far, so a page of big
entries never makes Redis send (and this process parse) much more than its budget.

Exports (:func:`read_all`) and resume replays read in chunks bounded the same way, and every reader
here yields to the event loop between chunks, so one big read does not hold every other room.

One Redis trap is avoided on purpose: ``XREVRANGE`` from a bound below the stream's first entry
walks the whole stream backwards to find nothing (O(N): 0.1 s on 1,000,000 entries). So before
reading back from a bound, a page asks ``XRANGE key - (bound COUNT 1`` whether anything is older.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from server.store.ports import Entry, RoomLog

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CHUNK = 2000  # entries per read while a participant filter looks for matches
EXPORT_CHUNK = 500  # entries per read of a whole-stream export (at most)
PAGE_MAX_BYTES = 1 << 20  # a page's byte budget by default (HISTORY_PAGE_MAX_BYTES)
CHUNK_MAX_BYTES = 1 << 20  # about the most bytes one read of an export or a replay asks for
FIRST_READ = 32  # entries in the first read of a page (or chunk), before any entry's size is known

_FIRST_ID = "0-0"  # nothing is older
_LAST_ID = f"{2**64 - 1}-{2**64 - 1}"  # nothing is newer


@dataclass(frozen=True, slots=True)
class PageQuery:
    limit: int = DEFAULT_LIMIT
    before: str | None = None  # a valid stream id; at most one of before and after
    after: str | None = None
    participant: str | None = None
    max_bytes: int = PAGE_MAX_BYTES  # the page stops before passing it (but holds at least one entry)


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]  # oldest first
    next_before: str | None  # pass as ``before`` for the older page; None: nothing older
    next_after: str | None  # pass as ``after`` for the newer page; None: nothing newer (or no cursor given)


async def read_page(room_log: RoomLog, room: str, query: PageQuery) -> Page:
    """The page ``query`` asks for; an absent stream reads as an empty one."""
    older, newer = _Older(room_log, room), _Newer(room_log, room)
    if query.after is not None:
        entries, has_newer = await _scan(newer, _complete(query.after), query)
        has_older = bool(entries) and await older.beyond(_id(entries[0]))
    else:
        entries, has_older = await _scan(older, _complete(query.before), query)
        entries.reverse()
        has_newer = query.before is not None and bool(entries) and await newer.beyond(_id(entries[-1]))
    if not entries:
        return Page([], None, None)
    return Page(entries, _id(entries[0]) if has_older else None, _id(entries[-1]) if has_newer else None)


async def read_all(room_log: RoomLog, room: str, size: int = EXPORT_CHUNK,
                   max_bytes: int = CHUNK_MAX_BYTES) -> AsyncIterator[list[Entry]]:
    """The whole stream, oldest first, in reads of at most ``size`` entries and about ``max_bytes``
    (at least one entry each); yields to the event loop after each.

    Ends at the newest entry of the stream when it is called, so a busy room's export ends.
    """
    end = (await room_log.last_id(room)).decode()
    bound: str | None = None
    sizer = Sizer(max_bytes, size)
    while end != _FIRST_ID and bound != end:
        chunk = await room_log.range(room, "-" if bound is None else "(" + bound, end, count=sizer.count())
        if not chunk:
            return  # trimmed or deleted meanwhile
        sizer.saw(chunk)
        yield chunk
        await asyncio.sleep(0)  # long exports share the loop with every room
        bound = _id(chunk[-1])


def entry_bytes(entry: Entry) -> int:
    """An entry's size as a page counts it: its id, field names and values."""
    return len(entry[0]) + sum(len(name) + len(value) for name, value in entry[1].items())


class Sizer:
    """How many entries the next read asks for, so that it returns about ``max_bytes``: at most
    ``most``, :data:`FIRST_READ` before any entry was seen, then what ``max_bytes`` (or the budget
    given) holds at the mean size of the entries seen so far, plus one."""

    def __init__(self, max_bytes: int, most: int) -> None:
        self._max_bytes = max_bytes
        self._most = most
        self._seen = self._bytes = 0

    def saw(self, entries: list[Entry]) -> list[int]:
        """Count ``entries`` in the mean; their sizes (:func:`entry_bytes`), in order."""
        sizes = list(map(entry_bytes, entries))
        self._seen += len(entries)
        self._bytes += sum(sizes)
        return sizes

    def count(self, most: int | None = None, budget: int | None = None) -> int:
        most = self._most if most is None else most
        if not self._seen:
            return max(1, min(most, FIRST_READ))
        mean = max(1, self._bytes // self._seen)
        fits = max(0, self._max_bytes if budget is None else budget) // mean + 1
        return max(1, min(most, fits))


async def _scan(reader: _Reader, bound: str | None, query: PageQuery) -> tuple[list[Entry], bool]:
    """Up to ``query.limit`` entries beyond ``bound`` in ``reader``'s direction (only the participant's
    when given) within ``query.max_bytes`` (at least one), and whether the stream holds any entry beyond
    the last of them."""
    limit, wanted = query.limit, None if query.participant is None else query.participant.encode()
    found: list[Entry] = []
    used = 0
    sizer = Sizer(query.max_bytes, MAX_CHUNK)
    size = limit + 1  # with a filter: grows while matches are rare
    while True:
        # Unfiltered: the rest of the page and one more (to see beyond it), within the budget left.
        count = sizer.count(limit - len(found) + 1, query.max_bytes - used) if wanted is None else sizer.count(size)
        chunk = await reader.read(bound, count)
        sizes = sizer.saw(chunk)
        for index, entry in enumerate(chunk):
            if wanted is not None and entry[1].get(b"participant") != wanted:
                continue
            weight = sizes[index]
            if found and used + weight > query.max_bytes:
                return found, True  # the byte budget is spent: this entry starts the next page
            found.append(entry)
            used += weight
            if len(found) == limit:
                return found, index + 1 < len(chunk) or (len(chunk) == count and await reader.beyond(_id(entry)))
        if len(chunk) < count:
            return found, False
        bound = _id(chunk[-1])
        size = min(size * 2, MAX_CHUNK)
        await asyncio.sleep(0)  # a long scan shares the loop with every room


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
