"""The malformed-frame corpus against the parser alone: every text frame gets its documented code."""

from __future__ import annotations

import pytest

from protocol import ERROR_CODES, Limits, ProtocolError, parse_frame
from tests.corpus.malformed_frames import BOUND_ROLE, CORPUS, TEXT_CORPUS, Bad

FRAME_CODES = {"invalid_json", "invalid_envelope", "unknown_event", "invalid_role", "reserved_role", "role_mismatch",
               "empty_text", "too_large", "unsupported_frame"}


def refusal(frame: str | bytes, bound_role: str | None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_frame(frame, Limits(), bound_role)
    return info.value


def test_the_corpus_has_fifty_frames_or_more_covering_every_frame_code() -> None:
    assert len(CORPUS) >= 50
    assert len({bad.name for bad in CORPUS}) == len(CORPUS)
    assert {bad.code for bad in CORPUS} == FRAME_CODES
    assert ERROR_CODES.keys() >= FRAME_CODES


@pytest.mark.parametrize("bad", TEXT_CORPUS, ids=[bad.name for bad in TEXT_CORPUS])
def test_each_malformed_frame_gets_its_code(bad: Bad) -> None:
    error = refusal(bad.frame, BOUND_ROLE)
    assert error.code == bad.code
    assert error.message


@pytest.mark.parametrize("bad", TEXT_CORPUS, ids=[bad.name for bad in TEXT_CORPUS])
def test_the_same_frame_as_utf8_bytes_gets_the_same_code(bad: Bad) -> None:
    assert isinstance(bad.frame, str)
    assert refusal(bad.frame.encode(), BOUND_ROLE).code == bad.code


@pytest.mark.parametrize("bad", [b for b in TEXT_CORPUS if b.code != "role_mismatch"],
                         ids=[b.name for b in TEXT_CORPUS if b.code != "role_mismatch"])
def test_an_unbound_connection_gets_the_same_code(bad: Bad) -> None:
    assert refusal(bad.frame, None).code == bad.code
