"""Settings, read from the environment once, into a frozen object.

Nothing else in the server reads ``os.environ``. A bad value raises :class:`SettingsError` with a
one-line message naming the variable; ``python -m server`` prints it and exits with status 2.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from protocol.limits import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TEXT_CHARS, Limits
from server import logs
from server.ratelimit import RateLimit

T = TypeVar("T")
PROGRAM = "chat-relay"  # how ``python -m server`` names itself in its refusals
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class SettingsError(ValueError):
    """A setting with a bad value; ``str()`` is the one-line message for the operator."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 3000
    redis_url: str | None = None  # None: the embedded in-process store
    redis_timeout_s: float = 10.0  # a Redis reply later than this fails its command (the store is unavailable)
    log_level: str = "info"
    log_format: str = "text"  # "json": one JSON object per line (server/logs.py)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    stream_maxlen: int = 10000  # approximate length each room's stream is trimmed to (0 = unbounded)
    history_page_max_bytes: int = 1 << 20  # a history page stops before passing it (holding one entry at least)
    room_ttl_seconds: int = 7 * 24 * 3600  # expiry renewed by the writes (0 = never; README: its slack)
    append_gather_ms: int = 0  # a batch of appends goes to Redis no sooner than this after the last one
    send_queue_max: int = 1024  # frames waiting for one slow member before it is disconnected
    dedupe_window_s: int = 300  # how long a (room, role, cid) is remembered for exactly-once sends (0 = off)
    node_ttl_s: int = 30  # a process that stops beating for this long is dead: its members leave rosters
    auth_secret: str | None = field(default=None, repr=False)  # set: tokens are required (JWT HS256 key)
    admin_key: str | None = field(default=None, repr=False)  # the bearer key that creates rooms
    auth_token_ttl_s: int = 24 * 3600  # lifetime of the tokens POST /v1/session issues
    metrics_token: str | None = field(default=None, repr=False)  # set: /metrics needs it as a bearer credential
    llm: LLMSettings = field(default_factory=lambda: _llm_settings({}))  # the bot's settings (LLM_*, OPENAI_*)
    allowed_origins: frozenset[str] = frozenset()  # browser origins allowed to connect (empty: any)
    rate_limit_per_sec: float = 50.0  # frames a connection may send per second, after its burst (0 = no limit)
    rate_limit_burst: int = 200  # frames a connection may send at once
    max_connections_per_ip: int = 0  # open connections per client address on this node (0 = no limit)
    max_connections_per_room: int = 0  # connections in one room, on all nodes (0 = no limit)
    ping_interval_s: float = 20.0  # WebSocket ping to each client this often (0 = never)
    ping_timeout_s: float = 20.0  # close a connection whose pong is this late (1011; 0 = wait forever)
    workers: int = 1  # processes serving the port, each a node of its own (0: one per core)
    redis_min_replicas: int = 0  # replicas each append waits for (WAIT) before it is delivered (0: none)
    redis_min_replicas_timeout_ms: int = 1000  # how long that WAIT may take; short of replicas: not acknowledged

    @property
    def limits(self) -> Limits:
        return Limits(max_message_bytes=self.max_message_bytes, max_text_chars=self.max_text_chars)

    @property
    def rate_limit(self) -> RateLimit:
        return RateLimit(self.rate_limit_per_sec, self.rate_limit_burst)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value among the settings: no log line may show one (:mod:`server.redact`)."""
        password = urlsplit(self.redis_url).password if self.redis_url else None
        values = (self.auth_secret, self.admin_key, self.metrics_token, self.llm.openai_api_key, password)
        return tuple(value for value in values if value)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {"llm": _llm_settings(env)}
        for setting in fields(cls):
            name, parse = setting.name.upper(), _PARSERS.get(setting.name)
            raw = env.get(name)
            if parse is None or raw is None or raw == "":
                continue
            values[setting.name] = parse(name, raw)
        settings = cls(**values)
        if settings.auth_secret is not None and settings.admin_key is None:
            raise SettingsError("AUTH_SECRET is set but ADMIN_KEY is not: nobody could create a room")
        if settings.workers != 1 and settings.redis_url is None:
            raise SettingsError(f"WORKERS={settings.workers} needs REDIS_URL: the embedded store lives inside one "
                                "process (set REDIS_URL, or WORKERS=1)")
        if settings.redis_min_replicas and settings.redis_url is None:
            raise SettingsError(f"REDIS_MIN_REPLICAS={settings.redis_min_replicas} needs REDIS_URL: the embedded store"
                                " has no replicas")
        if settings.redis_min_replicas and settings.redis_min_replicas_timeout_ms >= settings.redis_timeout_s * 1000:
            raise SettingsError(f"REDIS_MIN_REPLICAS_TIMEOUT_MS={settings.redis_min_replicas_timeout_ms} must be"
                                f" shorter than REDIS_TIMEOUT_S={settings.redis_timeout_s:g} s (the WAIT's reply would"
                                " time out first)")
        return settings

    def worker_processes(self, cores: int) -> int:
        """How many processes serve the port: ``WORKERS``, or one per core (``cores``) when it is 0."""
        return self.workers or max(cores, 1)


def _llm_settings(env: Mapping[str, str]) -> LLMSettings:
    return LLMSettings.from_env(env)


def _int(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not an integer") from None
        if not low <= value <= high:
            raise SettingsError(f"{name}={value} is out of range ({low}..{high})")
        return value

    return parse


def _float(low: float, high: float, *, low_open: bool = False) -> Callable[[str, str], float]:
    """A number from ``low`` to ``high`` (above ``low`` when ``low_open``)."""
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        in_range = low < value <= high if low_open else low <= value <= high
        if not (math.isfinite(value) and in_range):
            raise SettingsError(f"{name}={raw.strip()} is out of range ({'>' if low_open else ''}{low}..{high})")
        return value

    return parse


def _secret(min_chars: int) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip()
        if len(value) < min_chars:
            raise SettingsError(f"{name} is too short: use at least {min_chars} characters")
        return value

    return parse


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+|null")


def _origins(name: str, raw: str) -> frozenset[str]:
    origins = [part.strip().lower() for part in raw.split(",") if part.strip()]
    for origin in origins:
        if _ORIGIN.fullmatch(origin) is None:
            raise SettingsError(f"{name}: {origin!r} is not an origin (scheme://host[:port], no path)")
    return frozenset(origins)


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _log_level(name: str, raw: str) -> str:
    level = raw.strip().lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{name}={raw!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _log_format(name: str, raw: str) -> str:
    log_format = raw.strip().lower()
    if log_format not in logs.FORMATS:
        raise SettingsError(f"{name}={raw!r} is not one of {', '.join(logs.FORMATS)}")
    return log_format


def _redis_url(name: str, raw: str) -> str:
    url = raw.strip()
    if not url.startswith(("redis://", "rediss://", "unix://")):  # not echoed: it may hold a password
        raise SettingsError(f"{name} must start with redis://, rediss:// or unix:// (it starts with "
                            f"{url.partition(':')[0]!r})")
    return url


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "host": _text,
    "port": _int(0, 65535),
    "redis_url": _redis_url,
    "log_level": _log_level,
    "log_format": _log_format,
    "max_message_bytes": _int(256, 16 * 1024 * 1024),
    "max_text_chars": _int(1, 1024 * 1024),
    "stream_maxlen": _int(0, 2**31),
    "history_page_max_bytes": _int(1, 1 << 30),
    "append_gather_ms": _int(0, 1000),
    "room_ttl_seconds": _int(0, 10 * 365 * 24 * 3600),
    "send_queue_max": _int(1, 1_000_000),
    "dedupe_window_s": _int(0, 7 * 24 * 3600),
    "node_ttl_s": _int(3, 3600),
    "redis_timeout_s": _float(0.0, 600.0, low_open=True),
    "auth_secret": _secret(32),  # HS256 wants a key of at least 256 bits
    "admin_key": _secret(16),
    "auth_token_ttl_s": _int(1, 366 * 24 * 3600),
    "metrics_token": _secret(16),
    "allowed_origins": _origins,
    "rate_limit_per_sec": _float(0, 1_000_000),
    "rate_limit_burst": _int(1, 1_000_000),
    "max_connections_per_ip": _int(0, 10_000_000),
    "max_connections_per_room": _int(0, 10_000_000),
    "ping_interval_s": _float(0, 24 * 3600),
    "ping_timeout_s": _float(0, 24 * 3600),
    "workers": _int(0, 1024),
    "redis_min_replicas": _int(0, 64),
    "redis_min_replicas_timeout_ms": _int(1, 600_000),
}


# The LLM bot's settings.
#
# The LLM bot's settings, read from the environment once, into a frozen object.
#
# Each field has one variable (``LLM_*`` or ``OPENAI_*``, see ``_VARIABLES``); an unset or empty
# variable keeps the default. A bad value raises :class:`~server.settings.SettingsError` with a
# one-line message naming the variable.
#
# The provider is ``LLM_PROVIDER`` when set, else ``openai`` when ``OPENAI_API_KEY`` is set, else
# the offline ``scripted`` one. ``openai`` needs a key, or a base URL (a local OpenAI-compatible
# server such as vLLM, Ollama or llama.cpp usually wants none).

ProviderName = Literal["openai", "scripted"]
Trigger = Literal["mention", "explicit", "always"]
CancelScope = Literal["any", "asker"]
Turns = Literal["queue", "refuse", "interrupt"]

PROVIDERS: tuple[ProviderName, ...] = ("openai", "scripted")
TRIGGERS: tuple[Trigger, ...] = ("mention", "explicit", "always")
CANCEL_SCOPES: tuple[CancelScope, ...] = ("any", "asker")
TURNS: tuple[Turns, ...] = ("queue", "refuse", "interrupt")
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant taking part in a group chat. Each user message starts with the "
    "sender's role (A, B or user) and a colon. Answer the latest message briefly and in its language."
)


@dataclass(frozen=True, slots=True)
class Budgets:
    """The cost guard's limits (:mod:`server.llm.quota`; None: no limit)."""

    generations_per_hour: int | None = 60  # per room, in a sliding hour
    room_tokens_per_day: int | None = None  # per room, per UTC day
    tokens_per_day: int | None = None  # the whole deployment's, per UTC day


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
    cancel: CancelScope = "any"  # who may stop an answer: any human in the room, or only the role that asked
    turns: Turns = "queue"  # a question while the bot answers: waits its turn, is refused (busy), or interrupts
    queue_per_room: int = 5  # questions that may wait for their turn in one room (LLM_TURNS=queue)
    workers: int = 1  # worker consumers in this process (0: it runs no generation)
    concurrency: int = 100  # generations one worker runs at once
    reclaim_after_s: float = 30.0
    queue_lease_s: float = 600.0  # how long a queued question keeps its room before a worker starts it
    join_lease_s: float = 30.0  # how long a question keeps its turn before its request is queued (a relay died)
    history_turns: int = 10  # room messages the model sees before the prompt
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    scripted_delay_ms: int = 20  # the scripted provider's pause between chunks
    queue: str = "default"  # the request queue this process's triggers and workers use
    room_generations_per_hour: int | None = 60  # questions a room may have answered in a sliding hour (None: any)
    room_tokens_per_day: int | None = None  # tokens a room's answers may use per UTC day (None: any)
    tokens_per_day: int | None = None  # tokens every room's answers together may use per UTC day (None: any)

    @property
    def budgets(self) -> Budgets:
        """The cost guard's limits."""
        return Budgets(self.room_generations_per_hour, self.room_tokens_per_day, self.tokens_per_day)

    @property
    def queue_lease_ms(self) -> int:
        """The room lock's lease while its question waits in the queue (set by the front)."""
        return max(1, int(self.queue_lease_s * 1000))

    @property
    def join_lease_ms(self) -> int:
        """The turn's lease from the moment a question takes it until its request is queued (then the
        queued lease): what a relay dying in between costs the room. At most the queued lease."""
        return max(1, int(min(self.join_lease_s, self.queue_lease_s) * 1000))

    @property
    def running_lease_ms(self) -> int:
        """The room lock's lease while its question is answered, renewed by the worker every
        :attr:`keepalive_s`: twice ``LLM_RECLAIM_AFTER_S``, so a dead worker's question is taken over
        (and fenced again) by another worker before the room could be given to another question."""
        return max(1, int(2 * self.reclaim_after_s * 1000))

    @property
    def keepalive_s(self) -> float:
        """How often a worker renews its locks and its claims on the requests it runs."""
        return min(self.reclaim_after_s / 3, 5.0)

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


