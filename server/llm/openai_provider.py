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
- Errors: every failure becomes a :class:`ProviderError` in :func:`provider_error`. An HTTP error
  status gets its code from :data:`~server.llm.provider.STATUS_CODES` (401/403 ``provider_auth``,
  429 ``provider_rate_limited``, 408/504 ``provider_timeout``, 502/503 ``provider_unavailable``,
  400/404/422 ``provider_bad_request``, any other ``provider_error``) and carries the provider's own
  message, secrets masked. The SDK retries 408, 409, 429 and 5xx (``LLM_MAX_RETRIES``), never a
  400/401/403/404/422. Transport failures mid-stream differ across SDK majors: 1.x lets httpx's
  exceptions through, later majors wrap them in ``APIConnectionError``; both map to
  ``provider_unavailable``. A stream that ends without a finish reason was cut short, and is
  ``provider_unavailable`` too.
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

from protocol.errors import LLM_ERROR_CODES
from server.llm.provider import ChatMessage, Event, Outcome, ProviderError, safe_detail, status_error
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
        self._secrets = (settings.openai_api_key,) if settings.openai_api_key else ()
        self._client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key or NO_KEY, base_url=settings.openai_base_url or DEFAULT_BASE_URL,
            timeout=settings.timeout_s, max_retries=settings.max_retries,
        )

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[Event, None]:
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        request = self._client.chat.completions.create(
            messages=cast("list[ChatCompletionMessageParam]", list(messages)), **self._options)
        stream: AsyncStream[ChatCompletionChunk] = await _before(deadline, request, self._secrets)
        model, usage, finish_reason = self._model, None, None
        try:
            while (chunk := await _before(deadline, anext(stream, None), self._secrets)) is not None:
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


def provider_error(error: BaseException, secrets: Sequence[str] = ()) -> ProviderError:
    """The :class:`ProviderError` for a failure of the SDK, its transport, or our deadline: an HTTP
    error status by :data:`~server.llm.provider.STATUS_CODES`, with the provider's own message
    (``secrets``, the key we sent, masked in it)."""
    if isinstance(error, openai.APIStatusError):
        return status_error(error.status_code, _detail(error), secrets)
    if isinstance(error, (openai.APITimeoutError, TimeoutError, *_transport_errors("TimeoutException"))):
        return ProviderError("provider_timeout")
    if isinstance(error, (openai.APIConnectionError, OSError, *_transport_errors("TransportError"))):
        return ProviderError("provider_unavailable")
    if isinstance(error, openai.APIError):  # an error event in the middle of the stream
        code = error.body.get("code") if isinstance(error.body, dict) else None
        if isinstance(code, int | str) and str(code).isdigit() and 400 <= int(code) <= 599:
            return status_error(int(code), _detail(error), secrets)  # a gateway's status (LiteLLM: "500")
        detail = safe_detail(_detail(error), secrets)
        return ProviderError("provider_error", f"{LLM_ERROR_CODES['provider_error']} It said: {detail}")
    return ProviderError("provider_error")


def _detail(error: openai.APIError) -> str:
    """The provider's own message: ``error.message`` of an OpenAI-style body (the SDK keeps the body's
    ``error`` object), else the body's text, else the SDK's message."""
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body
    return error.message


async def _before(deadline: float, step: Awaitable[T], secrets: Sequence[str]) -> T:
    """Await one step of a generation by ``deadline``, with its failures as :class:`ProviderError`."""
    try:
        async with asyncio.timeout_at(deadline):
            return await step
    except Exception as error:
        raise provider_error(error, secrets) from error


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
