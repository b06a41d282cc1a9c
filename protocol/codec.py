"""Serialization of server frames, with orjson, in one place.

Broadcast frames are built once per message and the same text goes to every member. A stored
entry's ``body`` is the broadcast envelope without ``hd.id`` (the id is the entry's own stream
id, known only after the append); :func:`frame_with_id` splices the id in without re-encoding.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

_HD_PREFIX = b'{"hd":{'


_last_second: list[tuple[int, str]] = [(-1, "")]  # the last second formatted, and its text


def format_ts(ms: int) -> str:
    """UTC ISO-8601 with milliseconds: ``2025-11-22T15:30:00.123Z``."""
    seconds, millis = divmod(ms, 1000)
    cached_second, prefix = _last_second[0]
    if seconds != cached_second:  # messages come many a second: format each second once
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second[0] = (seconds, prefix)
    return f"{prefix}.{millis:03d}Z"


def stored_body(hd: dict[str, Any], bd: dict[str, Any]) -> bytes:
    """The JSON stored in an entry's ``body`` field: ``{"hd": ..., "bd": ...}``, ``hd`` first."""
    return orjson.dumps({"hd": hd, "bd": bd})


def frame_with_id(body: bytes, entry_id: str) -> str:
    """The broadcast frame for a stored ``body``: the envelope with ``hd.id`` set to ``entry_id``."""
    if body.startswith(_HD_PREFIX) and not body.startswith(b'{"hd":{}'):
        return f'{{"hd":{{"id":"{entry_id}",{body[len(_HD_PREFIX):].decode()}'
    envelope = orjson.loads(body)  # written by another tool: same result, slower path
    hd = envelope.get("hd") if isinstance(envelope, dict) else None
    if not isinstance(hd, dict):
        envelope = {"hd": {}, "bd": envelope}
        hd = envelope["hd"]
    hd["id"] = entry_id
    return orjson.dumps(envelope).decode()


def error_frame(code: str, message: str, cid: str | None = None) -> str:
    bd: dict[str, Any] = {"code": code, "message": message}
    if cid is not None:
        bd["cid"] = cid
    return orjson.dumps({"hd": {"event": "error"}, "bd": bd}).decode()
