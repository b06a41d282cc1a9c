"""``postman/POSTMAN_EXAMPLES.md``: there are examples of every kind, and every frame shown matches
``protocol/asyncapi.yaml``. (That a live server answers them as shown: ``tests/postman/test_examples.py``.)"""

from __future__ import annotations

import pytest

from tests.support.examples import Example, intro_frames, parse_examples
from tests.support.schemas import check_server_frame, frame_errors

EXAMPLES = parse_examples()
#: Refusals a client frame earns by its shape alone: the AsyncAPI client schemas refuse it too.
SHAPE_REFUSALS = {"invalid_json", "invalid_envelope", "unknown_event", "invalid_role", "reserved_role", "empty_text",
                  "too_large"}


def test_there_are_enough_examples_of_every_kind() -> None:
    assert len(EXAMPLES) >= 12
    events = {e.frame["hd"].get("event") for e in EXAMPLES}
    assert {"chat.message", "llm.invoke", "llm.cancel"} <= events
    codes = {a.frame["bd"]["code"] for e in EXAMPLES for a in e.answers if a.frame["hd"]["event"] == "error"}
    assert {"invalid_role", "reserved_role", "empty_text", "unknown_event", "invalid_envelope"} <= codes
    assert {"forbidden", "quota_exceeded", "unknown_generation"} <= codes  # issue 15's refusals


def test_every_frame_new_in_issue_15_has_an_example() -> None:
    answers = [a.frame for e in EXAMPLES for a in e.answers]
    assert "llm.regenerate" in {e.frame["hd"].get("event") for e in EXAMPLES}
    assert any("regenerates" in frame["hd"] for frame in answers)
    assert any(frame["hd"]["event"] == "llm.streaming" and "first_seq" in frame["hd"] for frame in answers)
    assert any(frame["bd"].get("cancelled_by") for frame in answers)
    assert any(frame["hd"]["event"] == "llm.error" and frame["bd"]["code"].startswith("provider_") for frame in answers)
    assert "llm.snapshot" in {frame["hd"]["event"] for frame in intro_frames()}


def test_the_frames_shown_before_the_examples_match_the_asyncapi_schemas() -> None:
    for frame in intro_frames():
        check_server_frame(frame)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.title for e in EXAMPLES])
def test_example_frames_match_the_asyncapi_schemas(example: Example) -> None:
    for answer in example.answers:
        # answers are stored, refusals, a piece of an answer (to learn its rid), a question waiting its turn,
        # or the llm.error of a question taken off the queue (the one llm.error that is not stored)
        hd = answer.frame["hd"]
        assert "id" in hd or hd["event"] in ("error", "llm.streaming", "llm.queued") or (
            hd["event"] == "llm.error" and answer.frame["bd"]["code"] == "cancelled")
        check_server_frame(answer.frame)
    refused = {a.frame["bd"]["code"] for a in example.answers if a.frame["hd"]["event"] == "error"}
    errors = frame_errors(example.frame, "receive")
    if refused & SHAPE_REFUSALS:
        assert errors, f"the schemas accept a frame the server refuses with {refused}"
    else:
        assert not errors
