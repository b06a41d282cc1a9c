"""Properties of the parser, for any input: an envelope or a ProtocolError, nothing else.

And what it accepts is kept exactly: the body it returns is what an exact JSON parser reads from
the frame, and it survives being stored.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ERROR_CODES, ClientEnvelope, Limits, ProtocolError, parse_frame, stored_body
from protocol.decode import MAX_INT, MIN_INT
from protocol.limits import MAX_CID_CHARS, MAX_JSON_DEPTH
from protocol.names import CLIENT_EVENTS

LIMITS = Limits(max_message_bytes=8192, max_text_chars=200)
ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
HEADERS = st.fixed_dictionaries({}, optional={
    "event": st.sampled_from([*sorted(CLIENT_EVENTS), "error", "chat.messages", ""]) | JSON_VALUES,
    "role": st.sampled_from(["A", "B", "llm", "user"]) | JSON_VALUES,
    "cid": st.text(max_size=MAX_CID_CHARS + 2) | JSON_VALUES,
    "timestamp": JSON_VALUES,
})
BODIES = st.fixed_dictionaries({}, optional={
    "text": st.text(ANY_CHAR, max_size=LIMITS.max_text_chars + 2) | JSON_VALUES,
    "prompt": st.text(ANY_CHAR, max_size=LIMITS.max_text_chars + 2) | JSON_VALUES,
    "rid": st.text(max_size=MAX_CID_CHARS + 2) | JSON_VALUES,
    "meta": JSON_VALUES,
})
ENVELOPES = st.fixed_dictionaries({}, optional={"hd": HEADERS | JSON_VALUES, "bd": BODIES | JSON_VALUES,
                                                "extra": JSON_VALUES})
BOUND_ROLES = st.sampled_from([None, "A", "B"])
PROPERTY = settings(max_examples=400, deadline=None)


def parse_or_refusal(frame: str | bytes, bound_role: str | None = None,
                     limits: Limits = LIMITS) -> ClientEnvelope | ProtocolError:
    """The parser's answer; the test fails on any exception other than ProtocolError."""
    try:
        return parse_frame(frame, limits, bound_role)
    except ProtocolError as exc:
        return exc


def check(frame: str | bytes, bound_role: str | None = None) -> ClientEnvelope | ProtocolError:
    answer = parse_or_refusal(frame, bound_role)
    if isinstance(answer, ProtocolError):
        assert answer.code in ERROR_CODES and answer.message
        assert answer.cid is None or (isinstance(answer.cid, str) and 1 <= len(answer.cid) <= MAX_CID_CHARS)
        return answer
    assert answer.role in ({bound_role} if bound_role else {"A", "B", "user"})
    assert json.loads(frame)["bd"] == answer.bd  # what an exact parser reads: nothing rounded or dropped
    assert orjson.loads(stored_body({"event": answer.event}, answer.bd))["bd"] == answer.bd  # storable as is
    return answer


@PROPERTY
@given(st.text(ANY_CHAR, max_size=200), BOUND_ROLES)
def test_any_text_gives_an_envelope_or_a_protocol_error(text: str, bound_role: str | None) -> None:
    check(text, bound_role)


@PROPERTY
@given(st.binary(max_size=200))
def test_any_bytes_give_an_envelope_or_a_protocol_error(data: bytes) -> None:
    check(data)


@PROPERTY
@given(JSON_VALUES, st.booleans())
def test_any_json_value_gives_an_envelope_or_a_protocol_error(value: Any, ensure_ascii: bool) -> None:
    check(json.dumps(value, ensure_ascii=ensure_ascii))


@PROPERTY
@given(ENVELOPES, BOUND_ROLES, st.booleans())
def test_any_envelope_shaped_value_gives_an_envelope_or_a_protocol_error(
    value: dict[str, Any], bound_role: str | None, ensure_ascii: bool
) -> None:
    frame = json.dumps(value, ensure_ascii=ensure_ascii)
    check(frame, bound_role)
    check(frame.encode("utf-8", "surrogatepass"), bound_role)


@PROPERTY
@given(st.text(ANY_CHAR, max_size=LIMITS.max_text_chars), st.integers() | st.floats(), BOUND_ROLES)
def test_a_chat_message_is_accepted_unless_its_text_or_number_is_refused(text: str, number: int | float,
                                                                         bound_role: str | None) -> None:
    frame = json.dumps({"hd": {"event": "chat.message"}, "bd": {"text": text, "n": number}})
    answer = check(frame, bound_role)
    has_surrogate = any("\ud800" <= c <= "\udfff" for c in text)
    storable = math.isfinite(number) and (isinstance(number, float) or MIN_INT <= number <= MAX_INT)
    if text.strip() and not has_surrogate and storable:
        assert isinstance(answer, ClientEnvelope)
        assert answer.bd == {"text": text, "n": number} and type(answer.bd["n"]) is type(number)
    else:
        assert isinstance(answer, ProtocolError)


@PROPERTY
@given(st.integers(0, 1500), st.sampled_from(["bd", "role", "event", "top"]), st.sampled_from("[{"))
def test_nesting_is_refused_cleanly_past_the_limit(levels: int, where: str, bracket: str) -> None:
    inner = "[" * levels + "0" + "]" * levels if bracket == "[" else '{"k": ' * levels + "0" + "}" * levels
    frame = {
        "bd": '{"hd": {"event": "chat.message"}, "bd": {"text": "hi", "x": %s}}',
        "role": '{"hd": {"event": "chat.message", "role": %s}, "bd": {"text": "hi"}}',
        "event": '{"hd": {"event": %s}, "bd": {"text": "hi"}}',
        "top": "%s",
    }[where] % inner
    answer = parse_or_refusal(frame, limits=Limits())  # 64 KiB: room for 1500 levels
    depth = levels + {"bd": 2, "role": 2, "event": 2, "top": 0}[where]
    if depth > MAX_JSON_DEPTH:
        assert isinstance(answer, ProtocolError) and answer.code == "invalid_json"
    else:
        assert not isinstance(answer, ProtocolError) or answer.code != "invalid_json"
