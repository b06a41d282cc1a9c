"""The LLM provider port: what a generation asks of a model, and what it gets back.

A :class:`Provider` turns chat messages into one streamed answer. ``provider.stream(messages)``
is an async generator: it yields the answer's text deltas (``str``, never empty) and then exactly
one :class:`Outcome`, or raises :class:`ProviderError` after any number of deltas (the caller has
the partial text it was given). Nothing else escapes it but ``CancelledError``.

Stopping early is how a generation is cancelled: cancel the task iterating it, or stop iterating
and close it. Run it under ``contextlib.aclosing`` so the upstream HTTP stream is closed at once
(no tokens keep being paid for) rather than when the generator is garbage collected.

:func:`build_messages` is the pure half: the room's recent entries as the model sees them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

from protocol.errors import LLM_ERROR_CODES
from protocol.names import LLM_ROLE, PARTICIPANTS
from protocol.names import Event as WireEvent


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Turn:
    """A question put to the bot: who asked (``A``, ``B`` or ``user``) and the text."""

    role: str
    text: str


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a generation ended. ``model`` is the one the provider says answered (not what the room
    is told: ``bd.model`` is always the model asked for); ``usage`` holds its token counts
    (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) when reported."""

    finish_reason: FinishReason
    model: str
    usage: dict[str, int] | None


Event = str | Outcome


class ProviderError(Exception):
    """A generation the provider could not complete: the ``code`` and ``message`` of its ``llm.error``
    frame. ``code`` is one of :data:`protocol.errors.LLM_ERROR_CODES`, whose message is the default.
    ``status`` is the provider's HTTP status, when it answered with one."""

    def __init__(self, code: str, message: str | None = None, status: int | None = None) -> None:
        if code not in LLM_ERROR_CODES:
            raise ValueError(f"undocumented provider error code {code!r}")
        self.code = code
        self.message = message or LLM_ERROR_CODES[code]
        self.status = status
        super().__init__(f"{code}: {self.message}")


#: The code of a provider's HTTP error status; any status not listed is ``provider_error``.
STATUS_CODES: dict[int, str] = {
    400: "provider_bad_request", 404: "provider_bad_request", 422: "provider_bad_request",
    401: "provider_auth", 403: "provider_auth",
    408: "provider_timeout", 504: "provider_timeout",
    429: "provider_rate_limited",
    502: "provider_unavailable", 503: "provider_unavailable",
}
MAX_DETAIL_CHARS = 300  # of the provider's own message, in ``llm.error`` and the log
MASK = "***"
# Key-like strings a provider may echo back: OpenAI-style keys (``sk-...``, ``sk-proj-...``), bearer tokens.
_SECRETS = re.compile(r"\b(sk-(?:[A-Za-z0-9]+-)?)[A-Za-z0-9_*\-]{3,}"
                      r"|(?i:(\bbearer\s+|key\s*[:=]\s*))[A-Za-z0-9_.\-]{8,}")


def status_error(status: int, detail: str, secrets: Sequence[str] = ()) -> ProviderError:
    """The :class:`ProviderError` for a provider's HTTP error ``status`` whose body said ``detail``:
    its message is the code's, then the status and the detail, made safe by :func:`safe_detail`."""
    code = STATUS_CODES.get(status, "provider_error")
    shown = safe_detail(detail, secrets)
    message = f"{LLM_ERROR_CODES[code]} HTTP {status}" + (f": {shown}" if shown else ".")
    return ProviderError(code, message, status)


def safe_detail(detail: str, secrets: Sequence[str] = ()) -> str:
    """A provider's own error message as the room and the log may see it: on one line, every key
    fragment (and each of ``secrets``, the key we sent) masked, cut to :data:`MAX_DETAIL_CHARS`."""
    for secret in secrets:
        if len(secret) >= 8:
            detail = detail.replace(secret, MASK)
    detail = _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + MASK, " ".join(detail.split()))
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[:MAX_DETAIL_CHARS - 1] + "\u2026"


class Provider(Protocol):
    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[Event, None]:
        """Text deltas, then one :class:`Outcome`; see the module docstring for the contract."""
        ...

    async def aclose(self) -> None:
        """Release the provider's connections (at shutdown)."""
        ...


def build_messages(system_prompt: str, history: Sequence[Mapping[str, Any]], turns: int,
                   prompt: Turn | None = None) -> list[ChatMessage]:
    """The chat the model sees: the system prompt, the last ``turns`` messages of ``history``, then
    ``prompt`` (when given) as the final user message.

    ``history`` is the room's entries oldest first, as :func:`server.transcript.message` shows them
    (``participant``, ``event``, ``bd``). A message from ``A``, ``B`` or ``user`` (its ``bd.text``,
    or an ``llm.invoke``'s ``bd.prompt``) becomes a user message ``"<role>: <text>"``; one from
    ``llm`` with a ``bd.text`` becomes an assistant message; any other entry is skipped and does
    not count as a turn. Pass the question either as the last history entry or as ``prompt``,
    not both.
    """
    chat = [message for entry in history if (message := _history_message(entry)) is not None]
    recent = chat[-turns:] if turns > 0 else []
    tail = [user_message(prompt)] if prompt is not None else []
    return [{"role": "system", "content": system_prompt}, *recent, *tail]


def user_message(turn: Turn) -> ChatMessage:
    return {"role": "user", "content": f"{turn.role}: {turn.text}"}


def _history_message(entry: Mapping[str, Any]) -> ChatMessage | None:
    participant, bd = entry.get("participant"), entry.get("bd")
    if participant not in PARTICIPANTS or not isinstance(bd, Mapping):
        return None
    text = bd.get("prompt") if entry.get("event") == WireEvent.LLM_INVOKE else bd.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    if participant == LLM_ROLE:
        return {"role": "assistant", "content": text}
    return user_message(Turn(participant, text))
