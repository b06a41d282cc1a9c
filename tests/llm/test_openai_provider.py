"""The OpenAI adapter through the real openai SDK, against the local fake OpenAI server."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest

from protocol.errors import LLM_ERROR_CODES
from server.llm.openai_provider import OpenAIProvider
from server.llm.provider import ChatMessage, Outcome, ProviderError, Turn, build_messages
from server.settings import LLMSettings
from tests.support.fake_openai import (
    LEAKED_KEY,
    STREAM_ERROR_MESSAGE,
    FakeOpenAI,
    error_message,
    reply_text,
    reply_tokens,
)
from tests.support.redis_server import free_port

Make = Callable[..., OpenAIProvider]


@pytest.fixture
async def make(fake_openai: FakeOpenAI) -> AsyncIterator[Make]:
    """An OpenAIProvider on the fake server, with no retries unless the test asks; closed afterwards."""
    made: list[OpenAIProvider] = []

    def make(**env: str) -> OpenAIProvider:
        settings = LLMSettings.from_env({"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": fake_openai.base_url,
                                         "LLM_MAX_RETRIES": "0", **env})
        made.append(OpenAIProvider(settings))
        return made[-1]

    yield make
    for provider in made:
        await provider.aclose()


def asking(*markers: str) -> tuple[str, list[ChatMessage]]:
    """A unique tag (to find the request on the fake) and messages whose question carries ``markers``."""
    tag = f"q{secrets.token_hex(4)}"
    question = " ".join(["A:", tag, *markers])
    return tag, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]


async def run(provider: OpenAIProvider, messages: list[ChatMessage]) -> tuple[list[str], Outcome | ProviderError]:
    """The deltas, and the outcome or the ProviderError the generation ended with."""
    deltas: list[str] = []
    try:
        async with contextlib.aclosing(provider.stream(messages)) as events:
            async for event in events:
                if isinstance(event, Outcome):
                    return deltas, event
                deltas.append(event)
    except ProviderError as error:
        return deltas, error
    raise AssertionError("the stream ended without an outcome")


async def test_a_streamed_answer_arrives_token_by_token_with_model_and_usage(make: Make,
                                                                            fake_openai: FakeOpenAI) -> None:
    tag, messages = asking()
    deltas, outcome = await run(make(), messages)
    assert deltas == reply_tokens(8)
    assert "".join(deltas) == reply_text(8)
    assert outcome == Outcome("stop", "gpt-4o-mini", {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12})
    assert (await fake_openai.ended(tag)).ended == "completed"


async def test_the_request_carries_the_system_prompt_the_turns_and_the_options(make: Make,
                                                                             fake_openai: FakeOpenAI) -> None:
    tag = f"q{secrets.token_hex(4)}"
    history = [{"participant": "A", "event": "chat.message", "bd": {"text": "I like tea"}},
               {"participant": "llm", "event": "llm.response", "bd": {"text": "Noted."}}]
    messages = build_messages("You are terse.", history, turns=10, prompt=Turn("B", f"{tag} what does A like?"))
    _, outcome = await run(make(LLM_MODEL="local-model", LLM_TEMPERATURE="0.3", LLM_MAX_TOKENS="50"), messages)
    assert isinstance(outcome, Outcome) and outcome.model == "local-model"
    [exchange] = fake_openai.exchanges(tag)
    assert exchange.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "A: I like tea"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": f"B: {tag} what does A like?"},
    ]
    options = {k: exchange.body.get(k) for k in ("model", "stream", "stream_options", "temperature", "max_tokens")}
    assert options == {"model": "local-model", "stream": True, "stream_options": {"include_usage": True},
                       "temperature": 0.3, "max_tokens": 50}


async def test_unset_temperature_and_max_tokens_are_not_sent(make: Make, fake_openai: FakeOpenAI) -> None:
    tag, messages = asking()
    await run(make(), messages)
    [exchange] = fake_openai.exchanges(tag)
    assert "temperature" not in exchange.body and "max_tokens" not in exchange.body


async def test_a_length_finish_is_reported(make: Make) -> None:
    _, messages = asking("#length", "#tokens=3")
    deltas, outcome = await run(make(), messages)
    assert "".join(deltas) == reply_text(3)
    assert isinstance(outcome, Outcome) and outcome.finish_reason == "length"


async def test_429_is_provider_rate_limited_after_the_configured_retries(make: Make, fake_openai: FakeOpenAI) -> None:
    tag, messages = asking("#429")
    deltas, error = await run(make(LLM_MAX_RETRIES="2"), messages)
    assert deltas == []
    assert isinstance(error, ProviderError) and error.code == "provider_rate_limited"
    assert len(fake_openai.exchanges(tag)) == 3  # the first try and two retries


async def test_500_is_provider_error(make: Make, fake_openai: FakeOpenAI) -> None:
    tag, messages = asking("#500")
    _, error = await run(make(), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_error"
    assert "500" in error.message
    assert len(fake_openai.exchanges(tag)) == 1


@pytest.mark.parametrize(("status", "code"), [
    (401, "provider_auth"), (403, "provider_auth"),
    (429, "provider_rate_limited"),
    (408, "provider_timeout"), (504, "provider_timeout"),
    (502, "provider_unavailable"), (503, "provider_unavailable"),
    (400, "provider_bad_request"), (404, "provider_bad_request"), (422, "provider_bad_request"),
    (500, "provider_error"), (409, "provider_error"), (418, "provider_error"),
])
async def test_each_error_status_has_its_code_and_the_providers_own_message(make: Make, status: int,
                                                                            code: str) -> None:
    _, messages = asking(f"#status={status}")
    deltas, error = await run(make(), messages)
    assert deltas == []
    assert isinstance(error, ProviderError)
    assert (error.code, error.status) == (code, status)
    shown = error_message(status).replace(LEAKED_KEY, "sk-proj-***")
    assert error.message == f"{LLM_ERROR_CODES[code]} HTTP {status}: {shown}"


async def test_a_key_the_provider_echoes_is_masked(make: Make) -> None:
    _, messages = asking("#status=401")
    _, error = await run(make(OPENAI_API_KEY="sk-our-own-secret-key-42"), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_auth"
    assert LEAKED_KEY not in error.message and LEAKED_KEY[8:] not in error.message
    assert "Incorrect API key provided: sk-proj-***." in error.message


async def test_the_providers_message_is_cut_to_300_characters(make: Make) -> None:
    _, messages = asking("#status=400", "#bigerror")
    _, error = await run(make(), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_bad_request"
    detail = error.message.split(" HTTP 400: ", 1)[1]
    assert len(detail) == 300 and detail.endswith("\u2026")
    assert detail.startswith(error_message(400))


async def test_a_plain_text_error_body_is_the_message(make: Make) -> None:
    _, messages = asking("#status=502", "#textbody")
    _, error = await run(make(), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_unavailable"
    assert error.message.endswith(f"HTTP 502: {error_message(502)}")


@pytest.mark.parametrize(("marker", "code"), [
    ("#streamerror=503", "provider_unavailable"), ("#streamerror=500", "provider_error"),
    ("#streamerror", "provider_error"),
])
async def test_an_error_event_mid_stream_has_the_code_of_its_status_after_the_partial_text(
        make: Make, marker: str, code: str) -> None:
    _, messages = asking(marker)
    deltas, error = await run(make(), messages)
    assert "".join(deltas) == reply_text(3)
    assert isinstance(error, ProviderError) and error.code == code
    assert error.message.endswith(STREAM_ERROR_MESSAGE)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_a_refused_request_is_never_retried(make: Make, fake_openai: FakeOpenAI, status: int) -> None:
    tag, messages = asking(f"#status={status}")
    _, error = await run(make(LLM_MAX_RETRIES="2"), messages)
    assert isinstance(error, ProviderError) and error.status == status
    assert len(fake_openai.exchanges(tag)) == 1


@pytest.mark.parametrize("status", [408, 502, 503, 504])
async def test_a_passing_failure_is_retried_then_reported(make: Make, fake_openai: FakeOpenAI, status: int) -> None:
    tag, messages = asking(f"#status={status}")
    _, error = await run(make(LLM_MAX_RETRIES="1"), messages)
    assert isinstance(error, ProviderError) and error.status == status
    assert len(fake_openai.exchanges(tag)) == 2


async def test_no_answer_is_provider_timeout_within_the_cap_retries_included(make: Make,
                                                                           fake_openai: FakeOpenAI) -> None:
    tag, messages = asking("#hang")
    started = time.monotonic()
    _, error = await run(make(LLM_TIMEOUT_S="0.3", LLM_MAX_RETRIES="2"), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_timeout"
    assert time.monotonic() - started < 2
    assert (await fake_openai.ended(tag)).ended == "client_closed"


async def test_a_trickling_stream_is_cut_by_the_overall_cap(make: Make, fake_openai: FakeOpenAI) -> None:
    # Each token arrives well within the per-read timeout: only the cap on the whole generation ends it.
    tag, messages = asking("#tokens=100", "#delay=50")
    deltas, error = await run(make(LLM_TIMEOUT_S="0.5"), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_timeout"
    assert 0 < len(deltas) < 100
    assert reply_text(100).startswith("".join(deltas))
    assert (await fake_openai.ended(tag)).ended == "client_closed"


async def test_a_stream_cut_mid_answer_is_provider_unavailable_after_the_partial_text(make: Make,
                                                                                     fake_openai: FakeOpenAI) -> None:
    tag, messages = asking("#cut")
    deltas, error = await run(make(), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_unavailable"
    assert "".join(deltas) == reply_text(3)
    assert (await fake_openai.ended(tag)).ended == "cut"


async def test_a_stream_that_ends_without_a_finish_reason_is_provider_unavailable(make: Make) -> None:
    _, messages = asking("#nofinish", "#tokens=2")
    deltas, error = await run(make(), messages)
    assert "".join(deltas) == reply_text(2)
    assert isinstance(error, ProviderError) and error.code == "provider_unavailable"


async def test_nothing_listening_is_provider_unavailable(make: Make) -> None:
    _, messages = asking()
    _, error = await run(make(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1"), messages)
    assert isinstance(error, ProviderError) and error.code == "provider_unavailable"


async def test_closing_the_generation_early_hangs_up_on_the_provider(make: Make, fake_openai: FakeOpenAI) -> None:
    tag, messages = asking("#slow")
    async with contextlib.aclosing(make().stream(messages)) as events:
        assert await anext(events) == reply_tokens(1)[0]
    exchange = await fake_openai.ended(tag)
    assert exchange.ended == "client_closed"
    assert exchange.tokens_sent < 200


async def test_cancelling_the_generating_task_hangs_up_on_the_provider(make: Make, fake_openai: FakeOpenAI) -> None:
    tag, messages = asking("#slow")
    first = asyncio.Event()

    async def generate() -> None:
        async for _ in make().stream(messages):
            first.set()

    task = asyncio.create_task(generate())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    exchange = await fake_openai.ended(tag)
    assert exchange.ended == "client_closed"
    assert exchange.tokens_sent < 200
