"""A careful sender for the failover tests (a cluster master killed, a primary replaced): numbered
messages, each with a cid, resent until acknowledged, across reconnects."""

from __future__ import annotations

import asyncio

import websockets

from tests.support.client import Client
from tests.support.server_process import ServerProcess


class CarefulSender:
    """A member that sends numbered messages, each with a cid, one at a time: it resends the same cid
    when told ``unavailable`` or when its connection drops (reconnecting with ``last_id``), until the
    message comes back; every acknowledged ``(text, id)`` is kept. It starts each new message only while
    :attr:`go` is set (it is, unless a test clears it), and says when it waits there (:attr:`idle`): a
    message in flight is finished (resent until acknowledged) first."""

    def __init__(self, node: ServerProcess, room: str) -> None:
        self.node, self.room = node, room
        self.acked: list[tuple[str, str]] = []
        self.acked_at: list[float] = []
        self.go, self.idle = asyncio.Event(), asyncio.Event()
        self.go.set()

    async def run(self, stop: asyncio.Event) -> None:
        client: Client | None = None
        n = 0
        while not stop.is_set():
            if not self.go.is_set():
                self.idle.set()
                await self.go.wait()
                self.idle.clear()
            try:
                if client is None:
                    last = {"last_id": self.acked[-1][1]} if self.acked else {}
                    client = await Client.open(self.node.ws(self.room, role="A", **last))
                await client.chat(f"m{n}", cid=f"c{n}")
                while True:
                    frame = await client.recv(timeout_s=15)
                    if frame["hd"].get("cid") == f"c{n}":
                        break
                if frame["hd"]["event"] == "error":
                    assert frame["bd"]["code"] == "unavailable", frame
                    await asyncio.sleep(0.05)
                    continue
                self.acked.append((f"m{n}", frame["hd"]["id"]))
                self.acked_at.append(asyncio.get_running_loop().time())
                n += 1
                await asyncio.sleep(0.01)  # (under STREAM_MAXLEN for the whole test)
            except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidStatus):
                client = None  # the relay closed it (1011), or refused the handshake: again, resuming
                await asyncio.sleep(0.1)
        if client is not None:
            await client.close()
