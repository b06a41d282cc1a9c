"""Which JSON a frame may carry: nesting and integer range, at their edges."""

from __future__ import annotations

import orjson
import pytest

from protocol import Limits, ProtocolError, parse_frame, stored_body
from protocol.decode import MAX_INT, MIN_INT, decode_json
from protocol.limits import MAX_JSON_DEPTH

LIMITS = Limits()


def body_with(raw_json: str) -> str:
    return '{"hd": {"event": "chat.message"}, "bd": {"text": "hi", "x": ' + raw_json + "}}"


def refused(frame: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_json(frame)
    return info.value


def test_nesting_up_to_the_limit_is_accepted_and_storable() -> None:
    levels = MAX_JSON_DEPTH - 2  # the envelope and bd are the first two levels
    envelope = parse_frame(body_with("[" * levels + "]" * levels), LIMITS)
    assert orjson.loads(stored_body({}, envelope.bd))["bd"] == envelope.bd


def test_one_level_more_is_invalid_json_with_a_message_naming_the_limit() -> None:
    levels = MAX_JSON_DEPTH - 1
    error = refused(body_with("[" * levels + "]" * levels))
    assert error.code == "invalid_json" and str(MAX_JSON_DEPTH) in error.message


@pytest.mark.parametrize("frame", [body_with('"' + "[" * 500 + '"'), body_with('"' + "{" * 500 + '"')])
def test_brackets_inside_strings_are_not_nesting(frame: str) -> None:
    assert parse_frame(frame, LIMITS).bd["x"][:1] in "[{"


@pytest.mark.parametrize("number", [MIN_INT, MAX_INT, 2**63, -(2**53), 0])
def test_64_bit_integers_are_kept_exactly(number: int) -> None:
    assert parse_frame(body_with(str(number)), LIMITS).bd["x"] == number
    assert isinstance(parse_frame(body_with(str(number)).encode(), LIMITS).bd["x"], int)


@pytest.mark.parametrize("number", [MIN_INT - 1, MAX_INT + 1, 10**30, -(10**40)])
def test_integers_beyond_64_bits_are_invalid_json(number: int) -> None:
    error = refused(body_with(str(number)))
    assert error.code == "invalid_json" and "64 bits" in error.message
    assert refused(body_with(str(number)).encode()).code == "invalid_json"


@pytest.mark.parametrize("literal", ["1e19", "1.8446744073709552e19", "10000000000000000000.0", "-9.3e18",
                                     "1e300", "123456789012345678901.5e-3"])
def test_floats_of_any_size_a_double_holds_are_kept(literal: str) -> None:
    assert parse_frame(body_with(literal), LIMITS).bd["x"] == float(literal)


def test_long_digit_runs_inside_strings_are_not_numbers() -> None:
    assert parse_frame(body_with('"' + "9" * 40 + '"'), LIMITS).bd["x"] == "9" * 40


def test_a_deep_role_is_refused_without_rendering_it() -> None:
    levels = MAX_JSON_DEPTH - 3
    frame = '{"hd": {"event": "chat.message", "role": ' + "[" * levels + "]" * levels + '}, "bd": {"text": "hi"}}'
    with pytest.raises(ProtocolError) as info:
        parse_frame(frame, LIMITS)
    assert (info.value.code, info.value.message) == ("invalid_role", "Invalid role [...]: use 'A' or 'B', "
                                                                     "or leave it out.")
