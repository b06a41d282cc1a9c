"""Size limits applied to client frames."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_MESSAGE_BYTES = 65536
DEFAULT_MAX_TEXT_CHARS = 5000
MAX_CID_CHARS = 64
MAX_JSON_DEPTH = 64  # levels of arrays and objects in a frame, the envelope itself included


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
