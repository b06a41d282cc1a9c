"""Server frames: built once, the stream id spliced in, timestamps in UTC with milliseconds."""

from __future__ import annotations

import orjson

from protocol.codec import error_frame, format_ts, frame_with_id, stored_body


def test_timestamps_are_utc_iso8601_with_milliseconds() -> None:
    assert format_ts(1763825400123) == "2025-11-22T15:30:00.123Z"
    assert format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert format_ts(1763825400007) == "2025-11-22T15:30:00.007Z"


def test_stored_body_puts_the_header_first() -> None:
    body = stored_body({"event": "chat.message", "role": "A"}, {"text": "hi"})
    assert body == b'{"hd":{"event":"chat.message","role":"A"},"bd":{"text":"hi"}}'


def test_frame_with_id_adds_the_entry_id_to_the_header() -> None:
    hd = {"event": "chat.message", "role": "A", "sid": "room001", "ts": "2025-11-22T15:30:00.123Z", "cid": "c-17"}
    bd = {"text": "hello \"quoted\" ☃", "n": [1, 2]}
    frame = frame_with_id(stored_body(hd, bd), "1700641234567-0")
    assert orjson.loads(frame) == {"hd": {**hd, "id": "1700641234567-0"}, "bd": bd}


def test_frame_with_id_reads_bodies_written_by_other_tools() -> None:
    frame = frame_with_id(b'{"bd": {"text": "x"}, "hd": {"event": "chat.message"}}', "1-0")
    assert orjson.loads(frame) == {"hd": {"event": "chat.message", "id": "1-0"}, "bd": {"text": "x"}}
    assert orjson.loads(frame_with_id(b'{"hd":{},"bd":{}}', "2-0")) == {"hd": {"id": "2-0"}, "bd": {}}


def test_error_frame_carries_code_message_and_cid() -> None:
    assert orjson.loads(error_frame("empty_text", "no text", "c-1")) == {
        "hd": {"event": "error"}, "bd": {"code": "empty_text", "message": "no text", "cid": "c-1"}}
    assert "cid" not in orjson.loads(error_frame("invalid_json", "bad"))["bd"]
