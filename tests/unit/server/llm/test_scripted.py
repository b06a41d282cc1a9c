"""The scripted provider: deterministic, offline, streamed in chunks like a model."""

from __future__ import annotations

import contextlib

from server.llm.provider import ChatMessage, Outcome
from server.llm.scripted import EXPLANATION, MODEL, ScriptedProvider
from server.settings import LLMSettings

ASKED: list[ChatMessage] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A: hello bot"}]


async def run(provider: ScriptedProvider, messages: list[ChatMessage]) -> tuple[list[str], Outcome]:
    deltas: list[str] = []
    async with contextlib.aclosing(provider.stream(messages)) as events:
        async for event in events:
            if isinstance(event, Outcome):
                return deltas, event
            deltas.append(event)
    raise AssertionError("the stream ended without an outcome")


def scripted(**env: str) -> ScriptedProvider:
    return ScriptedProvider(LLMSettings.from_env({"LLM_SCRIPTED_DELAY_MS": "0", **env}))


async def test_the_reply_echoes_the_prompt_in_several_chunks_and_reports_usage() -> None:
    deltas, outcome = await run(scripted(), ASKED)
    text = "".join(deltas)
    assert text == f"You said: A: hello bot. {EXPLANATION}"
    assert len(deltas) > 10 and all(deltas)
    words = len(text.split())
    assert 20 <= words <= 60
    assert outcome == Outcome("stop", MODEL, {"prompt_tokens": 5, "completion_tokens": words,
                                              "total_tokens": 5 + words})
    assert MODEL == "scripted-1"


async def test_the_same_messages_give_the_same_chunks() -> None:
    assert await run(scripted(), ASKED) == await run(scripted(LLM_SCRIPTED_DELAY_MS="1"), ASKED)


async def test_the_long_marker_makes_the_reply_several_times_longer() -> None:
    deltas, outcome = await run(scripted(), [{"role": "user", "content": "A: tell me everything #long"}])
    assert "".join(deltas).count(EXPLANATION) == 8
    assert outcome.usage is not None and outcome.usage["completion_tokens"] > 250


async def test_max_tokens_cuts_the_reply_with_finish_reason_length() -> None:
    deltas, outcome = await run(scripted(LLM_MAX_TOKENS="5"), ASKED)
    assert "".join(deltas) == "You said: A: hello bot."
    assert outcome.finish_reason == "length"
