"""Every frame the server sends is built by protocol.codec: the bytes the server sent before the
builders moved there, and the shape protocol/asyncapi.yaml documents for the event."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol.codec import (
    error_frame,
    frame_with_id,
    llm_error_body,
    llm_queued_frame,
    llm_response_body,
    llm_snapshot_frame,
    llm_streaming_frame,
    message_body,
    presence_frame,
    session_ready_frame,
)
from protocol.errors import ERROR_CODES, LLM_ERROR_CODES
from protocol.names import Event
from tests.support.schemas import frame_errors


def _error(*args: Any, **kwargs: Any) -> str:
    """``llm.error``'s stored body, as text (what a member receives, its ``hd.id`` aside)."""
    return llm_error_body(*args, **kwargs).decode()

NOW_MS = 1763825400123  # 2025-11-22T15:30:00.123Z
ROOM, RID, REPLY_TO, ENTRY_ID = "room001", "g-5f1c2a9e0b7d3c41", "1700641234567-0", "1700641236012-0"
USAGE = {"prompt_tokens": 52, "completion_tokens": 31, "total_tokens": 83}

# Built by the server's own functions before they moved to protocol/ (session.py, dispatch.py,
# llm/worker.py), for the same input: the move must not change a byte.
FRAMES_BEFORE: list[tuple[str, str | bytes, str | bytes]] = [
    ("presence.join", presence_frame(Event.PRESENCE_JOIN, ROOM, "A", "3f9a0c1d", NOW_MS),
     '{"hd":{"event":"presence.join","role":"A","sid":"room001","conn":"3f9a0c1d","ts":"2025-11-22T15:30:00.123Z"},'
     '"bd":{}}'),
    ("presence.leave", presence_frame(Event.PRESENCE_LEAVE, ROOM, "user", "3f9a0c1d", NOW_MS),
     '{"hd":{"event":"presence.leave","role":"user","sid":"room001","conn":"3f9a0c1d",'
     '"ts":"2025-11-22T15:30:00.123Z"},"bd":{}}'),
    ("session.ready", session_ready_frame(ROOM, "B", "3f9a0c1d", "1700641234567-0", "e1", True,
                                          [("B", "3f9a0c1d"), ("A", "77aa0b1c")]),
     '{"hd":{"event":"session.ready","sid":"room001","role":"B","conn":"3f9a0c1d"},"bd":{"last_id":"1700641234567-0",'
     '"epoch":"e1","recovered":true,"members":[{"role":"B","conn":"3f9a0c1d"},{"role":"A","conn":"77aa0b1c"}],"generations":[]}}'),
    ("session.ready with a running generation",
     session_ready_frame(ROOM, "A", "3f9a0c1d", ENTRY_ID, "e1", True, [("A", "3f9a0c1d")],
                         [(RID, REPLY_TO, "running", 0)]),
     '{"hd":{"event":"session.ready","sid":"room001","role":"A","conn":"3f9a0c1d"},"bd":{"last_id":"1700641236012-0",'
     '"epoch":"e1","recovered":true,"members":[{"role":"A","conn":"3f9a0c1d"}],"generations":[{"rid":'
     '"g-5f1c2a9e0b7d3c41","reply_to":"1700641234567-0","state":"running","position":0}]}}'),
    ("session.ready with a question waiting and the bot's policies",
     session_ready_frame(ROOM, "A", "3f9a0c1d", ENTRY_ID, "e1", True, [("A", "3f9a0c1d")],
                         [(RID, REPLY_TO, "running", 0), ("g-0123456789abcdef", ENTRY_ID, "queued", 1)],
                         {"turns": "queue", "cancel": "asker"}),
     '{"hd":{"event":"session.ready","sid":"room001","role":"A","conn":"3f9a0c1d"},"bd":{"last_id":"1700641236012-0",'
     '"epoch":"e1","recovered":true,"members":[{"role":"A","conn":"3f9a0c1d"}],"generations":[{"rid":'
     '"g-5f1c2a9e0b7d3c41","reply_to":"1700641234567-0","state":"running","position":0},{"rid":"g-0123456789abcdef",'
     '"reply_to":"1700641236012-0","state":"queued","position":1}],"llm":{"turns":"queue","cancel":"asker"}}}'),
    ("session.ready of an empty room", session_ready_frame(ROOM, "B", "3f9a0c1d", None, None, False, []),
     '{"hd":{"event":"session.ready","sid":"room001","role":"B","conn":"3f9a0c1d"},"bd":{"last_id":null,"epoch":null,'
     '"recovered":false,"members":[],"generations":[]}}'),
    ("error", error_frame("empty_text", "bd.text must be a non-empty string.", "c-1"),
     '{"hd":{"event":"error"},"bd":{"code":"empty_text","message":"bd.text must be a non-empty string.","cid":"c-1"}}'),
    ("chat.message", message_body(Event.CHAT_MESSAGE, "A", ROOM, NOW_MS, "c-17", {"text": 'héllo \u2028 "q"'}),
     b'{"hd":{"event":"chat.message","role":"A","sid":"room001","ts":"2025-11-22T15:30:00.123Z","cid":"c-17"},'
     b'"bd":{"text":"h\xc3\xa9llo \xe2\x80\xa8 \\"q\\""}}'),
    ("llm.invoke without cid", message_body(Event.LLM_INVOKE, "user", ROOM, NOW_MS, None, {}),
     b'{"hd":{"event":"llm.invoke","role":"user","sid":"room001","ts":"2025-11-22T15:30:00.123Z"},"bd":{}}'),
    ("llm.streaming", llm_streaming_frame(ROOM, RID, REPLY_TO, 0, "A stream"),
     '{"hd":{"event":"llm.streaming","role":"llm","sid":"room001","rid":"g-5f1c2a9e0b7d3c41",'
     '"reply_to":"1700641234567-0","seq":0,"first_seq":0},"bd":{"delta":"A stream"}}'),
    ("llm.streaming, second attempt", llm_streaming_frame(ROOM, RID, REPLY_TO, 3, " is", 2),
     '{"hd":{"event":"llm.streaming","role":"llm","sid":"room001","rid":"g-5f1c2a9e0b7d3c41",'
     '"reply_to":"1700641234567-0","seq":3,"first_seq":3,"attempt":2},"bd":{"delta":" is"}}'),
    ("llm.snapshot", llm_snapshot_frame(ROOM, RID, REPLY_TO, 4, "A stream is"),
     '{"hd":{"event":"llm.snapshot","role":"llm","sid":"room001","rid":"g-5f1c2a9e0b7d3c41",'
     '"reply_to":"1700641234567-0","seq":4},"bd":{"text":"A stream is"}}'),
    ("llm.snapshot, second attempt", llm_snapshot_frame(ROOM, RID, REPLY_TO, 0, "A", 2),
     '{"hd":{"event":"llm.snapshot","role":"llm","sid":"room001","rid":"g-5f1c2a9e0b7d3c41",'
     '"reply_to":"1700641234567-0","seq":0,"attempt":2},"bd":{"text":"A"}}'),
    ("llm.queued", llm_queued_frame(ROOM, RID, REPLY_TO, 2),
     '{"hd":{"event":"llm.queued","role":"llm","sid":"room001","rid":"g-5f1c2a9e0b7d3c41",'
     '"reply_to":"1700641234567-0","position":2},"bd":{}}'),
    ("llm.queued, regenerating", llm_queued_frame(ROOM, RID, REPLY_TO, 1, "g-0123456789abcdef"),
     '{"hd":{"event":"llm.queued","role":"llm","sid":"room001","rid":"g-5f1c2a9e0b7d3c41",'
     '"reply_to":"1700641234567-0","position":1,"regenerates":"g-0123456789abcdef"},"bd":{}}'),
    ("llm.error", llm_error_body(ROOM, RID, REPLY_TO, NOW_MS, "provider_timeout",
                                 LLM_ERROR_CODES["provider_timeout"]),
     b'{"hd":{"event":"llm.error","role":"llm","sid":"room001","ts":"2025-11-22T15:30:00.123Z",'
     b'"rid":"g-5f1c2a9e0b7d3c41","reply_to":"1700641234567-0"},'
     b'"bd":{"code":"provider_timeout","message":"The LLM provider did not finish answering in time."}}'),
    ("llm.error, second attempt", llm_error_body(ROOM, RID, REPLY_TO, NOW_MS, "provider_error", "x", attempt=2),
     b'{"hd":{"event":"llm.error","role":"llm","sid":"room001","ts":"2025-11-22T15:30:00.123Z",'
     b'"rid":"g-5f1c2a9e0b7d3c41","reply_to":"1700641234567-0","attempt":2},"bd":{"code":"provider_error",'
     b'"message":"x"}}'),
    ("llm.response", llm_response_body(ROOM, RID, REPLY_TO, NOW_MS, "A stream is ...", "stop", "gpt-4o-mini", USAGE),
     b'{"hd":{"event":"llm.response","role":"llm","sid":"room001","ts":"2025-11-22T15:30:00.123Z",'
     b'"rid":"g-5f1c2a9e0b7d3c41","reply_to":"1700641234567-0"},"bd":{"text":"A stream is ...","finish_reason":"stop",'
     b'"model":"gpt-4o-mini","usage":{"prompt_tokens":52,"completion_tokens":31,"total_tokens":83}}}'),
    ("llm.response cancelled, without usage, second attempt",
     llm_response_body(ROOM, RID, REPLY_TO, NOW_MS, "", "cancelled", "scripted-1", None, 2),
     b'{"hd":{"event":"llm.response","role":"llm","sid":"room001","ts":"2025-11-22T15:30:00.123Z",'
     b'"rid":"g-5f1c2a9e0b7d3c41","reply_to":"1700641234567-0","attempt":2},'
     b'"bd":{"text":"","finish_reason":"cancelled","model":"scripted-1"}}'),
]


