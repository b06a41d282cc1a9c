"""The OpenAI-compatible provider: chat completions streamed through the ``openai`` SDK.

Theory of operation. One ``AsyncOpenAI`` client (one connection pool) serves every generation,
against api.openai.com or any compatible server (``OPENAI_BASE_URL``: vLLM, Ollama, llama.cpp).
A generation is one ``chat.completions.create(stream=True)`` request that also asks for the
token usage (``stream_options.include_usage``), which arrives in a last chunk with no choices.

- Deadline: ``LLM_TIMEOUT_S`` caps the whole generation. The request (with the SDK's retries)
  and each read of the stream are awaited under ``asyncio.timeout_at`` of one deadline; no
  timeout scope spans a ``yield``, where it would fire inside the consumer's code instead.
- Retries: the SDK retries a failed request ``LLM_MAX_RETRIES`` times; once tokens flow it never
  retries, and neither do we: a failure after the first delta is final.
- Errors: every failure becomes a :class:`ProviderError` in :func:`provider_error`. Transport
  failures mid-stream differ across SDK majors: 1.x lets httpx's exceptions through, later
  majors wrap them in ``APIConnectionError``; both map to ``provider_unavailable``. A stream that
  ends without a finish reason was cut short, and is ``provider_unavailable`` too.
- Closing: the response is closed in a ``finally``, so a generation that stops early (the
  consumer closes it, its task is cancelled, or it fails) hangs up on the provider at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import Any, TypeVar, cast

import openai
from openai import AsyncStream
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from server.llm.provider import ChatMessage, Event, Outcome, ProviderError
from server.settings import LLMSettings

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local OpenAI-compatible servers ignore the key, but the SDK will not start without one.
NO_KEY = "unused"


class OpenAIProvider:
    def __init__(self, settings: LLMSettings) -> None:
        self._model = settings.model
        self._timeout_s = settings.timeout_s
        self._options = _request_options(settings)
        self._client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key or NO_KEY, base_url=settings.openai_base_url or DEFAULT_BASE_URL,
            timeout=settings.timeout_s, max_retries=settings.max_retries,
        )

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[Event, None]:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        request = self._client.chat.completions.create(
            messages=cast("list[ChatCompletionMessageParam]", list(messages)), **self._options)
        stream: AsyncStream[ChatCompletionChunk] = await _before(deadline, request)
        model, usage, finish_reason = self._model, None, None
        try:
            while (chunk := await _before(deadline, anext(stream, None))) is not None:
                model = chunk.model or model
                usage = _usage(chunk.usage) if chunk.usage is not None else usage
                choice = chunk.choices[0] if chunk.choices else None
                if choice is not None and choice.delta is not None and choice.delta.content:
                    yield choice.delta.content
                if choice is not None and choice.finish_reason:
                    finish_reason = choice.finish_reason
        finally:
            with contextlib.suppress(Exception):  # best effort: the outcome is already decided
                await stream.close()
        if finish_reason is None:
            raise ProviderError("provider_unavailable", "The provider's stream ended before the answer was finished.")
        yield Outcome("length" if finish_reason == "length" else "stop", model, usage)

    async def aclose(self) -> None:
        await self._client.close()


def provider_error(error: BaseException) -> ProviderError:
    """The :class:`ProviderError` for a failure of the SDK, its transport, or our deadline."""
    if isinstance(error, openai.RateLimitError) or getattr(error, "status_code", None) == 429:
        return ProviderError("provider_rate_limited")
    if isinstance(error, (openai.APITimeoutError, TimeoutError, *_transport_errors("TimeoutException"))):
        return ProviderError("provider_timeout")
    if isinstance(error, (openai.APIConnectionError, OSError, *_transport_errors("TransportError"))):
        return ProviderError("provider_unavailable")
    if isinstance(error, openai.APIStatusError):
        return ProviderError("provider_error", f"The LLM provider answered HTTP {error.status_code}.")
    return ProviderError("provider_error")


async def _before(deadline: float, step: Awaitable[T]) -> T:
    """Await one step of a generation by ``deadline``, with its failures as :class:`ProviderError`."""
    try:
        async with asyncio.timeout_at(deadline):
            return await step
    except Exception as error:
        raise provider_error(error) from error


def _transport_errors(name: str) -> tuple[type[BaseException], ...]:
    """The exception class ``name`` of each httpx major the SDK has loaded (httpx, httpx2)."""
    modules = [sys.modules.get(module) for module in ("httpx", "httpx2")]
    return tuple(getattr(module, name) for module in modules if module is not None and hasattr(module, name))


def _request_options(settings: LLMSettings) -> dict[str, Any]:
    options: dict[str, Any] = {"model": settings.model, "stream": True, "stream_options": {"include_usage": True}}
    if settings.temperature is not None:
        options["temperature"] = settings.temperature
    if settings.max_tokens is not None:
        options["max_tokens"] = settings.max_tokens
    return options


def _usage(usage: CompletionUsage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}
