"""Stored entries as the HTTP API shows them: history messages, and whole-room exports.

A history message is ``{"id", "participant", "event", "ts", "hd", "bd"}`` where ``hd`` and ``bd``
are exactly the broadcast envelope members received (``hd`` with its ``id``): the entry's body
with the id spliced in by :func:`protocol.codec.frame_with_id`.

Exports are rendered chunk by chunk, as the stream is read, and never held whole in memory. Parsing
big entries takes a while: pages and exports yield to the event loop every :data:`YIELD_BYTES` of
entries parsed, so other rooms' frames go on meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from protocol.codec import frame_with_id
from server.store.ports import Entry

Chunks = AsyncIterable[list[Entry]]


@dataclass(frozen=True, slots=True)
class Export:
    media_type: str
    extension: str
    render: Callable[[str, Chunks], AsyncIterator[bytes]]


YIELD_BYTES = 256 * 1024  # entries parsed between two yields to the event loop


async def messages(entries: list[Entry]) -> list[dict[str, Any]]:
    """The history messages of ``entries``, yielding to the event loop every :data:`YIELD_BYTES`."""
    shown, parsed = [], 0
    for entry in entries:
        shown.append(message(entry))
        parsed += len(entry[1].get(b"body", b""))
        if parsed >= YIELD_BYTES:
            parsed = 0
            await asyncio.sleep(0)
    return shown


def message(entry: Entry) -> dict[str, Any]:
    entry_id, fields = entry[0].decode(), entry[1]
    body = fields.get(b"body", b"{}")
    envelope = orjson.loads(body)
    hd = envelope.get("hd") if isinstance(envelope, dict) else None
    if isinstance(hd, dict):  # ours: hd first; the broadcast's hd starts with the id
        hd = {"id": entry_id, **hd}
        bd = envelope.get("bd")
    else:  # written by another tool: shaped as frame_with_id does for members
        envelope = orjson.loads(frame_with_id(body, entry_id))
        hd, bd = envelope["hd"], envelope.get("bd")
    participant = fields.get(b"participant", b"").decode()
    return {"id": entry_id, "participant": participant, "event": hd.get("event"), "ts": hd.get("ts"),
            "hd": hd, "bd": bd}


async def json_export(sid: str, chunks: Chunks) -> AsyncIterator[bytes]:
    """``{"sid": ..., "messages": [...]}``, written one chunk of messages at a time."""
    yield b'{"sid":' + orjson.dumps(sid) + b',"messages":['
    separator = b""
    async for chunk in chunks:
        yield separator + b",".join(orjson.dumps(shown) for shown in await messages(chunk))
        separator = b","
    yield b"]}"


async def markdown_export(sid: str, chunks: Chunks) -> AsyncIterator[bytes]:
    """A title, then one section per message: ``### <role> · <ts>`` and its text."""
    yield f"# Chat history: {sid}\n".encode()
    async for chunk in chunks:
        yield "".join(markdown_section(shown) for shown in await messages(chunk)).encode()


def markdown_section(message: dict[str, Any]) -> str:
    bd = message["bd"]
    text = bd.get("text") if isinstance(bd, dict) else None
    if not isinstance(text, str):  # not a chat message: show its body as it is
        text = "```json\n" + orjson.dumps(bd).decode() + "\n```"
    return f"\n### {message['participant']} · {message['ts']}\n\n{text}\n"


EXPORTS: dict[str, Export] = {
    "json": Export("application/json", "json", json_export),
    "markdown": Export("text/markdown; charset=utf-8", "md", markdown_export),
}