NAMES = [name for name, _, _ in FRAMES_BEFORE]


@pytest.mark.parametrize(("built", "before"), [(b, e) for _, b, e in FRAMES_BEFORE], ids=NAMES)
def test_each_builder_sends_the_bytes_the_server_sent_before(built: str | bytes, before: str | bytes) -> None:
    assert type(built) is type(before)
    assert built == before


def on_the_wire(built: str | bytes) -> Any:
    """The frame a member receives: a stored body (bytes) gets its entry's id spliced in."""
    return orjson.loads(frame_with_id(built, ENTRY_ID) if isinstance(built, bytes) else built)


@pytest.mark.parametrize("built", [b for _, b, _ in FRAMES_BEFORE], ids=NAMES)
def test_each_frame_has_the_shape_the_asyncapi_document_gives_its_event(built: str | bytes) -> None:
    assert frame_errors(on_the_wire(built), "send") == []


def test_stored_events_are_the_bodies_and_the_others_are_text_frames() -> None:
    stored = {orjson.loads(b)["hd"]["event"] for _, b, _ in FRAMES_BEFORE if isinstance(b, bytes)}
    assert stored == {Event.CHAT_MESSAGE, Event.LLM_INVOKE, Event.LLM_RESPONSE, Event.LLM_ERROR}
    sent = {orjson.loads(b)["hd"]["event"] for _, b, _ in FRAMES_BEFORE}
    assert sent == {str(event) for event in Event} - {Event.LLM_CANCEL, Event.LLM_REGENERATE}  # each has a builder


