"""From an exception to what the client sees: one code per kind of failure, counted, bugs logged."""

from __future__ import annotations

import logging

import orjson
import pytest

from protocol.errors import ERROR_CODES, ProtocolError
from server.errors import error_code, error_for
from server.metrics import COUNTS
from server.store.ports import NotReplicated, StoreError, StoreRefused, StoreUnavailable


def test_a_protocol_error_keeps_its_code_message_and_cid() -> None:
    frame = orjson.loads(error_for(ProtocolError("empty_text", "no text", "c1"), cid="other"))
    assert frame == {"hd": {"event": "error"}, "bd": {"code": "empty_text", "message": "no text", "cid": "c1"}}


def test_the_given_cid_is_used_when_the_error_carries_none() -> None:
    frame = orjson.loads(error_for(ProtocolError("rate_limited"), cid="c9"))
    assert frame["bd"]["cid"] == "c9" and frame["bd"]["message"] == ERROR_CODES["rate_limited"]


def test_no_cid_at_all_leaves_it_out() -> None:
    assert "cid" not in orjson.loads(error_for(StoreUnavailable("down")))["bd"]


def test_an_unreachable_store_is_unavailable_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "server.errors"):
        assert error_code(StoreUnavailable("connection refused")) == ("unavailable", ERROR_CODES["unavailable"])
    assert caplog.records == []


def test_an_append_short_of_replicas_is_unavailable_send_it_again(caplog: pytest.LogCaptureFixture) -> None:
    # Stored on the primary but not acknowledged: the resend with the same cid answers the stored copy.
    with caplog.at_level(logging.ERROR, "server.errors"):
        frame = orjson.loads(error_for(NotReplicated("0 of 1 replicas acknowledged the write within 1000 ms"), "c9"))
    assert frame["bd"] == {"code": "unavailable", "message": ERROR_CODES["unavailable"], "cid": "c9"}
    assert caplog.records == []


@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), StoreError("ERR unknown command"), KeyError("k")])
def test_anything_else_is_internal_logged_with_its_traceback_and_shows_no_details(
        exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "server.errors"):
        frame = orjson.loads(error_for(exc, "c1"))
    assert frame["bd"] == {"code": "internal", "message": ERROR_CODES["internal"], "cid": "c1"}
    assert [record.exc_info[1] for record in caplog.records if record.exc_info] == [exc]


def test_every_error_sent_is_counted_by_code() -> None:
    before = COUNTS.errors["busy"], COUNTS.errors["unavailable"]
    error_for(ProtocolError("busy"))
    error_code(StoreUnavailable("down"))
    assert (COUNTS.errors["busy"], COUNTS.errors["unavailable"]) == (before[0] + 1, before[1] + 1)


def test_a_refused_write_is_unavailable_logged_once_per_kind_without_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis refusing writes (NOREPLICAS, READONLY, OOM, MISCONF, BUSY) wrote nothing: ``unavailable`` is
    the truth (send it again), and a refusal that fails every message is one log line, not one per message."""
    refused = StoreRefused(f"NOREPLICAS Not enough good replicas to write. ({id(caplog)})")
    with caplog.at_level(logging.WARNING, "server.errors"):
        for _ in range(3):
            frame = orjson.loads(error_for(refused, "c1"))
            assert frame["bd"] == {"code": "unavailable", "message": ERROR_CODES["unavailable"], "cid": "c1"}
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None and "NOREPLICAS" in record.getMessage()
