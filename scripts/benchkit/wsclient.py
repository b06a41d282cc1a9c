"""Client WebSocket connections for the load, in two interchangeable kinds.

Both hand every text frame to an ``on_text`` callback and take frames to send without awaiting,
so a mode's bookkeeping is plain callbacks and no task per message.

- ``lean`` (the default): an ``asyncio.Protocol`` on the uvloop transport with the RFC 6455
  framing written out here, and websockets' key and masking helpers (the mask in C). On a 2-core
  machine the load generator shares the CPU with the server and Redis, so its cost per frame
  decides how much of a core the server gets: this one costs about 1 us to read a frame, where
  websockets' Sans-I/O parser costs about 5 us.
- ``websockets``: the websockets library's asyncio client, to cross-check the lean one (the same
  run should give the same deliveries and the same verification), at a higher CPU cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, cast
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as library_connect
from websockets.utils import accept_key, generate_key

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

OnText = Callable[[bytes | str], None]
OnClose = Callable[[str], None]  # why the connection ended

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE_BYTES = 65536


class ConnectError(Exception):
    """The server refused the handshake, or did not answer it in time."""


class Connection(Protocol):
    def send(self, text: bytes) -> None:
        """Queue one text frame (UTF-8 bytes); never blocks. Ignored once the connection is closed."""

    def close(self) -> None:
        """Start a normal close; the ``on_close`` callback follows."""


Connect = Callable[[str, OnText, OnClose, float], Awaitable[Connection]]


def close_all(connections: Iterable[Connection | None]) -> None:
    """Close every connection that was opened (None: it never was)."""
    for conn in connections:
        if conn is not None:
            conn.close()


# ----------------------------------------------------------------------------------------- lean
class LeanConnection(asyncio.Protocol):
    def __init__(self, host: str, target: str, on_text: OnText, on_close: OnClose) -> None:
        self._key = generate_key()
        self._request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {self._key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        self._on_text = on_text
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self._outbox: list[bytes] = []  # frames to write at the end of this loop pass
        self._pending = b""  # bytes of an incomplete handshake or frame
        self._fragments: list[bytes] | None = None  # a fragmented text message being assembled
        self._close_reason = "connection lost"
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectError(f"connection lost during the handshake: {exc!r}"))
        else:
            self._on_close(self._close_reason if exc is None else repr(exc))

    def data_received(self, data: bytes) -> None:
        if self._pending:
            data, self._pending = self._pending + data, b""
        if not self.opened.done():
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._pending = data
                if len(data) > MAX_HANDSHAKE_BYTES:
                    self._fail("handshake answer too long")
                return
            if not self._handshake(data[:end].decode("latin-1"), data[end + 4:]):
                return
            data = data[end + 4:]
        self._pending = self._frames(data)

    def send(self, text: bytes) -> None:
        if self.closed or self._transport is None:
            return
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(_client_frame(OP_TEXT, text))

    def _flush(self) -> None:
        """Write the frames queued in this loop pass with one system call (each costs several us)."""
        if self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._outbox))
        self._outbox.clear()

    def close(self) -> None:
        self._send_close(b"\x03\xe8", "closed by the client")  # 1000

    def pause_reading(self) -> None:
        """Stop reading the socket (a reader that falls behind: the server's side of the link fills up)."""
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def _send_close(self, payload: bytes, reason: str) -> None:
        if self._transport is not None and not self.closed:
            self._close_reason = reason
            self._flush()
            self._transport.write(_client_frame(OP_CLOSE, payload))
            self._transport.close()
            self.closed = True

    def _handshake(self, head: str, rest: bytes) -> bool:
        """Check the server's answer to the upgrade request; True when the connection is open."""
        status, *lines = head.split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if not status.startswith("HTTP/1.1 101"):
            self._fail(f"{status}: {rest[:300].decode(errors='replace')}")
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            self._fail("bad Sec-WebSocket-Accept")
        else:
            self.opened.set_result(None)
            return True
        return False

    def _fail(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectError(why))
        if self._transport is not None:
            self._transport.close()

    def _frames(self, data: bytes) -> bytes:
        """Handle every whole frame in ``data``; the incomplete rest."""
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            size, head = b1 & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(data[pos + 2:pos + 4]), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(data[pos + 2:pos + 10]), 10
            if b1 & 0x80:
                self._send_close(b"\x03\xea", "protocol error: masked frame from the server")  # 1002
                return b""
            if end - pos < head + size:
                break
            payload = data[pos + head:pos + head + size]
            pos += head + size
            self._frame(b0 & 0x80 != 0, b0 & 0x0F, payload)
            if self.closed:
                return b""
        return data[pos:]

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT and fin and self._fragments is None:
            self._on_text(payload)  # the hot path
        elif opcode == OP_TEXT:
            self._fragments = [payload]
        elif opcode == OP_CONTINUATION and self._fragments is not None:
            self._fragments.append(payload)
            if fin:
                text, self._fragments = b"".join(self._fragments), None
                self._on_text(text)
        elif opcode == OP_PING:
            if self._transport is not None:
                self._transport.write(_client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
            self._send_close(payload[:2], f"closed by the server: {code} {payload[2:].decode(errors='replace')}")
        elif opcode != OP_PONG:
            self._send_close(b"\x03\xeb", f"unexpected frame (opcode {opcode})")  # 1003


def _client_frame(opcode: int, payload: bytes) -> bytes:
    size, mask = len(payload), random.randbytes(4)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + mask + apply_mask(payload, mask)


async def connect_lean(url: str, on_text: OnText, on_close: OnClose, timeout_s: float) -> Connection:
    return await connect_pausable(url, on_text, on_close, timeout_s)


async def connect_pausable(url: str, on_text: OnText, on_close: OnClose, timeout_s: float,
                           rcvbuf: int | None = None) -> LeanConnection:
    """A lean connection that can stop reading (``pause_reading``); ``rcvbuf`` sets its socket's receive
    buffer before it connects (a small one: the link fills with less)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()

    async def handshake() -> LeanConnection:
        def protocol_factory() -> LeanConnection:
            return LeanConnection(f"{host}:{port}", target, on_text, on_close)

        if rcvbuf is None:
            _, protocol = await loop.create_connection(protocol_factory, host, port)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (host, port))
            except BaseException:
                sock.close()
                raise
            _, protocol = await loop.create_connection(protocol_factory, sock=sock)
        await protocol.opened
        return protocol

    try:
        return await asyncio.wait_for(handshake(), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot connect to {url}: {exc!r}") from exc


# ----------------------------------------------------------------------------------- websockets
class LibraryConnection:
    """websockets' asyncio client behind the same callbacks: a reader task and a writer task."""

    def __init__(self, ws: ClientConnection, on_text: OnText, on_close: OnClose) -> None:
        self._ws = ws
        self._outbox: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._tasks = (asyncio.create_task(self._read(on_text, on_close)), asyncio.create_task(self._write()))

    def send(self, text: bytes) -> None:
        self._outbox.append(text)
        self._wake.set()

    def close(self) -> None:
        self._tasks[1].cancel()
        self._closing = asyncio.create_task(self._ws.close())

    async def _read(self, on_text: OnText, on_close: OnClose) -> None:
        reason = "closed"
        try:
            async for message in self._ws:
                on_text(message)
        except Exception as exc:
            reason = repr(exc)
        on_close(reason)

    async def _write(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    await self._ws.send(self._outbox.popleft().decode())


async def connect_websockets(url: str, on_text: OnText, on_close: OnClose, timeout_s: float) -> Connection:
    try:
        ws = await library_connect(url, open_timeout=timeout_s, close_timeout=2, max_size=None,
                                   ping_interval=None, compression=None)
    except Exception as exc:
        raise ConnectError(f"cannot connect to {url}: {exc!r}") from exc
    return LibraryConnection(ws, on_text, on_close)


CLIENTS: dict[str, Connect] = {"lean": connect_lean, "websockets": connect_websockets}
