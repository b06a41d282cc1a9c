"""The room's pure helpers: which handshake failures end it, and how long it waits before a retry."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from client.room import FIRST_DELAY_S, MAX_DELAY_S, refusal_of, retry_delay_s, worth_retrying, worth_sending_again


def refused(status: int, body: bytes) -> InvalidStatus:
    return InvalidStatus(Response(status, "", Headers(), body))


def test_a_refused_handshake_is_a_relay_error_with_its_code() -> None:
    exc = refused(403, b'{"error": {"code": "role_mismatch", "message": "Not your role."}}')
    error = refusal_of(exc)
    assert error is not None and (error.code, error.message) == ("role_mismatch", "Not your role.")
    assert not worth_retrying(exc)


def test_a_refusal_without_the_relay_s_body_still_says_what_happened() -> None:
    error = refusal_of(refused(404, b"<html>not found</html>"))
    assert error is not None and error.code == "refused" and "404" in error.message
    assert not worth_retrying(refused(404, b""))


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_a_server_that_is_busy_full_or_away_is_tried_again(status: int) -> None:
    exc = refused(status, b'{"error": {"code": "unavailable", "message": "Try again."}}')
    assert worth_retrying(exc)
    error = refusal_of(exc)  # what the first connection attempt raises: it is not retried
    assert error is not None and error.code == "unavailable"


def test_a_connection_that_failed_is_tried_again() -> None:
    assert worth_retrying(ConnectionRefusedError()) and worth_retrying(TimeoutError())
    assert refusal_of(ConnectionRefusedError()) is None


def test_the_pause_doubles_from_the_first_to_the_longest_with_jitter() -> None:
    for failures in range(20):
        ceiling = min(MAX_DELAY_S, FIRST_DELAY_S * 2**failures)
        assert all(ceiling / 2 <= retry_delay_s(failures) <= ceiling for _ in range(20))
    assert retry_delay_s(100) <= MAX_DELAY_S


def test_a_refusal_that_says_send_it_again_is_sent_again_and_busy_only_after_a_reconnect() -> None:
    assert worth_sending_again("rate_limited", 1) and worth_sending_again("unavailable", 1)
    assert not worth_sending_again("busy", 1)  # the bot answers someone else: the caller hears it
    assert worth_sending_again("busy", 2)  # perhaps its own first sending that the bot answers
    assert not worth_sending_again("unknown_generation", 2) and not worth_sending_again("quota_exceeded", 2)
