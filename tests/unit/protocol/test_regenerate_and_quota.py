"""``llm.regenerate`` as a client frame, ``quota_exceeded`` as an error frame, and ``regenerates`` in the
bot's frames."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from protocol.codec import error_frame, llm_error_body, llm_response_body, llm_streaming_frame
from protocol.envelope import parse_frame
from protocol.errors import ERRORS, ProtocolError
from protocol.limits import Limits
from protocol.names import CLIENT_EVENTS, Event


def _error(*args: Any, **kwargs: Any) -> str:
    """``llm.error``'s stored body, as text (what a member receives, its ``hd.id`` aside)."""
    return llm_error_body(*args, **kwargs).decode()


def test_llm_regenerate_is_a_client_event_naming_the_answer_by_its_rid() -> None:
    assert Event.LLM_REGENERATE in CLIENT_EVENTS
    envelope = parse_frame('{"hd": {"event": "llm.regenerate", "cid": "r1"}, "bd": {"rid": "g-1"}}', Limits(), "A")
    assert (envelope.event, envelope.role, envelope.cid, envelope.bd) == ("llm.regenerate", "A", "r1", {"rid": "g-1"})


@pytest.mark.parametrize("bd", ['{}', '{"rid": ""}', '{"rid": 7}', '{"rid": "' + "g" * 65 + '"}'])
def test_llm_regenerate_without_a_rid_is_an_invalid_envelope(bd: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_frame('{"hd": {"event": "llm.regenerate", "cid": "r1"}, "bd": ' + bd + '}', Limits())
    assert (refused.value.code, refused.value.cid) == ("invalid_envelope", "r1")


def test_quota_exceeded_is_a_frame_refusal_carrying_retry_after_s() -> None:
    assert "quota_exceeded" in ERRORS and ERRORS["quota_exceeded"].status is None
    refused = ProtocolError("quota_exceeded", cid="c1", retry_after_s=30)
    assert refused.retry_after_s == 30
    frame = orjson.loads(error_frame("quota_exceeded", "spent", "c1", 30))
    assert frame == {"hd": {"event": "error"},
                     "bd": {"code": "quota_exceeded", "message": "spent", "retry_after_s": 30, "cid": "c1"}}
    assert "retry_after_s" not in orjson.loads(error_frame("busy", "busy", "c1"))["bd"]


def test_every_frame_of_a_regenerated_answer_carries_regenerates_and_others_do_not() -> None:
    built: list[str | bytes] = [llm_streaming_frame("r", "g-2", "1-0", 0, "a", 1, "g-1"),
             _error("r", "g-2", "1-0", 0, "provider_error", "x", regenerates="g-1"),
             llm_response_body("r", "g-2", "1-0", 0, "a", "stop", "m", regenerates="g-1")]
    assert [orjson.loads(frame)["hd"]["regenerates"] for frame in built] == ["g-1"] * 3
    plain: list[str | bytes] = [llm_streaming_frame("r", "g-2", "1-0", 0, "a"),
                                llm_response_body("r", "g-2", "1-0", 0, "a", "stop", "m")]
    assert all("regenerates" not in orjson.loads(frame)["hd"] for frame in plain)
