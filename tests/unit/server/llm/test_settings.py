"""LLMSettings.from_env: defaults, the provider choice, and one-line errors naming the variable."""

from __future__ import annotations

import pytest

from server.llm import make_provider
from server.llm.openai_provider import OpenAIProvider
from server.llm.scripted import ScriptedProvider
from server.settings import DEFAULT_SYSTEM_PROMPT, LLMSettings, SettingsError


def test_defaults_without_any_variable_are_the_offline_scripted_provider() -> None:
    settings = LLMSettings.from_env({})
    assert settings == LLMSettings()
    assert (settings.provider, settings.model, settings.trigger, settings.workers) == (
        "scripted", "gpt-4o-mini", "mention", 1)
    assert (settings.history_turns, settings.timeout_s, settings.max_retries, settings.reclaim_after_s) == (
        10, 60.0, 2, 30.0)
    assert settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert settings.temperature is None and settings.max_tokens is None
    assert isinstance(make_provider(settings), ScriptedProvider)


async def test_an_api_key_chooses_openai_unless_llm_provider_says_otherwise() -> None:
    chosen = LLMSettings.from_env({"OPENAI_API_KEY": "sk-test"})
    assert chosen.provider == "openai"
    provider = make_provider(chosen)
    assert isinstance(provider, OpenAIProvider)
    await provider.aclose()
    assert LLMSettings.from_env({"OPENAI_API_KEY": "sk-test", "LLM_PROVIDER": "scripted"}).provider == "scripted"


def test_openai_with_a_base_url_needs_no_key_but_with_neither_is_refused() -> None:
    local = LLMSettings.from_env({"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"})
    assert (local.provider, local.openai_api_key) == ("openai", None)
    with pytest.raises(SettingsError, match=r"^LLM_PROVIDER=openai needs OPENAI_API_KEY "):
        LLMSettings.from_env({"LLM_PROVIDER": "OpenAI"})


def test_every_variable_is_read() -> None:
    settings = LLMSettings.from_env({
        "LLM_PROVIDER": "openai", "OPENAI_API_KEY": " sk-x ", "OPENAI_BASE_URL": "https://llm.example/v1",
        "LLM_MODEL": "m", "LLM_TEMPERATURE": "0.2", "LLM_MAX_TOKENS": "64", "LLM_TIMEOUT_S": "1.5",
        "LLM_MAX_RETRIES": "0", "LLM_TRIGGER": "always", "LLM_WORKERS": "0", "LLM_RECLAIM_AFTER_S": "5",
        "LLM_HISTORY_TURNS": "3", "LLM_SYSTEM_PROMPT": "Be terse.", "LLM_SCRIPTED_DELAY_MS": "0",
        "LLM_QUEUE_LEASE_S": "120", "LLM_JOIN_LEASE_S": "10",
    })
    assert settings == LLMSettings(
        provider="openai", openai_api_key="sk-x", openai_base_url="https://llm.example/v1", model="m",
        temperature=0.2, max_tokens=64, timeout_s=1.5, max_retries=0, trigger="always", workers=0,
        reclaim_after_s=5.0, history_turns=3, system_prompt="Be terse.", scripted_delay_ms=0,
        queue_lease_s=120.0, join_lease_s=10.0,
    )


def test_a_running_lease_outlasts_the_reclaim_and_a_queued_one_is_long() -> None:
    settings = LLMSettings(reclaim_after_s=30)
    assert settings.running_lease_ms == 60_000  # a dead worker's request is taken over before it lapses
    assert settings.keepalive_s == 5.0 and LLMSettings(reclaim_after_s=3).keepalive_s == 1.0
    assert settings.queue_lease_ms == 600_000


def test_a_turn_is_kept_for_the_joining_lease_until_its_request_is_queued_and_never_longer_than_the_queued_one(
) -> None:
    assert LLMSettings().join_lease_ms == 30_000
    assert LLMSettings(join_lease_s=60, queue_lease_s=20).join_lease_ms == 20_000


def test_the_api_key_is_not_in_the_repr() -> None:
    assert "sk-secret" not in repr(LLMSettings.from_env({"OPENAI_API_KEY": "sk-secret"}))


def test_empty_values_keep_the_defaults() -> None:
    assert LLMSettings.from_env({"LLM_MODEL": "", "LLM_SYSTEM_PROMPT": "  ", "OPENAI_API_KEY": ""}) == LLMSettings()


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("LLM_PROVIDER", "anthropic", "LLM_PROVIDER='anthropic' is not one of openai, scripted"),
    ("LLM_TRIGGER", "sometimes", "LLM_TRIGGER='sometimes' is not one of mention, explicit, always"),
    ("LLM_WORKERS", "-1", "LLM_WORKERS=-1 is out of range (0..1024)"),
    ("LLM_HISTORY_TURNS", "ten", "LLM_HISTORY_TURNS='ten' is not an integer"),
    ("LLM_TIMEOUT_S", "0", "LLM_TIMEOUT_S=0 is out of range (>0.0..3600.0)"),
    ("LLM_TIMEOUT_S", "nan", "LLM_TIMEOUT_S=nan is out of range (>0.0..3600.0)"),
    ("LLM_RECLAIM_AFTER_S", "soon", "LLM_RECLAIM_AFTER_S='soon' is not a number"),
    ("LLM_TEMPERATURE", "3", "LLM_TEMPERATURE=3 is out of range (0.0..2.0)"),
    ("LLM_MAX_TOKENS", "0", "LLM_MAX_TOKENS=0 is out of range (1..1000000)"),
    ("LLM_MAX_RETRIES", "11", "LLM_MAX_RETRIES=11 is out of range (0..10)"),
    ("LLM_SCRIPTED_DELAY_MS", "-5", "LLM_SCRIPTED_DELAY_MS=-5 is out of range (0..60000)"),
    ("OPENAI_BASE_URL", "localhost:8000", "OPENAI_BASE_URL='localhost:8000' must start with http:// or https://"),
])
def test_a_bad_value_is_refused_with_a_message_naming_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        LLMSettings.from_env({variable: value})
    assert str(refused.value) == message


def test_llm_cancel_is_any_by_default_or_asker() -> None:
    assert LLMSettings.from_env({}).cancel == "any"
    assert LLMSettings.from_env({"LLM_CANCEL": "Asker"}).cancel == "asker"
    with pytest.raises(SettingsError, match=r"^LLM_CANCEL='owner' is not one of any, asker$"):
        LLMSettings.from_env({"LLM_CANCEL": "owner"})


def test_the_cost_guard_allows_60_questions_an_hour_per_room_and_no_token_budget_by_default() -> None:
    budgets = LLMSettings.from_env({}).budgets
    assert (budgets.generations_per_hour, budgets.room_tokens_per_day, budgets.tokens_per_day) == (60, None, None)


def test_the_cost_guard_reads_its_budgets_and_zero_means_no_limit() -> None:
    budgets = LLMSettings.from_env({"LLM_ROOM_GENERATIONS_PER_HOUR": "2", "LLM_ROOM_TOKENS_PER_DAY": "5000",
                                    "LLM_TOKENS_PER_DAY": "100000"}).budgets
    assert (budgets.generations_per_hour, budgets.room_tokens_per_day, budgets.tokens_per_day) == (2, 5000, 100000)
    assert LLMSettings.from_env({"LLM_ROOM_GENERATIONS_PER_HOUR": "0"}).budgets.generations_per_hour is None
    with pytest.raises(SettingsError, match=r"^LLM_TOKENS_PER_DAY=-1 is out of range"):
        LLMSettings.from_env({"LLM_TOKENS_PER_DAY": "-1"})
