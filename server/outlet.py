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

:func:`write_path` tells, without a connection, whether the installed uvicorn offers the direct path
at all: ``python -m server`` logs it at start-up and ``/metrics`` exports it (``chat_write_path``), so
an upgrade that turns it off is seen rather than felt. pyproject.toml pins uvicorn to the range it
was tested with, and the tests fail if the direct path is off under the pinned version.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import uvicorn

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.exceptions import InvalidState
except ImportError:  # pragma: no cover - uvicorn without the websockets package
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]
    InvalidState = RuntimeError  # type: ignore[assignment,misc]

#: What :class:`DirectOutlet` and :func:`outlet_for` use of the protocol object.
PROTOCOL_ATTRIBUTES = ("writable", "close_sent", "disconnected", "conn", "transport", "handshake_complete")
#: What :class:`DirectOutlet` uses of the protocol's websockets connection (``protocol.conn``).
CONNECTION_METHODS = ("send_text", "data_to_send")


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
    if not all(hasattr(protocol, name) for name in PROTOCOL_ATTRIBUTES):
        return None
    if not isinstance(protocol.writable, asyncio.Event) or not protocol.handshake_complete:
        return None
    return DirectOutlet(protocol)


@dataclass(frozen=True)
class WritePath:
    """Which way members' frames are written under the installed uvicorn, and why."""

    direct: bool
    reason: str  # direct: the uvicorn it was checked against; else why :func:`outlet_for` returns None

    def __str__(self) -> str:
        return f"direct ({self.reason})" if self.direct else f"ASGI send ({self.reason})"


@functools.cache
def write_path() -> WritePath:
    """Whether :func:`outlet_for` can hand out :class:`DirectOutlet` objects under the installed uvicorn:
    its sans-I/O WebSocket protocol class, that class's own ``send``, and the attributes the outlet
    uses, found on a protocol object built without a connection."""
    return check_write_path(WebSocketsSansIOProtocol)


def check_write_path(protocol_class: Any) -> WritePath:
    version = ".".join(uvicorn.__version__.split(".")[:2])
    if protocol_class is None:
        return WritePath(False, f"uvicorn {version} has no sans-I/O WebSocket protocol")
    if not inspect.iscoroutinefunction(getattr(protocol_class, "send", None)):
        return WritePath(False, f"uvicorn {version}'s sans-I/O protocol has no send coroutine")
    try:
        probe = _unconnected(protocol_class)
    except Exception as exc:
        return WritePath(False, f"uvicorn {version}'s sans-I/O protocol cannot be built: {exc!r}")
    missing = [name for name in PROTOCOL_ATTRIBUTES if not hasattr(probe, name)]
    missing += [f"conn.{name}" for name in CONNECTION_METHODS if not callable(getattr(probe.conn, name, None))]
    if missing:
        return WritePath(False, f"uvicorn {version}'s sans-I/O protocol has no {', '.join(missing)}")
    if not isinstance(probe.writable, asyncio.Event):
        return WritePath(False, f"uvicorn {version}'s sans-I/O protocol's writable is not an asyncio.Event")
    return WritePath(True, f"uvicorn {version} sans-I/O")


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    """The probe's app: the probe is never connected, so no request reaches it."""


def _unconnected(protocol_class: Any) -> Any:
    """A protocol object as uvicorn builds one per accepted socket, before the socket is attached."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    config = Config(_no_app, ws="websockets-sansio", lifespan="off", log_config=None, ws_per_message_deflate=False)
    config.load()
    loop = asyncio.new_event_loop()  # the object only keeps it; nothing runs on it
    try:
        return protocol_class(config, ServerState(), {}, _loop=loop)
    finally:
        loop.close()
