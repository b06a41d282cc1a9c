"""One close table: every way the server closes a WebSocket, with a valid, documented code, the
reason it sends and whether the client should reconnect; the README and the AsyncAPI document print it."""

from __future__ import annotations

import pytest

from protocol import close
from protocol.close import CLOSES, By, Close, Reconnect, markdown_table
from tests.support.schemas import ROOT, asyncapi

# RFC 6455 section 7.4.1 and the IANA registry: the codes an endpoint may send in a close frame.
STANDARD_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


@pytest.mark.parametrize("row", CLOSES, ids=[f"{row.code} {row.reason}" for row in CLOSES])
def test_every_close_code_is_a_standard_one_or_an_application_one(row: Close) -> None:
    assert row.code in STANDARD_CODES or 4000 <= row.code <= 4999


@pytest.mark.parametrize("row", CLOSES, ids=[f"{row.code} {row.reason}" for row in CLOSES])
def test_every_reason_fits_in_a_close_frame(row: Close) -> None:
    assert len(row.reason.encode()) <= 123  # a control frame's payload is at most 125 bytes, 2 of them the code
    assert row.when


def test_each_way_of_closing_is_defined_once() -> None:
    assert len({(row.code, row.reason) for row in CLOSES}) == len(CLOSES)
    named = [value for name, value in vars(close).items() if isinstance(value, Close) and name.isupper()]
    assert sorted(named, key=CLOSES.index) == list(CLOSES)  # every named row is in the table, once


def test_the_relay_closes_with_a_reason_and_only_a_normal_close_has_none() -> None:
    assert [row for row in CLOSES if row.by is By.RELAY and not row.reason] == [close.NORMAL]


def test_clients_resume_after_closes_that_are_not_their_fault() -> None:
    assert {row.code for row in CLOSES if row.reconnect is Reconnect.RESUME} == {1011, 1012, 1013}
    assert {row.code for row in CLOSES if row.reconnect is Reconnect.NO} == {1000, 1007, 1008, 1009}
    assert {row.code for row in CLOSES if row.reconnect is Reconnect.FRESH_TOKEN} == {4001}  # an expired token


def test_the_closes_the_tests_see_on_the_wire_are_in_the_table() -> None:
    # tests/server: test_limits (1008, its reason; 1011 on a ping timeout), test_slow_consumer (1013, its
    # reason), test_malformed (1007), test_shutdown (1012), test_outlet (1000)
    assert (close.RATE_LIMIT.code, close.RATE_LIMIT.reason) == (1008, "rate limit exceeded")
    assert (close.SLOW_CONSUMER.code, close.SLOW_CONSUMER.reason) == (1013, "slow consumer")
    assert (close.STORE_UNAVAILABLE.code, close.STORE_UNAVAILABLE.reason) == (1011, "store unavailable")
    assert (close.TOKEN_EXPIRED.code, close.TOKEN_EXPIRED.reason) == (4001, "token expired")  # test_auth
    assert (close.PING_TIMEOUT.code, close.INVALID_UTF8.code, close.RESTART.code, close.NORMAL.code) == (
        1011, 1007, 1012, 1000)


def test_the_markdown_table_has_a_row_per_close() -> None:
    lines = markdown_table().splitlines()
    assert len(lines) == 2 + len(CLOSES)
    assert all(line.startswith(f"| {row.code} | ") for line, row in zip(lines[2:], CLOSES, strict=True))


def test_the_readme_prints_the_close_table() -> None:
    assert markdown_table() in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_asyncapi_document_prints_the_close_table() -> None:
    assert markdown_table() in asyncapi()["channels"]["room"]["description"]
