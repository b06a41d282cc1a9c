"""History pages on the fake log, with ids chosen by the test: cursors both ways, the participant filter's
growing reads, no XREVRANGE from below the first entry, and whole-stream exports in chunks."""

from __future__ import annotations

from typing import Any

import server.pages as pages_module
from server.pages import Page, PageQuery, read_all, read_page
from server.store.ports import Entry
from tests.unit.fakes import FakeLog, FakeStore


class SpyLog(FakeLog):
    """The fake log, recording its reads: ("range" | "revrange", first bound, second bound, count)."""

    def __init__(self) -> None:
        store = FakeStore()
        super().__init__(store.bus, store.clock)
        self.reads: list[tuple[str, Any, Any, int | None]] = []

    async def range(self, room: str, start: str | bytes = "-", end: str | bytes = "+",
                    count: int | None = None) -> list[Entry]:
        self.reads.append(("range", start, end, count))
        return await super().range(room, start, end, count)

    async def revrange(self, room: str, end: str | bytes = "+", start: str | bytes = "-",
                       count: int | None = None) -> list[Entry]:
        self.reads.append(("revrange", end, start, count))
        return await super().revrange(room, end, start, count)

    def fill(self, *entries: tuple[str, str]) -> None:
        """The room ``r`` holds ``(id, participant)`` entries."""
        self.streams["r"] = [(entry_id.encode(), {b"participant": who.encode(), b"body": b"{}"})
                             for entry_id, who in entries]


def log_of(*entries: tuple[str, str]) -> SpyLog:
    log = SpyLog()
    log.fill(*entries)
    return log


def ids(page: Page) -> list[str]:
    return [entry[0].decode() for entry in page.entries]


TEN = [(f"{n}-0", "A" if n % 3 else "B") for n in range(1, 11)]  # B: 3, 6, 9


async def test_no_cursor_gives_the_newest_entries_oldest_first_and_a_cursor_to_older_ones() -> None:
    page = await read_page(log_of(*TEN), "r", PageQuery(limit=3))
    assert (ids(page), page.next_before, page.next_after) == (["8-0", "9-0", "10-0"], "8-0", None)


async def test_before_pages_back_and_points_both_ways() -> None:
    page = await read_page(log_of(*TEN), "r", PageQuery(limit=3, before="8-0"))
    assert (ids(page), page.next_before, page.next_after) == (["5-0", "6-0", "7-0"], "5-0", "7-0")


async def test_after_pages_forward_and_points_both_ways() -> None:
    page = await read_page(log_of(*TEN), "r", PageQuery(limit=3, after="2-0"))
    assert (ids(page), page.next_before, page.next_after) == (["3-0", "4-0", "5-0"], "3-0", "5-0")


async def test_the_last_page_each_way_has_no_cursor_beyond_it() -> None:
    log = log_of(*TEN)
    oldest = await read_page(log, "r", PageQuery(limit=3, before="4-0"))
    newest = await read_page(log, "r", PageQuery(limit=3, after="7-0"))
    assert (ids(oldest), oldest.next_before) == (["1-0", "2-0", "3-0"], None)
    assert (ids(newest), newest.next_after) == (["8-0", "9-0", "10-0"], None)


async def test_following_the_cursors_reads_every_entry_once() -> None:
    log = log_of(*TEN)
    seen: list[str] = []
    query = PageQuery(limit=4)
    while True:
        page = await read_page(log, "r", query)
        seen = ids(page) + seen
        if page.next_before is None:
            break
        query = PageQuery(limit=4, before=page.next_before)
    assert seen == [entry_id for entry_id, _ in TEN]


async def test_a_cursor_without_a_sequence_number_means_sequence_0() -> None:
    log = log_of(("5-0", "A"), ("5-1", "A"), ("6-0", "A"))
    assert ids(await read_page(log, "r", PageQuery(before="6"))) == ["5-0", "5-1"]
    assert ids(await read_page(log, "r", PageQuery(before="5"))) == []
    assert ids(await read_page(log, "r", PageQuery(after="5"))) == ["5-1", "6-0"]


