"""One error vocabulary: every refusal the relay makes, with its wire code, message and HTTP status.

:data:`ERRORS` is the table, one row per code: what the code refuses (:class:`Refuses`: a WebSocket
handshake, a client frame, an HTTP request; often several), the HTTP status it is answered with
when the answer is HTTP (a handshake or an HTTP request), its default human message, and whether
it is a refusal for want of credentials. How a refusal reaches the client follows from what it
refuses: a refused handshake never opens the connection (an HTTP status and a JSON body
:func:`refusal_body`); a refused frame gets an ``error`` frame and the connection stays open. No
error code closes an open connection: the closes are :mod:`protocol.close`'s table.

A :class:`ProtocolError` carries the ``code`` that goes on the wire, a human ``message``, when
the offending frame named one, the client's ``cid`` so the sender can match the refusal to its
message, and for a refusal that lasts a while (``quota_exceeded``) ``retry_after_s``.
:data:`ERROR_CODES` (code -> default message) is a view of the table; :func:`http_status` is the only
place a code becomes a status. README "Error codes" is checked against the table.

:data:`LLM_ERROR_CODES` are the codes of ``llm.error`` frames: why a generation failed (not a
refusal of anything the client sent), with the message the frame carries by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Flag, auto
from typing import Any


class Refuses(Flag):
    """What an error code refuses, and so how the refusal is answered."""

    HANDSHAKE = auto()  # a WebSocket handshake: an HTTP status and a JSON body; the socket is never accepted
    FRAME = auto()  # one client frame: an ``error`` frame to its sender; the connection stays open
    HTTP = auto()  # a request to the HTTP API: an HTTP status and a JSON body


_HANDSHAKE, _FRAME, _HTTP = Refuses.HANDSHAKE, Refuses.FRAME, Refuses.HTTP
_ANSWERED_OVER_HTTP = Refuses.HANDSHAKE | Refuses.HTTP
FALLBACK_STATUS = 400  # the status of a code that is never answered over HTTP, should it ever be


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One row of :data:`ERRORS`."""

    refuses: Refuses
    status: int | None  # the HTTP status when answered over HTTP; None: only ever an ``error`` frame
    message: str  # the default human message (a refusal may carry a more precise one)
    credentials: bool = False  # refused for want of credentials (only when AUTH_SECRET is set)
    handshake_status: int | None = None  # the handshake's status, when it differs from ``status``


ERRORS: dict[str, ErrorCode] = {
    # refusals of a handshake
    "invalid_room": ErrorCode(
        _HANDSHAKE | _HTTP, 400,
        "The room id (sid) must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'."),
    "invalid_resume": ErrorCode(
        _HANDSHAKE, 400,
        "last_id must be a stream id ('<ms>-<seq>', or '0' for everything) and epoch 1 to 64 "
        "characters from A-Z, a-z, 0-9, '_' and '-'."),
    "origin_not_allowed": ErrorCode(_HANDSHAKE, 403, "This page's origin is not allowed to connect."),
    "too_many_connections": ErrorCode(
        _HANDSHAKE, 429, "This address has too many connections open to this server."),
    "room_full": ErrorCode(
        _HANDSHAKE, 429, "The room already holds the most connections allowed (MAX_CONNECTIONS_PER_ROOM)."),
    # refusals of a frame (and of the same envelope POSTed to the HTTP API)
    "invalid_json": ErrorCode(_FRAME | _HTTP, 400, "The frame is not valid JSON."),
    "invalid_envelope": ErrorCode(
        _FRAME | _HTTP, 400,
        "The frame is not an envelope: it needs objects 'hd' and 'bd' and a string 'hd.event'."),
    "unknown_event": ErrorCode(_FRAME | _HTTP, 400, "The event is not one this server knows."),
    "invalid_role": ErrorCode(_HANDSHAKE | _FRAME | _HTTP, 400, "hd.role must be 'A' or 'B' (or absent)."),
    "reserved_role": ErrorCode(
        _HANDSHAKE | _FRAME | _HTTP, 400, "The role 'llm' is reserved for the server's bot."),
    "role_mismatch": ErrorCode(
        _HANDSHAKE | _FRAME | _HTTP, 400,
        "The frame names a role other than the one this connection is bound to.", handshake_status=403),
    "empty_text": ErrorCode(_FRAME | _HTTP, 400, "bd.text must be a non-empty string."),
    "too_large": ErrorCode(_FRAME | _HTTP, 413, "The frame or its text is over the size limit."),
    "unsupported_frame": ErrorCode(_FRAME, None, "Binary frames are not supported; send JSON text frames."),
    "rate_limited": ErrorCode(
        _FRAME, None, "Too many frames: this one was not processed. Slow down, then send it again."),
    "unavailable": ErrorCode(
        _HANDSHAKE | _FRAME | _HTTP, 503,
        "The message store is unavailable: the message was not acknowledged. Send it again with the same cid"
        " (one that was stored is answered with its stored copy, never stored twice)."),
    "busy": ErrorCode(
        _FRAME, None, "The bot is already answering in this room; ask again when its answer has arrived."),
    "unknown_generation": ErrorCode(
        _FRAME, None, "No generation with this rid is running in this room (llm.cancel), or no answer with this "
        "rid is stored in it (llm.regenerate)."),
    "quota_exceeded": ErrorCode(
        _FRAME, None, "The bot's budget is spent (LLM_ROOM_GENERATIONS_PER_HOUR, LLM_ROOM_TOKENS_PER_DAY or "
        "LLM_TOKENS_PER_DAY): the question is stored but not answered; ask again after retry_after_s seconds."),
    "internal": ErrorCode(
        _HANDSHAKE | _FRAME | _HTTP, 500, "Internal server error; the message was not processed."),
    # refusals for want of credentials (handshakes and HTTP routes, when AUTH_SECRET is set); ``forbidden``
    # also refuses an ``llm.cancel`` of another role's answer (``LLM_CANCEL=asker``), with its own message
    "unauthorized": ErrorCode(
        _HANDSHAKE | _HTTP, 401, "A valid token (or the admin key) is required.", credentials=True),
    "forbidden": ErrorCode(
        _HANDSHAKE | _FRAME | _HTTP, 403,
        "The token does not allow this: it is for another room, or this needs the admin key.", credentials=True),
    # refusals of the HTTP API
    "invalid_ttl": ErrorCode(_HTTP, 400, "'ttl_s' must be a whole number of seconds."),
    "room_not_found": ErrorCode(_HTTP, 404, "The room has no history: there is no stream for it."),
    "invalid_cursor": ErrorCode(
        _HTTP, 400, "'before' and 'after' must be stream ids ('<ms>-<seq>' or '<ms>'), and only one of them."),
    "invalid_limit": ErrorCode(_HTTP, 400, "'limit' must be an integer from 1 to 1000."),
    "invalid_participant": ErrorCode(_HTTP, 400, "'participant' must be 'A', 'B', 'user' or 'llm'."),
    "invalid_format": ErrorCode(_HTTP, 400, "'format' must be 'json' or 'markdown'."),
}

