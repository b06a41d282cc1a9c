"""The LLM bot's settings, read from the environment once, into a frozen object.

Each field has one variable (``LLM_*`` or ``OPENAI_*``, see ``_VARIABLES``); an unset or empty
variable keeps the default. A bad value raises :class:`~server.settings.SettingsError` with a
one-line message naming the variable.

The provider is ``LLM_PROVIDER`` when set, else ``openai`` when ``OPENAI_API_KEY`` is set, else
the offline ``scripted`` one. ``openai`` needs a key, or a base URL (a local OpenAI-compatible
server such as vLLM, Ollama or llama.cpp usually wants none).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from server.settings import SettingsError, _float, _int, _text

ProviderName = Literal["openai", "scripted"]
Trigger = Literal["mention", "explicit", "always"]

PROVIDERS: tuple[ProviderName, ...] = ("openai", "scripted")
TRIGGERS: tuple[Trigger, ...] = ("mention", "explicit", "always")
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant taking part in a group chat. Each user message starts with the "
    "sender's role (A, B or user) and a colon. Answer the latest message briefly and in its language."
)


@dataclass(frozen=True, slots=True)
class LLMSettings:
    provider: ProviderName = "scripted"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None  # None: the SDK's default, api.openai.com
    model: str = "gpt-4o-mini"
    temperature: float | None = None  # None: not sent, the provider's default
    max_tokens: int | None = None  # None: not sent
    timeout_s: float = 60.0  # cap on one whole generation, retries included
    max_retries: int = 2  # the SDK's retries before the first token (it never retries after)
    trigger: Trigger = "mention"
    workers: int = 1  # worker consumers in this process (0: it runs no generation)
    concurrency: int = 100  # generations one worker runs at once
    reclaim_after_s: float = 30.0
    history_turns: int = 10  # room messages the model sees before the prompt
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    scripted_delay_ms: int = 20  # the scripted provider's pause between chunks
    queue: str = "default"  # the request queue this process's triggers and workers use

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LLMSettings:
        values: dict[str, Any] = {}
        for name, (variable, parse) in _VARIABLES.items():
            raw = env.get(variable)
            if raw is not None and raw.strip() != "":
                values[name] = parse(variable, raw)
        values["provider"] = _provider(values.pop("provider", None), values.get("openai_api_key"))
        if values["provider"] == "openai" and not (values.get("openai_api_key") or values.get("openai_base_url")):
            raise SettingsError("LLM_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
        return cls(**values)


def _provider(chosen: ProviderName | None, api_key: str | None) -> ProviderName:
    if chosen is not None:
        return chosen
    return "openai" if api_key else "scripted"


def _choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise SettingsError(f"{name}={raw!r} is not one of {', '.join(options)}")
        return value

    return parse


def _name(name: str, raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise SettingsError(f"{name}={raw!r} must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
    return value


def _http_url(name: str, raw: str) -> str:
    url = raw.strip()
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={raw!r} must start with http:// or https://")
    return url


_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "provider": ("LLM_PROVIDER", _choice(PROVIDERS)),
    "openai_api_key": ("OPENAI_API_KEY", _text),
    "openai_base_url": ("OPENAI_BASE_URL", _http_url),
    "model": ("LLM_MODEL", _text),
    "temperature": ("LLM_TEMPERATURE", _float(0.0, 2.0)),
    "max_tokens": ("LLM_MAX_TOKENS", _int(1, 1_000_000)),
    "timeout_s": ("LLM_TIMEOUT_S", _float(0.0, 3600.0, low_open=True)),
    "max_retries": ("LLM_MAX_RETRIES", _int(0, 10)),
    "trigger": ("LLM_TRIGGER", _choice(TRIGGERS)),
    "workers": ("LLM_WORKERS", _int(0, 1024)),
    "concurrency": ("LLM_CONCURRENCY", _int(1, 100_000)),
    "reclaim_after_s": ("LLM_RECLAIM_AFTER_S", _float(0.0, 86400.0, low_open=True)),
    "history_turns": ("LLM_HISTORY_TURNS", _int(0, 1000)),
    "system_prompt": ("LLM_SYSTEM_PROMPT", _text),
    "scripted_delay_ms": ("LLM_SCRIPTED_DELAY_MS", _int(0, 60_000)),
    "queue": ("LLM_QUEUE", _name),
}