def test_a_stored_message_keeps_the_client_body_as_sent() -> None:
    bd = {"text": "hi", "extra": {"n": [1, 2.5, None]}}
    assert orjson.loads(message_body(Event.CHAT_MESSAGE, "B", ROOM, NOW_MS, None, bd))["bd"] == bd


def test_presence_and_messages_are_stamped_with_the_given_time() -> None:
    presence = presence_frame(Event.PRESENCE_JOIN, ROOM, "A", "c", 0)
    assert orjson.loads(presence)["hd"]["ts"] == "1970-01-01T00:00:00.000Z"
    body = message_body(Event.CHAT_MESSAGE, "A", ROOM, 1763825400007, None, {"text": "x"})
    assert orjson.loads(body)["hd"]["ts"] == "2025-11-22T15:30:00.007Z"


def test_error_frames_carry_a_cid_only_when_given() -> None:
    assert orjson.loads(error_frame("invalid_json", ERROR_CODES["invalid_json"]))["bd"] == {
        "code": "invalid_json", "message": ERROR_CODES["invalid_json"]}


def test_the_first_attempt_of_a_generation_has_no_attempt_field() -> None:
    assert "attempt" not in orjson.loads(llm_streaming_frame(ROOM, RID, REPLY_TO, 0, "x", 1))["hd"]
    assert "attempt" not in orjson.loads(_error(ROOM, RID, REPLY_TO, NOW_MS, "provider_error", "x"))["hd"]
    body = llm_response_body(ROOM, RID, REPLY_TO, NOW_MS, "", "error", "m", attempt=3)
    assert orjson.loads(body)["hd"]["attempt"] == 3
