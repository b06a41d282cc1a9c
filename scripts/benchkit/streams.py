"""Rooms' streams read back after a run, and each member's receipts checked against them.

Two readers with one result: XRANGE on Redis (when the run knows its URL), or the server's own
history API (``after=`` pages; the only way into the embedded store). Both give, per room, the
stored entries oldest first as ``(stream id, event)``.

The check: every member of a room connected before the first message was sent, so it must have
received every stored entry of its room from the first ``chat.message`` on (and any earlier entry
it did receive: presence entries stored before other members joined), exactly once and in stream
order. Frames without ``hd.id`` are not stored and are not part of the check.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import orjson
import redis

from server.store.keys import (
    dedupe_key,
    epoch_key,
    followers_key,
    llm_asker_key,
    llm_cancelled_key,
    llm_ended_key,
    llm_fence_key,
    llm_generations_key,
    llm_lock_key,
    llm_partial_key,
    llm_partial_text_key,
    llm_room_tokens_key,
    presence_key,
    stream_key,
)

# What a room leaves in Redis: its stream, epoch, roster and followers, its bot's lock, fence, budgets and
# partial answer, its senders' cids and its bot's per-answer keys.
ROOM_KEYS = (stream_key, epoch_key, presence_key, followers_key, llm_lock_key, llm_fence_key, llm_generations_key,
             llm_partial_key, llm_partial_text_key)
READ_COUNT = 10_000

StoredEntry = tuple[str, str]  # (stream id, hd.event)


class StreamReader(Protocol):
    def entries(self, room: str) -> list[StoredEntry]: ...

    def close(self) -> None: ...


class RedisReader:
    """XRANGE on a single Redis, or on a Redis Cluster (``cluster``: redis-py routes each room's keys to
    its shard, and splits a deletion of many keys by slot)."""

    def __init__(self, url: str, cluster: bool = False) -> None:
        self._client: redis.Redis | redis.RedisCluster = (
            redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url))

    def entries(self, room: str) -> list[StoredEntry]:
        key, start, found = stream_key(room), "-", []
        while True:
            chunk: list[tuple[bytes, dict[bytes, bytes]]] = self._client.xrange(  # type: ignore[assignment]
                key, start, "+", count=READ_COUNT)
            found += [(entry_id.decode(), _event(fields.get(b"body", b""))) for entry_id, fields in chunk]
            if len(chunk) < READ_COUNT:
                return found
            start = "(" + found[-1][0]

    def lengths(self, rooms: Iterable[str]) -> dict[str, int]:
        """Entries in each room's stream (XLEN)."""
        return {room: int(self._client.xlen(stream_key(room))) for room in rooms}

    def delete_rooms(self, rooms: Iterable[str]) -> int:
        """Delete the keys these rooms left (see ROOM_KEYS), and nothing else."""
        rooms = list(rooms)
        keys = [name(room) for room in rooms for name in ROOM_KEYS]
        keys += [key for room in rooms for pattern in _room_patterns(room)
                 for key in self._client.scan_iter(match=pattern, count=1000)]
        return sum(int(self._client.unlink(*keys[i:i + 1000])) for i in range(0, len(keys), 1000))

    def close(self) -> None:
        self._client.close()


def _room_patterns(room: str) -> list[str]:
    """The room's keys that are many: client ids, and the bot's per-answer and per-day keys."""
    tokens = llm_room_tokens_key(room, 0).rpartition(":")[0]
    return [dedupe_key(room, "*", "*"), llm_asker_key(room, "*"), llm_ended_key(room, "*"),
            llm_cancelled_key(room, "*"), f"{tokens}:*"]


