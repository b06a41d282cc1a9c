"""A bare WebSocket client over asyncio streams, for what a real client library does for us:
answering pings (or, here, choosing not to)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
TIMEOUT_S = 10.0


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, path: str, rcvbuf: int | None = None) -> RawWebSocket:
        """Connect and upgrade; ``rcvbuf`` shrinks the socket's receive buffer (and the reader's), so that
        a client that stops reading backs the server up after a few frames."""
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connecting: the window
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
        if not response.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {response!r}")
        return cls(reader, writer)

    async def read_frame(self) -> tuple[int, bytes]:
        """``(opcode, payload)`` of the server's next frame (unmasked, never fragmented here)."""
        head = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT_S)
        length = head[1] & 0x7F
        if length >= 126:
            length = int.from_bytes(await self.reader.readexactly(2 if length == 126 else 8), "big")
        return head[0] & 0x0F, await self.reader.readexactly(length)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """A client frame: final, masked, under 64 KiB."""
        mask, size = os.urandom(4), len(payload)
        header = bytes([0x80 | opcode, 0x80 | min(size, 126)]) + (size.to_bytes(2, "big") if size >= 126 else b"")
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def at_eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), TIMEOUT_S) == b""

    def close(self) -> None:
        self.writer.close()
