"""A WebSocket client speaking the relay's envelopes, for the tests."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

RECV_TIMEOUT_S = 10.0


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, **options: Any) -> Client:
        """Connect; ``options`` go to websockets' ``connect`` (``origin=``, ``local_addr=``, ...)."""
        return cls(await connect(url, open_timeout=10, close_timeout=2, max_size=None, **options))

    async def send(self, hd: dict[str, Any], bd: dict[str, Any] | None = None) -> None:
        await self.send_raw(orjson.dumps({"hd": hd, "bd": {} if bd is None else bd}).decode())

    async def chat(self, text: str, **hd: Any) -> None:
        await self.send({"event": "chat.message", **hd}, {"text": text})

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        """The next frame, parsed."""
        raw = await asyncio.wait_for(self.ws.recv(), timeout_s)
        frame = orjson.loads(raw)
        assert isinstance(frame, dict)
        return frame

    async def recv_n(self, n: int) -> list[dict[str, Any]]:
        return [await self.recv() for _ in range(n)]

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
