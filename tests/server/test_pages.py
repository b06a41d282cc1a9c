"""History pages straight on the store, with ids chosen by the test, on both store adapters."""

from __future__ import annotations

from typing import Any

import pytest

from server.pages import Page, PageQuery, read_all, read_page
from server.store.keys import stream_key
from server.store.ports import Entry, RoomLog
from tests.conftest import Backend, new_room


async def stream(backend: Backend, *entries: tuple[str, str]) -> str:
    """A new room whose stream holds ``(id, participant)`` entries."""
    room = new_room()
    for entry_id, participant in entries:
        await backend.raw.xadd(stream_key(room), {"participant": participant, "body": b'{"hd":{},"bd":{}}'},
                               id=entry_id)
    return room


def ids(page: Page) -> list[str]:
    return [entry[0].decode() for entry in page.entries]


async def test_a_cursor_without_a_sequence_number_means_sequence_0(backend: Backend) -> None:
    store = backend.store.log
    key = await stream(backend, ("5-0", "A"), ("5-1", "A"), ("6-0", "A"))
    assert ids(await read_page(store, key, PageQuery(before="6"))) == ["5-0", "5-1"]
    assert ids(await read_page(store, key, PageQuery(before="5"))) == []
    assert ids(await read_page(store, key, PageQuery(after="5"))) == ["5-1", "6-0"]
    await store.delete(key)


async def test_pages_read_back_from_below_the_first_entry_without_xrevrange(backend: Backend,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Redis answers XREVRANGE from a bound below the stream's first entry by walking the whole stream.
    store: RoomLog = backend.store.log
    key = await stream(backend, ("5-0", "A"), ("5-1", "B"), ("7-0", "A"))
    reverse_reads: list[tuple[Any, ...]] = []
    revrange = store.revrange

    async def spy(*args: Any, **kwargs: Any) -> list[Entry]:
        reverse_reads.append(args)
        return await revrange(*args, **kwargs)

    monkeypatch.setattr(store, "revrange", spy)
    for query in (PageQuery(before="5-0"), PageQuery(before="3-9"), PageQuery(after="0", limit=1)):
        await read_page(store, key, query)
    assert reverse_reads == []
    page = await read_page(store, key, PageQuery(before="7-0", participant="A"))
    assert (ids(page), page.next_before, page.next_after) == (["5-0"], None, "5-0")
    await store.delete(key)


async def test_read_all_reads_in_chunks_up_to_the_newest_entry_at_the_start(backend: Backend) -> None:
    store = backend.store.log
    key = await stream(backend, *((f"{n}-0", "A") for n in range(1, 8)))
    chunks = read_all(store, key, size=3)
    sizes = [len(await anext(chunks))]
    await backend.raw.xadd(stream_key(key), {"participant": "B", "body": b"{}"}, id="9-0")  # after the export began
    sizes += [len(chunk) async for chunk in chunks]
    assert sizes == [3, 3, 1]
    await store.delete(key)
