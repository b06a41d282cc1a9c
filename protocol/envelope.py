"""Client envelopes: one JSON text frame in, a validated :class:`ClientEnvelope` or a
:class:`~protocol.errors.ProtocolError` out.

Checks run in a fixed order, so every bad frame has exactly one answer: size, JSON (as
:mod:`protocol.decode` accepts it), envelope shape (``hd``/``bd`` objects, ``hd.event`` string,
``hd.cid``), known event, role, then the event's own body rules. The parser never raises anything but ``ProtocolError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.decode import decode_json
from protocol.errors import ProtocolError
from protocol.limits import MAX_CID_CHARS, Limits
from protocol.names import CLIENT_EVENTS, CLIENT_ROLES, DEFAULT_ROLE, LLM_ROLE, Event


@dataclass(frozen=True, slots=True)
class ClientEnvelope:
    """A frame that passed validation. ``role`` is resolved: ``A``, ``B`` or ``user``."""

    event: str
    role: str
    cid: str | None
    bd: dict[str, Any]


def parse_frame(frame: str | bytes, limits: Limits, bound_role: str | None = None) -> ClientEnvelope:
    """Validate one client text frame.

    ``bound_role`` is the role the connection was opened with (``?role=A``), if any: frames may
    then omit ``hd.role`` and must not name another one.
    """
    _check_size(frame, limits.max_message_bytes)
    hd, bd = _split(decode_json(frame))
    cid = _cid(hd)
    event = hd["event"]
    if event not in CLIENT_EVENTS:
        raise ProtocolError("unknown_event", f"Unknown event {_show(event)}.", cid)
    role = _role(hd, bound_role, cid)
    _BODY_RULES[event](bd, limits, cid)
    return ClientEnvelope(event=event, role=role, cid=cid, bd=bd)


def frame_cid(frame: str | bytes, limits: Limits) -> str | None:
    """The frame's valid ``hd.cid``, if any: for answering a frame refused before it is processed."""
    try:
        return parse_frame(frame, limits).cid
    except ProtocolError as exc:
        return exc.cid


def _check_size(frame: str | bytes, max_bytes: int) -> None:
    size = len(frame)
    if isinstance(frame, str) and size * 4 > max_bytes:  # UTF-8 takes 1..4 bytes per character
        size = len(frame.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError("too_large", f"The frame is {size} bytes; the limit is {max_bytes}.")


def _split(data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(data, dict):
        raise ProtocolError("invalid_envelope", "The frame must be a JSON object with 'hd' and 'bd'.")
    hd, bd = data.get("hd"), data.get("bd")
    if not isinstance(hd, dict):
        raise ProtocolError("invalid_envelope", "'hd' must be a JSON object.")
    cid = hd.get("cid") if _is_cid(hd.get("cid")) else None
    if not isinstance(hd.get("event"), str):
        raise ProtocolError("invalid_envelope", "'hd.event' must be a string.", cid)
    if not isinstance(bd, dict):
        raise ProtocolError("invalid_envelope", "'bd' must be a JSON object.", cid)
    return hd, bd


def _is_cid(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_CID_CHARS


def _cid(hd: dict[str, Any]) -> str | None:
    if "cid" not in hd:
        return None
    cid = hd["cid"]
    if not _is_cid(cid):
        raise ProtocolError("invalid_envelope", f"'hd.cid' must be a string of 1 to {MAX_CID_CHARS} characters.")
    return str(cid)


def _role(hd: dict[str, Any], bound_role: str | None, cid: str | None) -> str:
    if "role" not in hd:
        return bound_role or DEFAULT_ROLE
    role = hd["role"]
    if role == LLM_ROLE:
        raise ProtocolError("reserved_role", cid=cid)
    if not isinstance(role, str) or role not in CLIENT_ROLES:
        raise ProtocolError("invalid_role", f"Invalid role {_show(role)}: use 'A' or 'B', or leave it out.", cid)
    if bound_role is not None and role != bound_role:
        raise ProtocolError(
            "role_mismatch", f"This connection is bound to role {bound_role!r}, not {role!r}.", cid
        )
    return str(role)


def _chat_message(bd: dict[str, Any], limits: Limits, cid: str | None) -> None:
    text = bd.get("text")
    if text is None:
        raise ProtocolError("empty_text", "chat.message needs 'bd.text', a non-empty string.", cid)
    if not isinstance(text, str):
        raise ProtocolError("invalid_envelope", "'bd.text' must be a string.", cid)
    if not text.strip():
        raise ProtocolError("empty_text", "'bd.text' is empty or only whitespace.", cid)
    _check_length("bd.text", text, limits, cid)


def _llm_invoke(bd: dict[str, Any], limits: Limits, cid: str | None) -> None:
    prompt = bd.get("prompt")
    if prompt is None:
        return  # no prompt: answer the conversation so far
    if not isinstance(prompt, str):
        raise ProtocolError("invalid_envelope", "'bd.prompt' must be a string (or absent).", cid)
    _check_length("bd.prompt", prompt, limits, cid)


def _check_length(name: str, text: str, limits: Limits, cid: str | None) -> None:
    if len(text) > limits.max_text_chars:
        raise ProtocolError(
            "too_large", f"'{name}' has {len(text)} characters; the limit is {limits.max_text_chars}.", cid
        )


def _llm_cancel(bd: dict[str, Any], limits: Limits, cid: str | None) -> None:
    rid = bd.get("rid")
    if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_CID_CHARS:
        raise ProtocolError("invalid_envelope", "llm.cancel needs 'bd.rid', the generation id to stop.", cid)


def _llm_regenerate(bd: dict[str, Any], limits: Limits, cid: str | None) -> None:
    rid = bd.get("rid")
    if not isinstance(rid, str) or not 1 <= len(rid) <= MAX_CID_CHARS:
        raise ProtocolError("invalid_envelope", "llm.regenerate needs 'bd.rid', the id of the answer to give again.",
                            cid)


_BODY_RULES: dict[str, Callable[[dict[str, Any], Limits, str | None], None]] = {
    Event.CHAT_MESSAGE: _chat_message,
    Event.LLM_INVOKE: _llm_invoke,
    Event.LLM_CANCEL: _llm_cancel,
    Event.LLM_REGENERATE: _llm_regenerate,
}


def _show(value: Any) -> str:
    """A short, safe rendering of a client value for an error message (never the repr of a container,
    which may be long or deep)."""
    if isinstance(value, dict | list):
        return "{...}" if isinstance(value, dict) else "[...]"
    text = repr(value[:40] if isinstance(value, str) else value)
    return text if len(text) <= 40 else text[:37] + "..."
