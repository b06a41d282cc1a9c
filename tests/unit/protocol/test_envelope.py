"""The envelope parser, fed literal frames: no sockets, no event loop."""

from __future__ import annotations

import pytest

from protocol import ClientEnvelope, Limits, ProtocolError, parse_frame

LIMITS = Limits(max_message_bytes=1024, max_text_chars=20)


def refused(frame: str | bytes, bound_role: str | None = None, limits: Limits = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_frame(frame, limits, bound_role)
    return info.value


def test_chat_message_with_role_and_cid_is_accepted() -> None:
    envelope = parse_frame('{"hd": {"event": "chat.message", "role": "A", "cid": "c-17"}, "bd": {"text": "hello"}}',
                           LIMITS)
    assert envelope == ClientEnvelope(event="chat.message", role="A", cid="c-17", bd={"text": "hello"})


def test_missing_role_means_user() -> None:
    assert parse_frame('{"hd": {"event": "chat.message"}, "bd": {"text": "hi"}}', LIMITS).role == "user"


def test_bound_connection_may_omit_role() -> None:
    assert parse_frame('{"hd": {"event": "chat.message"}, "bd": {"text": "hi"}}', LIMITS, "B").role == "B"


def test_bound_connection_may_repeat_its_role() -> None:
    assert parse_frame('{"hd": {"event": "chat.message", "role": "B"}, "bd": {"text": "x"}}', LIMITS, "B").role == "B"


def test_other_body_keys_are_kept_as_sent() -> None:
    envelope = parse_frame('{"hd": {"event": "chat.message"}, "bd": {"text": "hi", "t": 12, "meta": {"k": [1]}}}',
                           LIMITS)
    assert envelope.bd == {"text": "hi", "t": 12, "meta": {"k": [1]}}


def test_client_timestamp_and_unknown_header_keys_are_ignored() -> None:
    envelope = parse_frame('{"hd": {"event": "chat.message", "timestamp": "2025-11-22T15:30:00Z", "x": 1}, '
                           '"bd": {"text": "hi"}}', LIMITS)
    assert envelope == ClientEnvelope(event="chat.message", role="user", cid=None, bd={"text": "hi"})


def test_bytes_frames_are_parsed_like_text() -> None:
    assert parse_frame(b'{"hd": {"event": "chat.message"}, "bd": {"text": "hi"}}', LIMITS).bd == {"text": "hi"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ('{"hd": {"event": "chat.message"}, "bd": {"text": "hi"}', "invalid_json"),
        ('{"hd": {"event": "chat.message"}, "bd": {"text": "\\ud800"}}', "invalid_json"),
        ("[]", "invalid_envelope"),
        ('"hello"', "invalid_envelope"),
        ("null", "invalid_envelope"),
        ('{"bd": {"text": "hi"}}', "invalid_envelope"),
        ('{"hd": [], "bd": {"text": "hi"}}', "invalid_envelope"),
        ('{"hd": {"event": "chat.message"}}', "invalid_envelope"),
        ('{"hd": {"event": "chat.message"}, "bd": "hi"}', "invalid_envelope"),
        ('{"hd": {"event": "chat.message"}, "bd": null}', "invalid_envelope"),
        ('{"hd": {"role": "A"}, "bd": {"text": "hi"}}', "invalid_envelope"),
        ('{"hd": {"event": 7}, "bd": {"text": "hi"}}', "invalid_envelope"),
        ('{"hd": {"event": "chat.message", "cid": ""}, "bd": {"text": "hi"}}', "invalid_envelope"),
        ('{"hd": {"event": "chat.message", "cid": 5}, "bd": {"text": "hi"}}', "invalid_envelope"),
        ('{"hd": {"event": "chat.message", "cid": "' + "c" * 65 + '"}, "bd": {"text": "hi"}}', "invalid_envelope"),
        ('{"hd": {"event": "chat.message"}, "bd": {"text": 5}}', "invalid_envelope"),
        ('{"hd": {"event": "chat.delete"}, "bd": {}}', "unknown_event"),
        ('{"hd": {"event": "error"}, "bd": {}}', "unknown_event"),
        ('{"hd": {"event": ""}, "bd": {}}', "unknown_event"),
        ('{"hd": {"event": "chat.message", "role": "C"}, "bd": {"text": "hi"}}', "invalid_role"),
        ('{"hd": {"event": "chat.message", "role": "user"}, "bd": {"text": "hi"}}', "invalid_role"),
        ('{"hd": {"event": "chat.message", "role": null}, "bd": {"text": "hi"}}', "invalid_role"),
        ('{"hd": {"event": "chat.message", "role": "a"}, "bd": {"text": "hi"}}', "invalid_role"),
        ('{"hd": {"event": "chat.message", "role": ["A"]}, "bd": {"text": "hi"}}', "invalid_role"),
        ('{"hd": {"event": "chat.message", "role": "llm"}, "bd": {"text": "hi"}}', "reserved_role"),
        ('{"hd": {"event": "chat.message"}, "bd": {}}', "empty_text"),
        ('{"hd": {"event": "chat.message"}, "bd": {"text": ""}}', "empty_text"),
        ('{"hd": {"event": "chat.message"}, "bd": {"text": " \\n\\t "}}', "empty_text"),
        ('{"hd": {"event": "chat.message"}, "bd": {"text": "' + "x" * 21 + '"}}', "too_large"),
        ('{"hd": {"event": "chat.message"}, "bd": {"text": "hi", "pad": "' + "x" * 1024 + '"}}', "too_large"),
    ],
)
def test_bad_frames_get_their_code(frame: str, code: str) -> None:
    assert refused(frame).code == code