def _limit(high: int) -> Callable[[str, str], int | None]:
    """A budget: a whole number from 0 (no limit: None) to ``high``."""
    number = _int(0, high)

    def parse(name: str, raw: str) -> int | None:
        return number(name, raw) or None

    return parse


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
    "cancel": ("LLM_CANCEL", _choice(CANCEL_SCOPES)),
    "turns": ("LLM_TURNS", _choice(TURNS)),
    "queue_per_room": ("LLM_QUEUE_PER_ROOM", _int(1, 1000)),
    "workers": ("LLM_WORKERS", _int(0, 1024)),
    "concurrency": ("LLM_CONCURRENCY", _int(1, 100_000)),
    "reclaim_after_s": ("LLM_RECLAIM_AFTER_S", _float(0.0, 86400.0, low_open=True)),
    "queue_lease_s": ("LLM_QUEUE_LEASE_S", _float(0.0, 86400.0, low_open=True)),
    "join_lease_s": ("LLM_JOIN_LEASE_S", _float(0.0, 86400.0, low_open=True)),
    "history_turns": ("LLM_HISTORY_TURNS", _int(0, 1000)),
    "system_prompt": ("LLM_SYSTEM_PROMPT", _text),
    "scripted_delay_ms": ("LLM_SCRIPTED_DELAY_MS", _int(0, 60_000)),
    "queue": ("LLM_QUEUE", _name),
    "room_generations_per_hour": ("LLM_ROOM_GENERATIONS_PER_HOUR", _limit(1_000_000)),
    "room_tokens_per_day": ("LLM_ROOM_TOKENS_PER_DAY", _limit(10**15)),
    "tokens_per_day": ("LLM_TOKENS_PER_DAY", _limit(10**15)),
}


def settings_or_exit(program: str, env: Mapping[str, str]) -> Settings:
    """The settings, or exit with status 2 and a one-line message naming the bad variable; then
    logging is set up at their ``LOG_LEVEL`` in their ``LOG_FORMAT``, every line redacted (:mod:`server.logs`)."""
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"{program}: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(log_level_number(settings.log_level), settings.log_format, settings.secrets)
    return settings


def settings_from_environment(program: str = PROGRAM) -> Settings:
    """:func:`settings_or_exit` on this process's environment (each of ``WORKERS``' processes reads
    it again: the main process hands its environment down)."""
    return settings_or_exit(program, os.environ)


def label_logs(label: str) -> None:
    """Every line this process writes from now on names ``label`` after its level (``node <id>`` in
    a worker process of ``WORKERS``: several processes write to one output)."""
    formatter = logging.Formatter(logs.TEXT_FORMAT.replace("%(name)s", f"[{label.replace('%', '%%')}] %(name)s"))
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, logs.JsonFormatter):  # JSON lines carry the node already
            handler.setFormatter(formatter)


def log_level_number(level: str) -> int:
    return int(logging.getLevelName(level.upper()))
