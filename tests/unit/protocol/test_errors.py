"""One error table: every code has a message, what it refuses and, when answered over HTTP, its
status; the statuses are those the server answered before the table existed; the README, the
AsyncAPI document and the LLM provider agree with it."""

from __future__ import annotations

import re

import pytest

from protocol.errors import (
    ERROR_CODES,
    ERRORS,
    FALLBACK_STATUS,
    LLM_ERROR_CODES,
    ProtocolError,
    Refuses,
    http_status,
    refusal_body,
)
from tests.support.schemas import ROOT, asyncapi

README = (ROOT / "README.md").read_text(encoding="utf-8")
OVER_HTTP = Refuses.HANDSHAKE | Refuses.HTTP
STANDARD_STATUSES = {400, 401, 403, 404, 413, 429, 500, 503}


@pytest.mark.parametrize("code", list(ERRORS))
def test_every_code_has_a_message_and_refuses_something(code: str) -> None:
    row = ERRORS[code]
    assert row.message.strip() and row.message.endswith(".")
    assert row.refuses


@pytest.mark.parametrize("code", list(ERRORS))
def test_a_code_has_a_status_exactly_when_it_is_answered_over_http(code: str) -> None:
    row = ERRORS[code]
    assert (row.status is not None) == bool(row.refuses & OVER_HTTP)
    assert row.status is None or row.status in STANDARD_STATUSES
    assert row.handshake_status is None or (Refuses.HANDSHAKE in row.refuses and row.handshake_status != row.status)


def test_codes_are_snake_case_and_the_llm_codes_are_apart() -> None:
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", code) for code in [*ERRORS, *LLM_ERROR_CODES])
    assert not ERRORS.keys() & LLM_ERROR_CODES.keys()
    assert all(message.strip() for message in LLM_ERROR_CODES.values())


def test_credentials_are_refused_with_401_and_403() -> None:
    assert {code: ERRORS[code].status for code in ERRORS if ERRORS[code].credentials} == {
        "unauthorized": 401, "forbidden": 403}


def test_error_codes_is_the_tables_messages() -> None:
    assert {code: row.message for code, row in ERRORS.items()} == ERROR_CODES
    assert ProtocolError("busy").message == ERRORS["busy"].message
    assert ProtocolError("busy", "Not now.").message == "Not now."
    with pytest.raises(ValueError, match="undocumented"):
        ProtocolError("no_such_code")


# The statuses before the table: server/history.py's STATUS (any other code: 400) for HTTP requests;
# server/ws.py's and server/admission.py's literals for handshakes.
HTTP_STATUS_BEFORE = {"unauthorized": 401, "forbidden": 403, "room_not_found": 404, "too_large": 413,
                      "internal": 500, "unavailable": 503}
HANDSHAKE_STATUS_BEFORE = {
    "invalid_room": 400, "invalid_role": 400, "reserved_role": 400, "invalid_resume": 400,  # the query string
    "unauthorized": 401, "forbidden": 403, "role_mismatch": 403,  # the token
    "unavailable": 503, "room_full": 429, "internal": 500,  # joining the room
    "origin_not_allowed": 403, "too_many_connections": 429,  # admission
}


@pytest.mark.parametrize("code", [code for code, row in ERRORS.items() if Refuses.HTTP in row.refuses])
def test_an_http_request_is_refused_with_the_status_it_had_before(code: str) -> None:
    assert http_status(code) == HTTP_STATUS_BEFORE.get(code, 400)


@pytest.mark.parametrize("code", list(HANDSHAKE_STATUS_BEFORE))
def test_a_handshake_is_refused_with_the_status_it_had_before(code: str) -> None:
    assert Refuses.HANDSHAKE in ERRORS[code].refuses
    assert http_status(code, handshake=True) == HANDSHAKE_STATUS_BEFORE[code]


def test_every_handshake_code_is_one_the_server_refuses_a_handshake_with() -> None:
    assert {code for code, row in ERRORS.items() if Refuses.HANDSHAKE in row.refuses} == set(HANDSHAKE_STATUS_BEFORE)


def test_a_code_never_answered_over_http_falls_back_to_400() -> None:
    assert http_status("rate_limited") == http_status("rate_limited", handshake=True) == FALLBACK_STATUS == 400
    assert http_status("not_a_code") == 400


def test_a_refusal_body_names_the_code_the_message_and_the_cid_when_there_is_one() -> None:
    assert refusal_body("too_large", "Too big.") == {"error": {"code": "too_large", "message": "Too big."}}
    assert refusal_body("empty_text", "No text.", "c-1") == {
        "error": {"code": "empty_text", "message": "No text.", "cid": "c-1"}}


def test_provider_errors_carry_the_llm_error_codes_and_their_messages() -> None:
    from server.llm.provider import ProviderError

    for code, message in LLM_ERROR_CODES.items():
        assert (ProviderError(code).code, ProviderError(code).message) == (code, message)
    with pytest.raises(ValueError, match="undocumented"):
        ProviderError("timeout")


def readme_table(heading: str) -> list[list[str]]:
    """The cells of the first table under ``heading`` in the README, header row excluded."""
    section = README[README.index(f"\n{heading}\n"):]
    lines = section[section.index("\n|"):].strip().splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def refuses_cell(refuses: Refuses) -> str:
    return ", ".join(name for flag, name in ((Refuses.HANDSHAKE, "handshake"), (Refuses.FRAME, "frame"),
                                             (Refuses.HTTP, "HTTP")) if flag in refuses)


def status_cell(code: str) -> str:
    row = ERRORS[code]
    if row.status is None:
        return "-"
    if row.handshake_status is not None:
        return f"{row.status}; {row.handshake_status} at the handshake"
    return str(row.status)


def test_the_readme_error_table_is_the_table() -> None:
    rows = readme_table("### Error codes")
    assert [row[0] for row in rows] == [f"`{code}`" for code in ERRORS]  # every code, in the table's order
    for code, (_, refuses, status, when) in zip(ERRORS, rows, strict=True):
        assert (refuses, status) == (refuses_cell(ERRORS[code].refuses), status_cell(code)), code
        assert when


def test_the_readme_llm_error_table_is_the_llm_codes() -> None:
    assert [row[0] for row in readme_table("  codes:")] == [
        f"`{code}`" for code in LLM_ERROR_CODES]


def test_the_readme_http_status_table_agrees_with_the_table() -> None:
    rows = readme_table("### Status codes")
    assert rows
    for status, codes, _ in rows:
        for code in re.findall(r"`([a-z_]+)`", codes):
            assert Refuses.HTTP in ERRORS[code].refuses and http_status(code) == int(status), code


@pytest.mark.parametrize("prose", [
    README[README.index("- A bad handshake is refused"):README.index("### session.ready")],
    asyncapi()["channels"]["room"]["description"],
], ids=["README Connecting", "asyncapi channel"])
def test_the_handshake_statuses_in_prose_are_the_tables(prose: str) -> None:
    pairs = re.findall(r"\b(\d{3})\s+`([a-z_]+)`", prose)
    assert {code for _, code in pairs} == set(HANDSHAKE_STATUS_BEFORE) - {"internal"}
    for status, code in pairs:
        assert http_status(code, handshake=True) == int(status), code


def test_the_asyncapi_llm_error_codes_describe_the_messages_sent() -> None:
    options = asyncapi()["components"]["schemas"]["LlmErrorCode"]["oneOf"]
    assert {option["const"]: option["description"] for option in options} == LLM_ERROR_CODES
