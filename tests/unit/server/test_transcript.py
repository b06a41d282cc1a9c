"""Stored entries as the HTTP API shows them, and exports rendered chunk by chunk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from protocol.codec import frame_with_id
from server.store.ports import Entry
from server.transcript import EXPORTS, YIELD_BYTES, json_export, markdown_export, markdown_section, message, messages

OURS = orjson.dumps({"hd": {"event": "chat.message", "role": "A", "sid": "r", "ts": "2025-01-01T00:00:00.000Z"},
                     "bd": {"text": "hello"}})


def entry(entry_id: str, body: bytes, participant: str = "A") -> Entry:
    return entry_id.encode(), {b"participant": participant.encode(), b"body": body}


async def chunks_of(*chunks: list[Entry]) -> AsyncIterator[list[Entry]]:
    for chunk in chunks:
        yield chunk


async def rendered(render: AsyncIterator[bytes]) -> bytes:
    return b"".join([part async for part in render])


def test_a_history_message_shows_the_broadcast_envelope_with_its_id_first() -> None:
    shown = message(entry("5-0", OURS))
    assert shown == {"id": "5-0", "participant": "A", "event": "chat.message", "ts": "2025-01-01T00:00:00.000Z",
                     "hd": {"id": "5-0", "event": "chat.message", "role": "A", "sid": "r",
                            "ts": "2025-01-01T00:00:00.000Z"},
                     "bd": {"text": "hello"}}
    assert next(iter(shown["hd"])) == "id"
    assert {"hd": shown["hd"], "bd": shown["bd"]} == orjson.loads(frame_with_id(OURS, "5-0"))  # what members got


def test_an_entry_written_by_another_tool_is_shaped_as_members_received_it() -> None:
    shown = message(entry("6-0", b'{"note": 1}', "B"))
    assert shown["hd"] == {"id": "6-0"} and shown["bd"] == {"note": 1}
    assert shown["participant"] == "B" and shown["event"] is None and shown["ts"] is None


async def test_a_json_export_is_one_valid_document_from_any_number_of_chunks() -> None:
    chunks = chunks_of([entry("1-0", OURS)], [entry("2-0", OURS), entry("3-0", OURS)])
    document = await rendered(json_export("r", chunks))
    parsed = orjson.loads(document)
    assert parsed["sid"] == "r" and [m["id"] for m in parsed["messages"]] == ["1-0", "2-0", "3-0"]
    assert orjson.loads(await rendered(json_export("r", chunks_of()))) == {"sid": "r", "messages": []}


async def test_a_markdown_export_has_a_title_and_a_section_per_message() -> None:
    document = (await rendered(markdown_export("r", chunks_of([entry("1-0", OURS)])))).decode()
    assert document == "# Chat history: r\n\n### A · 2025-01-01T00:00:00.000Z\n\nhello\n"


def test_a_message_without_text_shows_its_body_as_json() -> None:
    section = markdown_section(message(entry("1-0", b'{"hd":{"event":"x"},"bd":{"n":1}}', "llm")))
    assert section == '\n### llm · None\n\n```json\n{"n":1}\n```\n'


def test_exports_are_offered_as_json_and_markdown() -> None:
    assert {name: (export.media_type, export.extension) for name, export in EXPORTS.items()} == {
        "json": ("application/json", "json"), "markdown": ("text/markdown; charset=utf-8", "md")}


async def test_parsing_big_entries_yields_to_the_event_loop_every_yield_bytes() -> None:
    text = "x" * (YIELD_BYTES // 4)
    entries: list[Entry] = [(f"{n}-0".encode(), {b"participant": b"A", b"body": orjson.dumps(
        {"hd": {"event": "chat.message", "role": "A", "ts": "t"}, "bd": {"text": text}})}) for n in range(1, 17)]
    turns = 0

    async def other_room() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_room())
    await asyncio.sleep(0)
    started = turns
    shown = await messages(entries)
    other.cancel()
    assert [m["id"] for m in shown] == [f"{n}-0" for n in range(1, 17)]
    assert turns - started >= 3  # 16 entries of a quarter of YIELD_BYTES: a turn for others every 4