def test_nesting_deeper_than_the_json_parser_allows_is_invalid_json() -> None:
    deep = '{"hd": {"event": "chat.message"}, "bd": {"text": "hi", "x": ' + "[" * 2000 + "]" * 2000 + "}}"
    assert refused(deep, limits=Limits(max_message_bytes=65536)).code == "invalid_json"


def test_text_limit_counts_characters_not_bytes() -> None:
    text = "é" * 20  # 40 bytes, 20 characters
    assert parse_frame('{"hd": {"event": "chat.message"}, "bd": {"text": "' + text + '"}}', LIMITS).bd["text"] == text


def test_frame_limit_counts_utf8_bytes() -> None:
    limits = Limits(max_message_bytes=300, max_text_chars=1000)
    frame = '{"hd": {"event": "chat.message"}, "bd": {"text": "' + "한" * 90 + '"}}'  # 90 chars, 270 bytes
    assert len(frame) < 300 < len(frame.encode())
    assert refused(frame, limits=limits).code == "too_large"


def test_role_naming_another_role_on_bound_connection_is_a_mismatch() -> None:
    assert refused('{"hd": {"event": "chat.message", "role": "A"}, "bd": {"text": "hi"}}', "B").code == "role_mismatch"


def test_reserved_role_wins_over_binding() -> None:
    error = refused('{"hd": {"event": "chat.message", "role": "llm"}, "bd": {"text": "hi"}}', "A")
    assert error.code == "reserved_role"


def test_refusals_carry_the_cid_when_it_is_valid() -> None:
    error = refused('{"hd": {"event": "chat.message", "role": "X", "cid": "c-9"}, "bd": {"text": "hi"}}')
    assert (error.code, error.cid) == ("invalid_role", "c-9")
    assert refused('{"hd": {"event": "nope", "cid": "c-1"}, "bd": {}}').cid == "c-1"
    assert refused('{"hd": {"event": "chat.message", "cid": "c-2"}, "bd": 1}').cid == "c-2"


def test_refusals_have_a_human_message() -> None:
    error = refused('{"hd": {"event": "chat.message", "role": "Z"}, "bd": {"text": "hi"}}')
    assert "'Z'" in error.message


def test_unknown_error_codes_cannot_be_raised() -> None:
    with pytest.raises(ValueError):
        ProtocolError("no_such_code")
