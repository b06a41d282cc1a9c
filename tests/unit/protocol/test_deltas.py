"""protocol.deltas: which ``llm.streaming`` frames merge, and the frame a merge makes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol.codec import LLM_STREAMING_PREFIX, llm_streaming_frame, merged_streaming_frame
from protocol.deltas import DeltaFrame, DeltaRun, parse_delta
from tests.support.schemas import frame_errors

ROOM, RID, REPLY_TO = "room001", "g-5f1c2a9e0b7d3c41", "1700641234567-0"


def delta(seq: int, text: str, attempt: int = 1, rid: str = RID) -> DeltaFrame:
    return DeltaFrame(llm_streaming_frame(ROOM, rid, REPLY_TO, seq, text, attempt))


def merged(*frames: DeltaFrame) -> dict[str, Any] | None:
    """The frame of ``frames`` merged in order, parsed; None when one of them does not continue the run."""
    run = DeltaRun.joining(frames[0], frames[1])
    if run is None or not all(run.add(frame) for frame in frames[2:]):
        return None
    result: dict[str, Any] = orjson.loads(str(run.frame()))  # orjson reads exact str only
    return result


def test_every_streaming_frame_starts_with_the_prefix_and_carries_first_seq_equal_to_seq() -> None:
    for attempt in (1, 2):
        frame = llm_streaming_frame(ROOM, RID, REPLY_TO, 7, "x", attempt)
        assert frame.startswith(LLM_STREAMING_PREFIX)
        hd = orjson.loads(frame)["hd"]
        assert hd["first_seq"] == hd["seq"] == 7


def test_consecutive_deltas_of_one_generation_merge_into_one_frame() -> None:
    frame = merged(delta(0, "A"), delta(1, " stream"), delta(2, " is"))
    assert frame == {"hd": {"event": "llm.streaming", "role": "llm", "sid": ROOM, "rid": RID, "reply_to": REPLY_TO,
                            "seq": 2, "first_seq": 0},
                     "bd": {"delta": "A stream is"}}


def test_the_merged_frame_has_the_documented_shape() -> None:
    run = DeltaRun.joining(delta(3, "a", attempt=2), delta(4, "b", attempt=2))
    assert run is not None
    assert frame_errors(orjson.loads(str(run.frame())), "send") == []
    assert type(run.frame()) is DeltaFrame  # still a delta: a later merge may take it in


def test_a_merge_continues_a_frame_that_was_merged_before() -> None:
    first = DeltaFrame(merged_streaming_frame(orjson.loads(str(delta(0, "x")))["hd"], 0, 4, "01234"))
    assert merged(first, delta(5, "5"), delta(6, "6")) == {
        "hd": {"event": "llm.streaming", "role": "llm", "sid": ROOM, "rid": RID, "reply_to": REPLY_TO,
               "seq": 6, "first_seq": 0}, "bd": {"delta": "0123456"}}


def test_the_first_seq_of_a_merge_is_the_previous_seq_plus_one_only() -> None:
    assert merged(delta(0, "a"), delta(2, "c")) is None  # a gap: deltas are never skipped
    assert merged(delta(1, "b"), delta(1, "b")) is None  # a repeat
    assert merged(delta(2, "c"), delta(1, "b")) is None  # out of order
    run = DeltaRun.joining(delta(0, "a"), delta(1, "b"))
    assert run is not None and not run.add(delta(3, "d")) and run.add(delta(2, "c"))
    assert (run.first_seq, run.seq) == (0, 2)


def test_deltas_of_two_attempts_are_never_merged() -> None:
    assert merged(delta(0, "first try", attempt=1), delta(1, "second", attempt=2)) is None
    assert merged(delta(4, "a", attempt=2), delta(5, "b", attempt=3)) is None
    assert merged(delta(4, "a", attempt=2), delta(5, "b", attempt=2)) is not None


def test_deltas_of_two_generations_are_never_merged() -> None:
    assert merged(delta(0, "a", rid="g-1"), delta(1, "b", rid="g-2")) is None
    other_question = DeltaFrame(llm_streaming_frame(ROOM, RID, "1700641234999-0", 1, "b"))
    assert merged(delta(0, "a"), other_question) is None
    other_room = DeltaFrame(llm_streaming_frame("room002", RID, REPLY_TO, 1, "b"))
    assert merged(delta(0, "a"), other_room) is None


def test_a_header_field_the_relay_does_not_know_is_kept_and_must_match() -> None:
    def tagged(seq: int, tag: str) -> DeltaFrame:
        hd = {**orjson.loads(str(delta(seq, "")))["hd"], "regenerates": tag}
        return DeltaFrame(merged_streaming_frame(hd, seq, seq, str(seq)))

    frame = merged(tagged(0, "g-0"), tagged(1, "g-0"))
    assert frame is not None and frame["hd"]["regenerates"] == "g-0" and frame["bd"]["delta"] == "01"
    assert merged(tagged(0, "g-0"), tagged(1, "g-9")) is None


@pytest.mark.parametrize("text", [
    "not json",
    "[]",
    '{"hd":{"event":"llm.streaming","seq":0},"bd":{"delta":"x"},"extra":1}',
    '{"hd":{"event":"llm.response","seq":0},"bd":{"delta":"x"}}',
    '{"hd":{"event":"llm.streaming","seq":"0"},"bd":{"delta":"x"}}',
    '{"hd":{"event":"llm.streaming","seq":true},"bd":{"delta":"x"}}',
    '{"hd":{"event":"llm.streaming","seq":1,"first_seq":2},"bd":{"delta":"x"}}',
    '{"hd":{"event":"llm.streaming","seq":1,"first_seq":-1},"bd":{"delta":"x"}}',
    '{"hd":{"event":"llm.streaming","seq":0},"bd":{"delta":1}}',
    '{"hd":{"event":"llm.streaming","seq":0},"bd":{"delta":"x","more":1}}',
    '{"hd":[],"bd":{"delta":"x"}}',
])
def test_a_frame_that_is_not_a_delta_of_the_documented_shape_merges_with_nothing(text: str) -> None:
    assert parse_delta(text) is None
    assert DeltaFrame(text).delta is None
    assert DeltaRun.joining(DeltaFrame(text), delta(1, "x")) is None
    assert DeltaRun.joining(delta(0, "x"), DeltaFrame(text.replace('"seq":0', '"seq":1'))) is None


def test_a_frame_without_first_seq_reads_as_one_delta() -> None:
    parsed = parse_delta('{"hd":{"event":"llm.streaming","rid":"g","seq":3},"bd":{"delta":"x"}}')
    assert parsed is not None and (parsed.first_seq, parsed.seq, parsed.text) == (3, 3, "x")


def test_a_delta_frame_is_the_frame_text_and_is_parsed_once() -> None:
    text = llm_streaming_frame(ROOM, RID, REPLY_TO, 0, "x")
    frame = DeltaFrame(text)
    assert frame == text and frame.encode() == text.encode()
    assert frame.delta is frame.delta
