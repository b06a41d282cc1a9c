"""A room's stream as the tests read it back through ``rdb`` (the conftest's redis-py client, which
decodes replies): typed, for the checks that compare it with what the clients received."""

from __future__ import annotations

import redis

Entry = tuple[str, dict[str, str]]


def _entries(reply: object) -> list[Entry]:
    assert isinstance(reply, list), reply
    entries = []
    for entry_id, fields in reply:
        assert isinstance(entry_id, str) and isinstance(fields, dict), "rdb decodes replies to str"
        entries.append((entry_id, fields))
    return entries


def xrange(rdb: redis.Redis, key: str, start: str = "-", end: str = "+", count: int | None = None) -> list[Entry]:
    """``XRANGE key start end [COUNT count]``: entries oldest first."""
    return _entries(rdb.xrange(key, start, end, count))


def xrevrange(rdb: redis.Redis, key: str, end: str = "+", start: str = "-", count: int | None = None) -> list[Entry]:
    """``XREVRANGE key end start [COUNT count]``: entries newest first."""
    return _entries(rdb.xrevrange(key, end, start, count))