#: code -> default message: a view of :data:`ERRORS`.
ERROR_CODES: dict[str, str] = {code: row.message for code, row in ERRORS.items()}


def http_status(code: str, *, handshake: bool = False) -> int:
    """The HTTP status refusing with ``code``: an HTTP API request's, or a WebSocket handshake's."""
    row = ERRORS.get(code)
    if row is None:
        return FALLBACK_STATUS
    if handshake and row.handshake_status is not None:
        return row.handshake_status
    return row.status if row.status is not None else FALLBACK_STATUS


def refusal_body(code: str, message: str, cid: str | None = None) -> dict[str, Any]:
    """The JSON body of an HTTP refusal (a handshake's or an HTTP request's):
    ``{"error": {"code", "message"[, "cid"]}}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if cid is not None:
        error["cid"] = cid
    return {"error": error}


#: The codes of ``llm.error`` frames, with the message the frame carries unless the failure has a
#: more precise one (:class:`server.llm.provider.ProviderError`).
LLM_ERROR_CODES: dict[str, str] = {
    "provider_auth": "The LLM provider refused the API key, or the key may not use this model "
                     "(check OPENAI_API_KEY and LLM_MODEL).",
    "provider_rate_limited": "The LLM provider is rate limiting us. Try again later.",
    "provider_timeout": "The LLM provider did not finish answering in time.",
    "provider_unavailable": "The LLM provider could not be reached, or the connection dropped mid-answer.",
    "provider_bad_request": "The LLM provider refused the request (a wrong model name, or a conversation too "
                            "long for the model); asking again will not help.",
    "provider_error": "The LLM provider failed to answer.",
    "cancelled": "The answer was cancelled before any text was streamed; nothing was stored.",
    "expired": "The question waited longer than LLM_QUEUE_LEASE_S and another question took the room; ask again.",
    "store_failed": "The answer could not be stored (the store kept failing); ask again.",
}


class ProtocolError(Exception):
    """A frame or HTTP request the relay refuses. ``code`` is one of :data:`ERRORS`."""

    def __init__(self, code: str, message: str | None = None, cid: str | None = None,
                 retry_after_s: int | None = None) -> None:
        if code not in ERRORS:
            raise ValueError(f"undocumented error code {code!r}")
        self.code = code
        self.message = message or ERRORS[code].message
        self.cid = cid
        self.retry_after_s = retry_after_s  # when asking again may succeed (``quota_exceeded``)
        super().__init__(f"{code}: {self.message}")