async def test_an_empty_page_has_no_cursors_and_an_absent_stream_reads_as_empty() -> None:
    log = log_of(*TEN)
    assert await read_page(log, "r", PageQuery(after="10-0")) == Page([], None, None)
    assert await read_page(log, "absent", PageQuery()) == Page([], None, None)


async def test_after_the_largest_id_there_is_reads_nothing_without_asking() -> None:
    log = log_of(*TEN)
    page = await read_page(log, "r", PageQuery(after=f"{2**64 - 1}-{2**64 - 1}"))
    assert page == Page([], None, None) and log.reads == []


async def test_a_participant_filter_reads_on_in_growing_chunks_until_it_has_enough() -> None:
    log = log_of(*TEN)
    page = await read_page(log, "r", PageQuery(limit=2, participant="B"))
    assert ids(page) == ["6-0", "9-0"] and page.next_before == "6-0" and page.next_after is None
    assert [count for kind, *_, count in log.reads if kind == "revrange"] == [3, 6]


async def test_a_participant_filter_with_no_match_reads_to_the_end_and_finds_nothing() -> None:
    log = log_of(*TEN)
    assert await read_page(log, "r", PageQuery(limit=2, participant="llm")) == Page([], None, None)


async def test_a_filtered_page_gives_a_cursor_whenever_the_stream_holds_more_of_anyone() -> None:
    log = log_of(("1-0", "A"), ("2-0", "B"), ("3-0", "A"))
    page = await read_page(log, "r", PageQuery(limit=1, participant="B"))
    assert (ids(page), page.next_before) == (["2-0"], "2-0")  # 1-0 is A's: the next page may be empty
    assert await read_page(log, "r", PageQuery(limit=1, participant="B", before="2-0")) == Page([], None, None)


async def test_filter_chunks_stop_growing_at_max_chunk(monkeypatch: Any) -> None:
    monkeypatch.setattr(pages_module, "MAX_CHUNK", 4)
    log = log_of(*((f"{n}-0", "A") for n in range(1, 30)))
    await read_page(log, "r", PageQuery(limit=2, participant="B"))
    assert [count for kind, *_, count in log.reads if kind == "revrange"] == [3, 4, 4, 4, 4, 4, 4, 4]


async def test_pages_never_read_back_from_below_the_first_entry() -> None:
    log = log_of(("5-0", "A"), ("5-1", "B"), ("7-0", "A"))
    for query in (PageQuery(before="5-0"), PageQuery(before="3-9"), PageQuery(before="0-0")):
        assert (await read_page(log, "r", query)).entries == []
    assert [read for read in log.reads if read[0] == "revrange"] == []


async def test_an_older_page_asks_forwards_first_whether_anything_is_older() -> None:
    log = log_of(("5-0", "A"), ("5-1", "B"), ("7-0", "A"))
    await read_page(log, "r", PageQuery(before="7-0", limit=5))
    assert log.reads[0] == ("range", "-", "(7-0", 1)
    assert log.reads[1] == ("revrange", "(7-0", "-", 6)


async def test_read_all_reads_in_chunks_up_to_the_newest_entry_when_it_began() -> None:
    log = log_of(*((f"{n}-0", "A") for n in range(1, 8)))
    chunks = read_all(log, "r", size=3)
    sizes = [len(await anext(chunks))]
    log.streams["r"].append((b"9-0", {b"participant": b"B", b"body": b"{}"}))  # after the export began
    sizes += [len(chunk) async for chunk in chunks]
    assert sizes == [3, 3, 1]
    assert [read[1] for read in log.reads if read[0] == "range"] == ["-", "(3-0", "(6-0"]


async def test_read_all_of_an_empty_or_absent_stream_yields_nothing() -> None:
    assert [chunk async for chunk in read_all(log_of(), "r")] == []
    assert [chunk async for chunk in read_all(log_of(), "absent")] == []


async def test_read_all_stops_when_the_stream_is_deleted_meanwhile() -> None:
    log = log_of(*((f"{n}-0", "A") for n in range(1, 8)))
    chunks = read_all(log, "r", size=3)
    first = await anext(chunks)
    del log.streams["r"]
    assert len(first) == 3 and [chunk async for chunk in chunks] == []
