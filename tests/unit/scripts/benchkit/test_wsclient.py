"""The lean client's framing, fed byte literals through a fake transport (no sockets)."""

from __future__ import annotations

import asyncio
import re

import pytest
from benchkit.wsclient import ConnectError, LeanConnection
from websockets.utils import accept_key


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of each frame the client wrote; they must all be masked."""
    frames, pos = [], 0
    while pos < len(data):
        opcode, size = data[pos] & 0x0F, data[pos + 1] & 0x7F
        assert data[pos + 1] & 0x80, "client frames are masked"
        head = {126: 4, 127: 10}.get(size, 2)
        if size >= 126:
            size = int.from_bytes(data[pos + 2:pos + head])
        mask, payload = data[pos + head:pos + head + 4], data[pos + head + 4:pos + head + 4 + size]
        frames.append((opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))))
        pos += head + 4 + size
    return frames


def opened(texts: list[bytes | str], closes: list[str]) -> tuple[LeanConnection, FakeTransport, bytes]:
    """A connection that has sent its upgrade request; the server's 101 answer for it."""
    conn = LeanConnection("127.0.0.1:3000", "/v1/session/chat?sid=r", texts.append, closes.append)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    request = bytes(transport.written)
    transport.written.clear()
    assert request.startswith(b"GET /v1/session/chat?sid=r HTTP/1.1\r\n")
    match = re.search(rb"Sec-WebSocket-Key: (\S+)\r\n", request)
    assert match is not None
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + accept_key(match[1].decode()).encode() + b"\r\n\r\n")
    return conn, transport, answer


LONG = b"x" * 300
SERVER_BYTES = (b"\x81\x05hello"  # a text frame
                + b"\x81\x7e\x01\x2c" + LONG  # one with a 16-bit length
                + b"\x01\x03abc" + b"\x89\x02hi" + b"\x80\x03def"  # a fragmented one, a ping in between
                + b"\x81\x03bye")


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
async def test_text_frames_arrive_whole_and_in_order_however_the_bytes_are_split(chunk: int) -> None:
    texts: list[bytes | str] = []
    conn, transport, answer = opened(texts, [])
    data = answer + SERVER_BYTES

    for pos in range(0, len(data), chunk):
        conn.data_received(data[pos:pos + chunk])

    assert conn.opened.done() and conn.opened.exception() is None
    assert texts == [b"hello", LONG, b"abcdef", b"bye"]
    assert client_frames(bytes(transport.written)) == [(0xA, b"hi")]  # the pong


async def test_frames_sent_in_one_loop_pass_are_written_together_and_masked() -> None:
    conn, transport, answer = opened([], [])
    conn.data_received(answer)

    conn.send(b'{"n":1}')
    conn.send(b"y" * 200)
    assert transport.written == b""
    await asyncio.sleep(0)

    assert client_frames(bytes(transport.written)) == [(0x1, b'{"n":1}'), (0x1, b"y" * 200)]


async def test_a_close_from_the_server_is_answered_and_reported_with_its_code() -> None:
    closes: list[str] = []
    conn, transport, answer = opened([], closes)

    conn.data_received(answer + b"\x88\x06\x03\xf5gone")
    conn.connection_lost(None)

    assert transport.closed
    assert client_frames(bytes(transport.written)) == [(0x8, b"\x03\xf5")]
    assert closes == ["closed by the server: 1013 gone"]


async def test_a_refused_handshake_fails_the_connect_with_the_status_and_the_body() -> None:
    conn, transport, _ = opened([], [])

    conn.data_received(b'HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\r\n{"error": "invalid_room"}')

    with pytest.raises(ConnectError, match=r'HTTP/1.1 400 Bad Request: \{"error": "invalid_room"\}'):
        conn.opened.result()
    assert transport.closed
