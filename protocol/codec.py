"""Serialization of server frames, with orjson, in one place: a builder per frame the server sends.

Builders take plain values (room, role, ids, a timestamp in milliseconds...) and return the frame's
text (or, for stored events, the entry's ``body`` bytes); each builds one dict and encodes it once.

- ``session.ready``: :func:`session_ready_frame`; ``presence.join`` / ``presence.leave``:
  :func:`presence_frame`; ``error``: :func:`error_frame`.
- ``chat.message`` and ``llm.invoke`` are stored: :func:`message_body` is the entry's ``body``.
- The bot's: ``llm.streaming``: :func:`llm_streaming_frame` (and :func:`merged_streaming_frame`, for
  consecutive deltas merged by :mod:`protocol.deltas`); ``llm.snapshot``: :func:`llm_snapshot_frame`;
  ``llm.error``: :func:`llm_error_body`;
  ``llm.response`` is stored: :func:`llm_response_body`.

Broadcast frames are built once per message and the same text goes to every member. A stored
entry's ``body`` is the broadcast envelope without ``hd.id`` (the id is the entry's own stream
id, known only after the append); :func:`frame_with_id` splices the id in without re-encoding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from protocol.names import LLM_ROLE, Event

_HD_PREFIX = b'{"hd":{'
#: How every ``llm.streaming`` frame the server builds begins (``hd`` first, ``event`` first in it): the
#: relay tells deltas from other unstored frames by it, with no parse.
LLM_STREAMING_PREFIX = '{"hd":{"event":"llm.streaming",'


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


def error_frame(code: str, message: str, cid: str | None = None, retry_after_s: int | None = None) -> str:
    """``error``: a refusal of one client frame (a code of :data:`protocol.errors.ERRORS`), to its sender;
    ``retry_after_s``: the seconds until asking again may succeed (``quota_exceeded``)."""
    bd: dict[str, Any] = {"code": code, "message": message}
    if retry_after_s is not None:
        bd["retry_after_s"] = retry_after_s
    if cid is not None:
        bd["cid"] = cid
    return orjson.dumps({"hd": {"event": Event.ERROR}, "bd": bd}).decode()


def session_ready_frame(room: str, role: str, conn: str, last_id: str | None, epoch: str | None, recovered: bool,
                        members: Iterable[tuple[str, str]],
                        generations: Iterable[tuple[str, str, str, int]] = (),
                        bot: Mapping[str, str] | None = None) -> str:
    """``session.ready`` for connection ``conn`` (bound to ``role``): the room's newest id (None: no
    entry yet), its stream's epoch, whether the resume is complete, the ``(role, conn)`` of every
    member present, and the room's questions the bot is answering (or will), ``(rid, reply_to,
    state, position)``: ``running`` at position 0, then the ``queued`` ones; ``bot``: the bot's policies
    (``{"turns", "cancel"}``: ``LLM_TURNS``, ``LLM_CANCEL``), for a client to show what a member may do."""
    bd: dict[str, Any] = {"last_id": last_id, "epoch": epoch, "recovered": recovered,
                          "members": [{"role": r, "conn": c} for r, c in members],
                          "generations": [{"rid": rid, "reply_to": reply_to, "state": state, "position": position}
                                          for rid, reply_to, state, position in generations]}
    if bot is not None:
        bd["llm"] = dict(bot)
    hd = {"event": Event.SESSION_READY, "sid": room, "role": role, "conn": conn}
    return orjson.dumps({"hd": hd, "bd": bd}).decode()


def presence_frame(event: str, room: str, role: str, conn: str, now_ms: int) -> str:
    """``presence.join`` or ``presence.leave`` (``event``) of connection ``conn``, as ``role``."""
    hd = {"event": event, "role": role, "sid": room, "conn": conn, "ts": format_ts(now_ms)}
    return orjson.dumps({"hd": hd, "bd": {}}).decode()


def message_body(event: str, role: str, room: str, now_ms: int, cid: str | None, bd: dict[str, Any]) -> bytes:
    """The stored ``body`` of an accepted client message (``chat.message``, ``llm.invoke``): the
    client's event, role, cid and body, with the room and the server's timestamp."""
    hd: dict[str, Any] = {"event": event, "role": role, "sid": room, "ts": format_ts(now_ms)}
    if cid is not None:
        hd["cid"] = cid
    return orjson.dumps({"hd": hd, "bd": bd})


def _generation_header(event: str, room: str, rid: str, reply_to: str, now_ms: int, attempt: int,
                       regenerates: str = "") -> dict[str, Any]:
    hd: dict[str, Any] = {"event": event, "role": LLM_ROLE, "sid": room, "ts": format_ts(now_ms), "rid": rid,
                          "reply_to": reply_to}
    if attempt > 1:
        hd["attempt"] = attempt
    if regenerates:
        hd["regenerates"] = regenerates
    return hd


def llm_streaming_frame(room: str, rid: str, reply_to: str, seq: int, delta: str, attempt: int = 1,
                        regenerates: str = "") -> str:
    """``llm.streaming``: text delta ``seq`` (from 0) of generation ``rid``, which answers entry ``reply_to``;
    ``attempt`` > 1 when the generation started over on another worker; ``regenerates``: the rid of the answer
    it gives again (``llm.regenerate``). ``first_seq`` is ``seq``: one delta."""
    hd: dict[str, Any] = {"event": Event.LLM_STREAMING, "role": LLM_ROLE, "sid": room, "rid": rid,
                          "reply_to": reply_to, "seq": seq, "first_seq": seq}
    if attempt > 1:
        hd["attempt"] = attempt
    if regenerates:
        hd["regenerates"] = regenerates
    return orjson.dumps({"hd": hd, "bd": {"delta": delta}}).decode()


def llm_snapshot_frame(room: str, rid: str, reply_to: str, seq: int, text: str, attempt: int = 1) -> str:
    """``llm.snapshot``: the text of running generation ``rid``'s deltas 0 to ``seq`` joined, for a member
    that joins (or resumes) while it streams; its ``llm.streaming`` frames after ``seq`` follow."""
    hd: dict[str, Any] = {"event": Event.LLM_SNAPSHOT, "role": LLM_ROLE, "sid": room, "rid": rid,
                          "reply_to": reply_to, "seq": seq}
    if attempt > 1:
        hd["attempt"] = attempt
    return orjson.dumps({"hd": hd, "bd": {"text": text}}).decode()


def llm_queued_frame(room: str, rid: str, reply_to: str, position: int, regenerates: str = "") -> str:
    """``llm.queued``: the question ``reply_to`` waits for its turn (``LLM_TURNS=queue``); generation ``rid``
    will answer it once the ``position`` questions ahead of it (the running one counted) are answered."""
    hd: dict[str, Any] = {"event": Event.LLM_QUEUED, "role": LLM_ROLE, "sid": room, "rid": rid,
                          "reply_to": reply_to, "position": position}
    if regenerates:
        hd["regenerates"] = regenerates
    return orjson.dumps({"hd": hd, "bd": {}}).decode()


def merged_streaming_frame(hd: dict[str, Any], first_seq: int, seq: int, delta: str) -> str:
    """``llm.streaming`` for deltas ``first_seq`` to ``seq`` of one generation, merged: ``hd`` is the first
    one's header (its other fields, in their order), ``delta`` their texts joined."""
    return orjson.dumps({"hd": {**hd, "seq": seq, "first_seq": first_seq}, "bd": {"delta": delta}}).decode()


