"""build_messages: the room's entries as the model sees them (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.errors import LLM_ERROR_CODES
from server.llm.provider import (
    MAX_DETAIL_CHARS,
    STATUS_CODES,
    ProviderError,
    Turn,
    build_messages,
    safe_detail,
    status_error,
)

SYSTEM = "Be brief."


def entry(participant: str, text: str | None = None, event: str = "chat.message", **bd: Any) -> dict[str, Any]:
    return {"id": "1-0", "participant": participant, "event": event, "ts": "",
            "hd": {"event": event, "role": participant}, "bd": {"text": text, **bd} if text is not None else bd}


def test_the_system_prompt_comes_first_then_history_oldest_first() -> None:
    history = [entry("A", "hi"), entry("B", "hello"), entry("user", "anyone?")]
    assert build_messages(SYSTEM, history, turns=10) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "A: hi"},
        {"role": "user", "content": "B: hello"},
        {"role": "user", "content": "user: anyone?"},
    ]


def test_llm_messages_are_assistant_messages_without_a_label() -> None:
    history = [entry("A", "2+2?"), entry("llm", "4")]
    assert build_messages(SYSTEM, history, turns=10)[1:] == [
        {"role": "user", "content": "A: 2+2?"},
        {"role": "assistant", "content": "4"},
    ]


def test_an_invoke_entry_is_its_askers_user_message() -> None:
    history = [entry("B", event="llm.invoke", prompt="summarise please")]
    assert build_messages(SYSTEM, history, turns=10)[1:] == [{"role": "user", "content": "B: summarise please"}]


def test_entries_without_text_are_skipped_and_do_not_count_as_turns() -> None:
    history = [
        entry("A", "one"),
        entry("llm", event="llm.error", code="provider_timeout", message="slow"),
        entry("B", "   "),
        entry("mallory", "not a participant"),
        {"participant": "A", "event": "chat.message", "bd": "not an object"},
        entry("A", "two"),
    ]
    assert [m["content"] for m in build_messages(SYSTEM, history, turns=2)[1:]] == ["A: one", "A: two"]


def test_only_the_last_turns_messages_are_kept() -> None:
    history = [entry("A", str(n)) for n in range(15)]
    messages = build_messages(SYSTEM, history, turns=10)
    assert [m["content"] for m in messages[1:]] == [f"A: {n}" for n in range(5, 15)]
    assert build_messages(SYSTEM, history, turns=0) == [{"role": "system", "content": SYSTEM}]


def test_an_explicit_prompt_is_the_final_user_message_labelled_with_the_asker() -> None:
    history = [entry("A", "context"), entry("llm", "noted")]
    messages = build_messages(SYSTEM, history, turns=1, prompt=Turn("B", "and now?"))
    assert messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "assistant", "content": "noted"},
        {"role": "user", "content": "B: and now?"},
    ]


def test_provider_errors_carry_a_documented_code() -> None:
    error = ProviderError("provider_timeout")
    assert (error.code, error.message) == ("provider_timeout", "The LLM provider did not finish answering in time.")
    with pytest.raises(ValueError, match="undocumented"):
        ProviderError("timeout")


@pytest.mark.parametrize(("status", "code"), [
    (401, "provider_auth"), (403, "provider_auth"), (429, "provider_rate_limited"),
    (408, "provider_timeout"), (504, "provider_timeout"), (502, "provider_unavailable"),
    (503, "provider_unavailable"), (400, "provider_bad_request"), (404, "provider_bad_request"),
    (422, "provider_bad_request"), (500, "provider_error"), (409, "provider_error"), (418, "provider_error"),
])
def test_an_http_error_status_has_the_code_of_its_cause(status: int, code: str) -> None:
    error = status_error(status, "what it said")
    assert (error.code, error.status) == (code, status)
    assert error.message == f"{LLM_ERROR_CODES[code]} HTTP {status}: what it said"


def test_an_error_with_no_message_names_its_status() -> None:
    assert status_error(503, "  ").message == f"{LLM_ERROR_CODES['provider_unavailable']} HTTP 503."


def test_the_status_table_names_only_documented_codes() -> None:
    assert set(STATUS_CODES.values()) <= set(LLM_ERROR_CODES)


@pytest.mark.parametrize(("said", "shown"), [
    ("Incorrect API key provided: sk-abc123DEF456. See docs.", "Incorrect API key provided: sk-***. See docs."),
    ("Incorrect API key provided: sk-proj-****************abcd.", "Incorrect API key provided: sk-proj-***."),
    ("Authorization: Bearer eyJabc.def-ghi_jkl", "Authorization: Bearer ***"),
    ("bad api_key=abcdefgh12345 given", "bad api_key=*** given"),
    ("a monkey business key: short", "a monkey business key: short"),  # too short to be a key
    ("line one\nline two\t\ttabbed", "line one line two tabbed"),  # one line: no forged log lines
])
def test_the_providers_message_is_shown_with_key_fragments_masked(said: str, shown: str) -> None:
    assert safe_detail(said) == shown


def test_the_key_we_sent_is_masked_wherever_it_appears() -> None:
    assert safe_detail("you sent my-local-secret-42, which is wrong", ["my-local-secret-42"]) == (
        "you sent ***, which is wrong")


def test_the_providers_message_is_cut_to_300_characters() -> None:
    shown = safe_detail("x" * 1000)
    assert len(shown) == MAX_DETAIL_CHARS == 300 and shown.endswith("\u2026")
    assert safe_detail("y" * 300) == "y" * 300
