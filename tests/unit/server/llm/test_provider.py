"""build_messages: the room's entries as the model sees them (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from server.llm.provider import ProviderError, Turn, build_messages

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
