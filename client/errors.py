"""The client's one exception: a refusal or an end, with the relay's code and human message."""

from __future__ import annotations

from typing import Any


class RelayError(Exception):
    """The relay refused something, or the room ended.

    ``code`` is a code of the relay's error table (an ``error`` frame's, a refused handshake's), an
    ``llm.error`` code (:meth:`Room.ask`), or ``closed`` (the server closed the connection for good, or
    the room was closed: :attr:`close_code` says which). ``frame`` is the frame that carried it, if any.
    """

    def __init__(self, code: str, message: str, frame: dict[str, Any] | None = None,
                 close_code: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.frame = frame
        self.close_code = close_code
