"""History pages on the fake log, with ids chosen by the test: cursors both ways, the participant filter's
growing reads, no XREVRANGE from below the first entry, the byte budget, and whole-stream exports in
chunks."""

from __future__ import annotations

from typing import Any

import server.pages as pages_module
from server.pages import FIRST_READ, Page, PageQuery, entry_bytes, read_all, read_page
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


# -- the byte budget ------------------------------------------------------------------------------------

def big_log(count: int, body_bytes: int, who: str = "A") -> SpyLog:
    """Entries ``1-0`` to ``<count>-0``, each of :data:`SIZE` bytes as a page counts them."""
    log = SpyLog()
    log.streams["r"] = [(f"{n}-0".encode(), {b"participant": who.encode(), b"body": b"x" * body_bytes})
                        for n in range(1, count + 1)]
    return log


SIZE = entry_bytes((b"1-0", {b"participant": b"A", b"body": b"x" * 1000}))  # ids 1-0 to 9-0: all this size


async def test_a_page_stops_before_its_byte_budget_and_its_cursor_leads_to_the_rest() -> None:
    log = big_log(9, 1000)
    newest = await read_page(log, "r", PageQuery(limit=100, max_bytes=3 * SIZE + SIZE // 2))
    assert (ids(newest), newest.next_before, newest.next_after) == (["7-0", "8-0", "9-0"], "7-0", None)
    forward = await read_page(log, "r", PageQuery(limit=100, after="1-0", max_bytes=3 * SIZE))
    assert (ids(forward), forward.next_before, forward.next_after) == (["2-0", "3-0", "4-0"], "2-0", "4-0")


async def test_a_page_holds_one_entry_even_when_that_entry_alone_passes_the_budget() -> None:
    log = big_log(3, 1000)
    page = await read_page(log, "r", PageQuery(before="3-0", max_bytes=10))
    assert (ids(page), page.next_before, page.next_after) == (["2-0"], "2-0", "2-0")


async def test_following_the_cursors_of_byte_bounded_pages_reads_every_entry_once_each_way() -> None:
    log = big_log(9, 1000)
    expected = [f"{n}-0" for n in range(1, 10)]
    back: list[str] = []
    query = PageQuery(limit=100, max_bytes=2 * SIZE)
    while True:
        page = await read_page(log, "r", query)
        assert len(page.entries) == 2 or page.next_before is None
        back = ids(page) + back
        if page.next_before is None:
            break
        query = PageQuery(limit=100, before=page.next_before, max_bytes=2 * SIZE)
    forward: list[str] = []
    query = PageQuery(limit=100, after="0-0", max_bytes=2 * SIZE)
    while True:
        page = await read_page(log, "r", query)
        forward += ids(page)
        if page.next_after is None:
            break
        query = PageQuery(limit=100, after=page.next_after, max_bytes=2 * SIZE)
    assert back == forward == expected


async def test_a_page_reads_about_its_budget_from_the_store_not_its_whole_limit() -> None:
    log = big_log(200, 1000)
    size = entry_bytes(log.streams["r"][-1])  # ids 100-0 to 200-0: two bytes more than SIZE
    page = await read_page(log, "r", PageQuery(limit=1000, max_bytes=10 * size))
    assert len(page.entries) == 10 and page.next_before == "191-0"
    counts = [count for kind, *_, count in log.reads if kind == "revrange"]
    assert counts == [min(FIRST_READ, 1001)]  # the first read (32 entries) already passes the budget
    small = big_log(200, 1000)
    await read_page(small, "r", PageQuery(limit=1000, max_bytes=100 * size))
    counts = [count for kind, *_, count in small.reads if kind == "revrange"]
    assert counts == [FIRST_READ, 100 - FIRST_READ + 1]  # then what the budget left holds, and one more


async def test_a_filtered_page_counts_only_its_matches_against_the_budget() -> None:
    log = big_log(9, 1000)
    for n in (2, 5, 8):
        log.streams["r"][n - 1][1][b"participant"] = b"B"
    page = await read_page(log, "r", PageQuery(limit=100, participant="B", max_bytes=2 * SIZE))
    assert (ids(page), page.next_before) == (["5-0", "8-0"], "5-0")


async def test_read_all_reads_chunks_bounded_in_bytes() -> None:
    log = big_log(100, 1000)
    chunks = [len(chunk) async for chunk in read_all(log, "r", size=500, max_bytes=10 * SIZE)]
    assert sum(chunks) == 100 and chunks[0] == FIRST_READ and max(chunks[1:]) <= 11
