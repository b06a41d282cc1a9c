"""One error vocabulary: every refusal the relay makes, with its wire code.

A :class:`ProtocolError` carries the ``code`` that goes on the wire, a human ``message`` and, when
the offending frame named one, the client's ``cid`` so the sender can match the refusal to its
message. ``ERROR_CODES`` is the documented table (README "Error codes" mirrors it).
"""

from __future__ import annotations

ERROR_CODES: dict[str, str] = {
    # refusals of a handshake (HTTP status with a JSON body; the socket is never accepted)
    "invalid_room": "The room id (sid) must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'.",
    "invalid_resume": "last_id must be a stream id ('<ms>-<seq>', or '0' for everything) and epoch 1 to 64 "
                      "characters from A-Z, a-z, 0-9, '_' and '-'.",
    "origin_not_allowed": "This page's origin is not allowed to connect.",
    "too_many_connections": "This address has too many connections open to this server.",
    "room_full": "The room already holds the most connections allowed (MAX_CONNECTIONS_PER_ROOM).",
    # refusals of a frame (an 'error' frame to the sender; the connection stays open)
    "invalid_json": "The frame is not valid JSON.",
    "invalid_envelope": "The frame is not an envelope: it needs objects 'hd' and 'bd' and a string 'hd.event'.",
    "unknown_event": "The event is not one this server knows.",
    "invalid_role": "hd.role must be 'A' or 'B' (or absent).",
    "reserved_role": "The role 'llm' is reserved for the server's bot.",
    "role_mismatch": "The frame names a role other than the one this connection is bound to.",
    "empty_text": "bd.text must be a non-empty string.",
    "too_large": "The frame or its text is over the size limit.",
    "unsupported_frame": "Binary frames are not supported; send JSON text frames.",
    "rate_limited": "Too many frames: this one was not processed. Slow down, then send it again.",
    "unavailable": "The message store is unreachable; the message was not stored. Try again.",
    "busy": "The bot is already answering in this room; ask again when its answer has arrived.",
    "unknown_generation": "No generation with this rid is running in this room.",
    "internal": "Internal server error; the message was not processed.",
    # refusals for want of credentials (handshakes and HTTP routes, when AUTH_SECRET is set)
    "unauthorized": "A valid token (or the admin key) is required.",
    "forbidden": "The token does not allow this: it is for another room, or this needs the admin key.",
    # refusals of the HTTP API (an HTTP status with a JSON body; invalid_room and the frame codes apply too)
    "invalid_ttl": "'ttl_s' must be a whole number of seconds.",
    "room_not_found": "The room has no history: there is no stream for it.",
    "invalid_cursor": "'before' and 'after' must be stream ids ('<ms>-<seq>' or '<ms>'), and only one of them.",
    "invalid_limit": "'limit' must be an integer from 1 to 1000.",
    "invalid_participant": "'participant' must be 'A', 'B', 'user' or 'llm'.",
    "invalid_format": "'format' must be 'json' or 'markdown'.",
}


#: The codes of ``llm.error`` frames: why a generation failed (not refusals of a client frame).
LLM_ERROR_CODES: dict[str, str] = {
    "provider_rate_limited": "The model provider is rate limiting requests (HTTP 429).",
    "provider_timeout": "The model provider did not answer in time.",
    "provider_unavailable": "The model provider could not be reached, or the connection dropped.",
    "provider_error": "The model provider answered with an error.",
}


class ProtocolError(Exception):
    """A frame or HTTP request the relay refuses. ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str | None = None, cid: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"undocumented error code {code!r}")
        self.code = code
        self.message = message or ERROR_CODES[code]
        self.cid = cid
        super().__init__(f"{code}: {self.message}")
