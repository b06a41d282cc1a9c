"""A WebSocket client speaking the relay's envelopes, for the tests.

:meth:`Client.open` reads up to the ``session.ready`` frame: what came before it is the resume's
replay (:attr:`Client.replayed`). :meth:`Client.recv` returns the next frame except presence
frames, which go to :attr:`Client.presence` (use :meth:`Client.recv_presence` to wait for one).
Every frame received is checked against ``protocol/asyncapi.yaml`` (:mod:`tests.support.schemas`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.support.schemas import check_server_frame

RECV_TIMEOUT_S = 10.0


PRESENCE = ("presence.join", "presence.leave")


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ready: dict[str, Any] = {}
        self.replayed: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, headers: dict[str, str] | None = None, **options: Any) -> Client:
        """Connect and read up to ``session.ready``; ``options`` go to websockets' ``connect``
        (``origin=``, ``local_addr=``, ...)."""
        client = cls(await connect(url, open_timeout=10, close_timeout=2, max_size=None, additional_headers=headers,
                                   **options))
        while True:
            frame = await client.recv()
            if frame["hd"]["event"] == "session.ready":
                client.ready = frame
                return client
            client.replayed.append(frame)

    async def send(self, hd: dict[str, Any], bd: dict[str, Any] | None = None) -> None:
        await self.send_raw(orjson.dumps({"hd": hd, "bd": {} if bd is None else bd}).decode())

    async def chat(self, text: str, **hd: Any) -> None:
        await self.send({"event": "chat.message", **hd}, {"text": text})

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        """The next frame that is not a presence frame, parsed."""
        while True:
            frame = await self.recv_any(timeout_s)
            if frame.get("hd", {}).get("event") not in PRESENCE:
                return frame
            self.presence.append(frame)

    async def recv_any(self, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout_s)
        frame = orjson.loads(raw)
        assert isinstance(frame, dict)
        check_server_frame(frame)
        return frame

    async def recv_presence(self, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        """The next presence frame (one already set aside by :meth:`recv` first)."""
        if self.presence:
            return self.presence.pop(0)
        while True:
            frame = await self.recv_any(timeout_s)
            if frame.get("hd", {}).get("event") in PRESENCE:
                return frame
            raise AssertionError(f"expected a presence frame, got {frame}")

    async def recv_n(self, n: int) -> list[dict[str, Any]]:
        return [await self.recv() for _ in range(n)]

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