def _event(body: bytes) -> str:
    try:
        envelope = orjson.loads(body)
        return str(envelope["hd"]["event"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ""


class HistoryReader:
    """The same entries through ``GET /api/chat/history/{room}?after=...`` of a running server."""

    def __init__(self, http_url: str) -> None:
        parts = urlsplit(http_url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)

    def entries(self, room: str) -> list[StoredEntry]:
        found: list[StoredEntry] = []
        after: str | None = "0"
        while after is not None:
            page = self._get(f"/api/chat/history/{quote(room)}?limit=1000&after={after}")
            if page is None:
                return found
            found += [(m["id"], m.get("event") or "") for m in page["messages"]]
            after = page["next_after"]
        return found

    def _get(self, path: str) -> dict[str, Any] | None:
        self._conn.request("GET", path)
        response = self._conn.getresponse()
        body = response.read()
        if response.status == 404:
            return None
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
        page: dict[str, Any] = orjson.loads(body)
        return page

    def close(self) -> None:
        self._conn.close()


@dataclass
class Check:
    """Receipts of the members of a set of rooms against the rooms' streams."""

    rooms: int = 0
    members: int = 0
    stored: int = 0  # entries in the rooms' streams
    accepted: int = 0  # messages sent that the server did not refuse
    lost: int = 0  # stored entries a member should have received and did not
    duplicated: int = 0  # receipts of an entry a member had already received
    reordered: int = 0  # receipts of an entry older than one received before it
    unknown: int = 0  # receipts of ids that are not in the stream
    unstored: int = 0  # accepted messages missing from the streams (negative: more stored than sent)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.unknown or self.unstored)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "rooms": self.rooms, "members": self.members, "stored": self.stored,
                "accepted": self.accepted, "lost": self.lost, "duplicated": self.duplicated,
                "reordered": self.reordered, "unknown": self.unknown, "unstored": self.unstored,
                "examples": self.examples}

    def summary(self) -> str:
        return (f"{'ok' if self.ok else 'MISMATCH'}: {self.lost} lost, {self.duplicated} duplicated, "
                f"{self.reordered} reordered, {self.unknown} unknown, {self.unstored} unstored "
                f"({self.members} members in {self.rooms} rooms; {self.stored:,} entries stored, "
                f"{self.accepted:,} messages accepted)")

    def add_room(self, room: str, stream: Sequence[StoredEntry], received: Sequence[Sequence[str]],
                 accepted: int, chat_event: str = "chat.message") -> None:
        """Check one room: ``received`` holds each member's received ids, in order of receipt;
        ``accepted`` counts its ``chat_event`` messages the server took."""
        self.rooms += 1
        self.stored += len(stream)
        self.accepted += accepted
        self.unstored += accepted - sum(1 for _, event in stream if event == chat_event)
        position = {entry_id: n for n, (entry_id, _) in enumerate(stream)}
        first_chat = next((n for n, (_, event) in enumerate(stream) if event == chat_event), len(stream))
        for member, ids in enumerate(received):
            self.members += 1
            counts = compare(stream, position, first_chat, ids)
            self.lost += counts["lost"]
            self.duplicated += counts["duplicated"]
            self.reordered += counts["reordered"]
            self.unknown += counts["unknown"]
            if any(counts.values()) and len(self.examples) < 5:
                self.examples.append({"room": room, "member": member, "received": len(ids),
                                      "stored": len(stream), **counts})


def compare(stream: Sequence[StoredEntry], position: dict[str, int], first_chat: int,
            ids: Sequence[str]) -> dict[str, int]:
    """Lost, duplicated, reordered and unknown receipts of one member (see the module docstring)."""
    seen: set[str] = set()
    duplicated = unknown = reordered = 0
    newest = -1
    for entry_id in ids:
        n = position.get(entry_id)
        if n is None:
            unknown += 1
        elif entry_id in seen:
            duplicated += 1
        else:
            seen.add(entry_id)
            if n < newest:
                reordered += 1
            newest = max(newest, n)
    start = min([first_chat, *(position[i] for i in ids[:1] if i in position)])
    lost = sum(1 for entry_id, _ in stream[start:] if entry_id not in seen)
    return {"lost": lost, "duplicated": duplicated, "reordered": reordered, "unknown": unknown}
