"""Event names, roles, room ids and stream ids: the protocol's nouns (Redis key names live in
:mod:`server.store.keys`)."""

from __future__ import annotations

import re
from enum import StrEnum


class Event(StrEnum):
    CHAT_MESSAGE = "chat.message"
    ERROR = "error"
    LLM_INVOKE = "llm.invoke"
    LLM_CANCEL = "llm.cancel"
    LLM_REGENERATE = "llm.regenerate"
    LLM_STREAMING = "llm.streaming"
    LLM_SNAPSHOT = "llm.snapshot"
    LLM_QUEUED = "llm.queued"
    LLM_RESPONSE = "llm.response"
    LLM_ERROR = "llm.error"
    SESSION_READY = "session.ready"
    PRESENCE_JOIN = "presence.join"
    PRESENCE_LEAVE = "presence.leave"


CLIENT_EVENTS: frozenset[str] = frozenset({Event.CHAT_MESSAGE, Event.LLM_INVOKE, Event.LLM_CANCEL,
                                           Event.LLM_REGENERATE})
STORED_EVENTS: frozenset[str] = frozenset({Event.CHAT_MESSAGE, Event.LLM_INVOKE, Event.LLM_RESPONSE})

CLIENT_ROLES: frozenset[str] = frozenset({"A", "B"})
DEFAULT_ROLE = "user"  # a frame without hd.role, on a connection not bound to a role
LLM_ROLE = "llm"  # reserved for the server's bot
PARTICIPANTS: frozenset[str] = CLIENT_ROLES | {DEFAULT_ROLE, LLM_ROLE}  # what an entry's participant may be

_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ROOM = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM_ID = re.compile(r"(0|[1-9][0-9]{0,19})(-(0|[1-9][0-9]{0,19}))?")
_MAX_ID_PART = 2**64 - 1


def is_valid_room(room: str) -> bool:
    return _ROOM.fullmatch(room) is not None


def is_valid_epoch(epoch: str) -> bool:
    return _EPOCH.fullmatch(epoch) is not None


def is_valid_stream_id(value: str) -> bool:
    """True for a Redis stream id ``ms`` or ``ms-seq`` whose parts fit in 64 bits."""
    if _STREAM_ID.fullmatch(value) is None:
        return False
    return all(int(part) <= _MAX_ID_PART for part in value.split("-"))
