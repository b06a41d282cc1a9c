"""The OpenAI adapter's mapping of failures to provider error codes, without a provider. (The adapter
against a local fake OpenAI server: ``tests/llm/test_openai_provider.py``.)"""

from __future__ import annotations

import httpx
import pytest

from server.llm.openai_provider import provider_error


@pytest.mark.parametrize(("error", "code"), [
    # openai 1.x lets httpx's transport errors escape mid-stream; later majors wrap them (httpx2).
    (httpx.RemoteProtocolError("peer closed connection without sending complete message body"), "provider_unavailable"),
    (httpx.ReadError("connection reset"), "provider_unavailable"),
    (httpx.ReadTimeout("timed out"), "provider_timeout"),
    (ConnectionResetError(), "provider_unavailable"),
    (TimeoutError(), "provider_timeout"),
    (ValueError("bad JSON in an event"), "provider_error"),
])
def test_failures_outside_the_sdks_own_errors_are_mapped_too(error: Exception, code: str) -> None:
    assert provider_error(error).code == code