def llm_error_body(room: str, rid: str, reply_to: str, now_ms: int, code: str, message: str,
                   attempt: int = 1, cancelled_by: str | None = None, regenerates: str = "") -> bytes:
    """The stored ``body`` of ``llm.error``: generation ``rid`` ended without any text (``code``: one of
    :data:`protocol.errors.LLM_ERROR_CODES`); ``cancelled_by``: the role whose ``llm.cancel`` ended it
    (code ``cancelled``); ``regenerates``: as for :func:`llm_streaming_frame`. Stored like an answer, so
    that every member, a late one and one that resumes included, hears how the question ended."""
    hd = _generation_header(Event.LLM_ERROR, room, rid, reply_to, now_ms, attempt, regenerates)
    bd: dict[str, Any] = {"code": code, "message": message}
    if cancelled_by:
        bd["cancelled_by"] = cancelled_by
    return orjson.dumps({"hd": hd, "bd": bd})


def llm_response_body(room: str, rid: str, reply_to: str, now_ms: int, text: str, finish_reason: str, model: str,
                      usage: dict[str, int] | None = None, attempt: int = 1,
                      error: tuple[str, str] | None = None, cancelled_by: str | None = None,
                      regenerates: str = "") -> bytes:
    """The stored ``body`` of ``llm.response``: generation ``rid``'s whole text and how it ended
    (``stop``, ``length``, ``cancelled``, ``error``); ``usage`` when the provider reported it; ``error``
    (``code``, ``message``: one of :data:`protocol.errors.LLM_ERROR_CODES`) for an answer cut by a
    failure, which it ends (no ``llm.error`` follows); ``cancelled_by``, the role whose ``llm.cancel``
    stopped it (``finish_reason`` ``cancelled``); ``regenerates``, the rid of the answer it gives again."""
    hd = _generation_header(Event.LLM_RESPONSE, room, rid, reply_to, now_ms, attempt, regenerates)
    bd: dict[str, Any] = {"text": text, "finish_reason": finish_reason, "model": model}
    if usage is not None:
        bd["usage"] = usage
    if error is not None:
        bd["error"] = {"code": error[0], "message": error[1]}
    if cancelled_by:
        bd["cancelled_by"] = cancelled_by
    return orjson.dumps({"hd": hd, "bd": bd})
