"""The LLM bot's model access: one port (:mod:`server.llm.provider`), two adapters.

- :mod:`server.llm.openai_provider`: any OpenAI-compatible chat completions API, streamed.
- :mod:`server.llm.scripted`: a deterministic offline stand-in, for the demo and the tests.

:func:`make_provider` picks one from :class:`~server.settings.LLMSettings`. Only the OpenAI
adapter imports ``openai``, and only when it is chosen.
"""

from __future__ import annotations

from server.llm.provider import Provider
from server.llm.scripted import ScriptedProvider
from server.settings import LLMSettings


def make_provider(settings: LLMSettings) -> Provider:
    if settings.provider == "openai":
        from server.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(settings)
    return ScriptedProvider(settings)
