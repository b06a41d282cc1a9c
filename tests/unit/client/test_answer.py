"""Answer: deltas merged by seq, snapshots, a generation that starts over, the final text."""

from __future__ import annotations

from typing import Any

from client.answer import Answer


def delta(seq: int, text: str, attempt: int = 1) -> dict[str, Any]:
    hd: dict[str, Any] = {"event": "llm.streaming", "rid": "g", "reply_to": "1-0", "seq": seq}
    if attempt > 1:
        hd["attempt"] = attempt
    return {"hd": hd, "bd": {"delta": text}}


def snapshot(seq: int, text: str, attempt: int = 1) -> dict[str, Any]:
    hd: dict[str, Any] = {"event": "llm.snapshot", "rid": "g", "reply_to": "1-0", "seq": seq}
    if attempt > 1:
        hd["attempt"] = attempt
    return {"hd": hd, "bd": {"text": text}}


def response(text: str) -> dict[str, Any]:
    return {"hd": {"id": "2-0", "event": "llm.response", "rid": "g", "reply_to": "1-0"},
            "bd": {"text": text, "finish_reason": "stop"}}


def texts(answer: Answer, *frames: dict[str, Any]) -> list[str]:
    """The text after each frame that changed it."""
    return [answer.text for frame in frames if answer.apply(frame)]


def test_deltas_in_order_grow_the_text() -> None:
    assert texts(Answer(), delta(0, "A "), delta(1, "stream"), delta(2, " is")) == ["A ", "A stream", "A stream is"]


def test_a_delta_after_a_gap_waits_for_the_ones_before_it() -> None:
    answer = Answer()
    assert texts(answer, delta(0, "a"), delta(2, "c"), delta(3, "d")) == ["a"]
    assert texts(answer, delta(1, "b")) == ["abcd"]


def test_a_delta_seen_twice_counts_once() -> None:
    assert texts(Answer(), delta(0, "a"), delta(0, "a"), delta(1, "b")) == ["a", "ab"]


def test_a_snapshot_stands_for_the_deltas_up_to_its_seq() -> None:
    answer = Answer()
    assert texts(answer, snapshot(2, "abc"), delta(1, "b"), delta(2, "c"), delta(3, "d")) == ["abc", "abcd"]


def test_a_snapshot_fills_a_gap_and_the_deltas_after_it_follow() -> None:
    answer = Answer()
    assert texts(answer, delta(0, "a"), delta(3, "d"), snapshot(2, "abc")) == ["a", "abcd"]


def test_an_older_snapshot_changes_nothing() -> None:
    answer = Answer()
    assert texts(answer, delta(0, "a"), delta(1, "b"), delta(2, "c"), snapshot(0, "a")) == ["a", "ab", "abc"]


def test_a_restarted_generation_discards_the_partial_text() -> None:
    answer = Answer()
    assert texts(answer, delta(0, "old "), delta(1, "text"), delta(0, "new", attempt=2)) == [
        "old ", "old text", "new"]
    assert answer.attempt == 2
    assert texts(answer, delta(2, "late frame of attempt 1"), delta(1, " one", attempt=2)) == ["new one"]


def test_a_restart_announced_by_a_snapshot() -> None:
    answer = Answer()
    assert texts(answer, delta(0, "old"), snapshot(1, "fresh", attempt=3)) == ["old", "fresh"]


def test_the_response_is_the_final_text_and_ends_the_answer() -> None:
    answer = Answer()
    assert texts(answer, delta(0, "a"), delta(2, "c"), response("abc")) == ["a", "abc"]
    assert answer.final == response("abc")
    assert texts(answer, delta(1, "b"), delta(3, "d")) == []
