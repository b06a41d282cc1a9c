"""The history API's pages, served in-process (httpx's ASGI transport, no lifespan) on the fake store:
they are read on the store's bulk log and bounded by ``HISTORY_PAGE_MAX_BYTES``."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from server.app import create_app
from server.pages import entry_bytes
from server.settings import Settings
from tests.unit.fakes import FakeStore


async def get(store: FakeStore, path: str, settings: Settings | None = None) -> tuple[int, dict[str, Any]]:
    app = create_app(settings or Settings(), store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        response = await http.get(path)
    return response.status_code, response.json()


def fill(store: FakeStore, count: int, text_bytes: int) -> list[str]:
    return [store.log.add("r", orjson.dumps({"hd": {"event": "chat.message", "role": "A", "ts": "t"},
                                              "bd": {"text": "x" * text_bytes}})).decode() for _ in range(count)]


async def test_pages_and_exports_are_read_on_the_stores_bulk_log() -> None:
    store = FakeStore()
    ids = fill(store, 3, 10)
    status, page = await get(store, "/api/chat/history/r")
    assert status == 200 and [m["id"] for m in page["messages"]] == ids and store.bulk_log.reads > 0
    reads = store.bulk_log.reads
    status, export = await get(store, "/api/chat/history/r/export")
    assert status == 200 and len(export["messages"]) == 3 and store.bulk_log.reads > reads


async def test_a_page_stops_at_history_page_max_bytes_and_its_cursor_leads_on() -> None:
    store = FakeStore()
    ids = fill(store, 10, 1000)
    size = entry_bytes(store.log.streams["r"][0])
    settings = Settings(history_page_max_bytes=3 * size)
    status, page = await get(store, "/api/chat/history/r?limit=100", settings)
    assert status == 200 and [m["id"] for m in page["messages"]] == ids[-3:]
    assert (page["next_before"], page["next_after"]) == (ids[-3], None)
    _, older = await get(store, f"/api/chat/history/r?limit=100&before={page['next_before']}", settings)
    assert [m["id"] for m in older["messages"]] == ids[-6:-3]


async def test_the_relay_replays_resumes_from_the_bulk_log() -> None:
    store = FakeStore()
    relay = create_app(Settings(), store).state.relay
    assert relay.sessions._log is store.bulk_log
