"""The offline provider: a deterministic answer, streamed like a model's, with no network.

The reply echoes the last user message and adds a fixed explanation: about 40 words, streamed
:data:`WORDS_PER_CHUNK` words at a time, one chunk every ``LLM_SCRIPTED_DELAY_MS`` (on a fixed schedule from
the first, as a model's tokens arrive: a busy event loop makes a chunk late, not the ones after it). A last user
message containing :data:`LONG_MARKER` (``#long``) gets the explanation :data:`LONG_REPEAT` times
(about 300 words, several seconds at the default pause), so a test can cancel it mid-answer.
``LLM_MAX_TOKENS`` (counted in words) cuts the reply short with finish reason ``length``.
Usage counts words as tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from server.llm.provider import ChatMessage, Event, FinishReason, Outcome
from server.settings import LLMSettings

MODEL = "scripted-1"
WORDS_PER_CHUNK = 3
LONG_MARKER = "#long"
LONG_REPEAT = 8
ECHO_WORDS = 20
EXPLANATION = (
    "This answer comes from the offline scripted provider: it streams a few words at a time, with a "
    "short pause between chunks, so the demo and the tests run without a network or an API key."
)


def scripted_reply(messages: Sequence[ChatMessage]) -> str:
    """The whole reply to ``messages``, before any ``max_tokens`` cut."""
    asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    words = asked.split()
    echo = " ".join(words[:ECHO_WORDS]) + (" ..." if len(words) > ECHO_WORDS else "")
    repeat = LONG_REPEAT if LONG_MARKER in asked else 1
    return " ".join([f"You said: {echo}." if echo else "Nothing was asked.", *[EXPLANATION] * repeat])


class ScriptedProvider:
    def __init__(self, settings: LLMSettings) -> None:
        self._delay_s = settings.scripted_delay_ms / 1000
        self._max_words = settings.max_tokens

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[Event, None]:
        words = scripted_reply(messages).split(" ")
        finish_reason: FinishReason = "stop"
        if self._max_words is not None and len(words) > self._max_words:
            words, finish_reason = words[:self._max_words], "length"
        loop = asyncio.get_running_loop()
        due = loop.time()
        for start in range(0, len(words), WORDS_PER_CHUNK):
            if start:  # on a fixed schedule, like a model's stream: a late wake-up does not slow the rest
                due += self._delay_s
                await asyncio.sleep(max(0.0, due - loop.time()))
            yield (" " if start else "") + " ".join(words[start:start + WORDS_PER_CHUNK])
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        yield Outcome(finish_reason, MODEL, usage)

    async def aclose(self) -> None:
        pass
