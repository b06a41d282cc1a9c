"""Writing text frames to a WebSocket without a coroutine per frame.

An ASGI ``send`` is a coroutine call per frame, and the member's writer task must be woken to make
it: on a relay that fans every message out to several members, those wake-ups and one ``write``
system call per frame are most of the work. Under uvicorn's sans-I/O WebSocket protocol (the one
``python -m server`` runs) the ASGI ``send`` callable is a bound method of the connection's
protocol object, whose ``send`` does, for a text frame: wait until the transport is writable,
encode the frame with the websockets state machine, write the bytes. :class:`DirectOutlet` does the
same, synchronously, for all of a member's queued frames at once, in one ``write``.

:func:`outlet_for` returns None for any other ``send`` (another server, another WebSocket
implementation, a wrapped ``send``): the member then uses its writer task and the ASGI ``send``.
``tests/server/test_outlet.py`` checks the direct path against the uvicorn that is installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.exceptions import InvalidState
except ImportError:  # pragma: no cover - uvicorn without the websockets package
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]
    InvalidState = RuntimeError  # type: ignore[assignment,misc]


class Gone(Exception):
    """The connection can no longer be written to (the client closed it or went away)."""


class DirectOutlet:
    """The write side of one accepted uvicorn sans-I/O WebSocket connection."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def write(self, frames: Iterable[str]) -> bool:
        """Write ``frames`` as text frames in one go; False (nothing written) while the transport
        is not writable (its buffer is over the high-water mark). Raises :class:`Gone`."""
        protocol = self._protocol
        if not protocol.writable.is_set():
            return False
        if protocol.close_sent or protocol.disconnected:
            raise Gone
        conn = protocol.conn
        try:
            for frame in frames:
                conn.send_text(frame.encode())
        except InvalidState as exc:  # the closing handshake has started
            raise Gone from exc
        protocol.transport.write(b"".join(conn.data_to_send()))
        return True

    async def writable(self) -> None:
        """Wait until the transport takes more bytes (or the connection is lost)."""
        await self._protocol.writable.wait()


def outlet_for(send: Any) -> DirectOutlet | None:
    """A :class:`DirectOutlet` when ``send`` is the ``send`` of an accepted uvicorn sans-I/O
    WebSocket connection, else None."""
    protocol = getattr(send, "__self__", None)
    if WebSocketsSansIOProtocol is None or not isinstance(protocol, WebSocketsSansIOProtocol):
        return None
    if getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
        return None
    if not all(hasattr(protocol, name) for name in ("writable", "close_sent", "disconnected", "conn", "transport")):
        return None
    if not isinstance(protocol.writable, asyncio.Event) or not protocol.handshake_complete:
        return None
    return DirectOutlet(protocol)
