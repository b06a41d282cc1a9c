"""The chat relay's wire protocol, free of I/O.

Text in, validated envelopes or a typed :class:`ProtocolError` out; frames serialized with
orjson in one codec module. Nothing here imports asyncio, Starlette, Redis or OpenAI.
"""

from protocol.codec import error_frame, format_ts, frame_with_id, stored_body
from protocol.envelope import ClientEnvelope, parse_frame
from protocol.errors import ERROR_CODES, ProtocolError
from protocol.limits import Limits
from protocol.names import (
    CLIENT_EVENTS,
    CLIENT_ROLES,
    DEFAULT_ROLE,
    LLM_ROLE,
    PARTICIPANTS,
    Event,
    is_valid_room,
    is_valid_stream_id,
)

__all__ = [
    "CLIENT_EVENTS",
    "CLIENT_ROLES",
    "DEFAULT_ROLE",
    "ERROR_CODES",
    "LLM_ROLE",
    "PARTICIPANTS",
    "ClientEnvelope",
    "Event",
    "Limits",
    "ProtocolError",
    "error_frame",
    "format_ts",
    "frame_with_id",
    "is_valid_room",
    "is_valid_stream_id",
    "parse_frame",
    "stored_body",
]
