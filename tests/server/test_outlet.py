"""A member's frames reach its client in order, closed as asked, over a real uvicorn connection.

The server normally writes straight to uvicorn's sans-I/O transport (:mod:`server.outlet`); these
tests run an uvicorn server in the test's loop with a tiny ASGI app around a :class:`Member`, so the
direct path is checked against the uvicorn that is installed, next to the ASGI ``send`` path that
any other server gets, and the switch to a writer task while the client does not read. And
``python -m server`` says it writes directly, in its start-up log and on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import httpx
import uvicorn
import websockets
from prometheus_client.parser import text_string_to_metric_families

from server.member import WS_1000_NORMAL, Member
from server.outlet import DirectOutlet, outlet_for
from tests.support.raw_ws import CLOSE, RawWebSocket
from tests.support.server_process import ServerProcess

Script = Callable[[Member], Any]


class App:
    """Accepts one WebSocket, runs ``script`` with a started member, then closes it (1000)."""

    def __init__(self, script: Script, wrap_send: bool = False, queue_max: int = 1024) -> None:
        self.script = script
        self.wrap_send = wrap_send
        self.queue_max = queue_max
        self.outlets: list[object] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if self.wrap_send:
            raw_send = send

            async def send(message: dict[str, Any]) -> None:
                await raw_send(message)

        self.outlets.append(outlet_for(send))
        member = Member(send, "room", None, self.queue_max)
        member.start()
        await self.script(member)
        member.close(WS_1000_NORMAL)
        await member.wait_closed()


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until the server accepts them
    config = uvicorn.Config(app, ws="websockets-sansio", lifespan="off", log_level="warning",
                            ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def pushes(member: Member) -> None:
    for n in range(5):
        member.push(f"frame {n}")
    await asyncio.sleep(0)  # the next loop pass writes them
    member.push("frame 5")


async def test_frames_are_written_straight_to_the_uvicorn_transport_in_order() -> None:
    app = App(pushes)
    async with serving(app) as port, websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        got = [await ws.recv() for _ in range(6)]
        await ws.wait_closed()
    assert got == [f"frame {n}" for n in range(6)]
    assert ws.close_code == WS_1000_NORMAL
    assert isinstance(app.outlets[0], DirectOutlet)


async def test_any_other_send_callable_gets_the_same_frames_through_asgi() -> None:
    app = App(pushes, wrap_send=True)
    async with serving(app) as port, websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        got = [await ws.recv() for _ in range(6)]
        await ws.wait_closed()
    assert got == [f"frame {n}" for n in range(6)]
    assert ws.close_code == WS_1000_NORMAL
    assert app.outlets == [None]


async def test_a_client_that_stops_reading_gets_every_frame_once_it_reads_again() -> None:
    big = "x" * 60_000
    count = 200  # 12 MB: far past what the transport and the socket buffers take
    queued = asyncio.Event()

    async def flood(member: Member) -> None:
        for n in range(count):
            member.push(f"{n:04d}{big}")
            await asyncio.sleep(0)
        queued.set()

    app = App(flood, queue_max=count + 1)
    async with serving(app) as port:
        client = await RawWebSocket.open(port, "/")  # reads nothing until the server has pushed it all
        await queued.wait()
        numbers = []
        while True:
            opcode, payload = await client.read_frame()
            if opcode == CLOSE:
                break
            numbers.append(int(payload[:4]))
        client.close()
    assert numbers == list(range(count))
    assert int.from_bytes(payload[:2], "big") == WS_1000_NORMAL
    assert isinstance(app.outlets[0], DirectOutlet)


async def test_the_server_says_it_writes_directly_in_its_log_and_on_its_metrics(server: ServerProcess) -> None:
    uvicorn_version = ".".join(version("uvicorn").split(".")[:2])
    assert f"write path: direct (uvicorn {uvicorn_version} sans-I/O)" in server.log_path.read_text(errors="replace")
    async with httpx.AsyncClient(base_url=server.http) as http:
        response = await http.get("/metrics")
    paths = {sample.labels["path"]: sample.value for family in text_string_to_metric_families(response.text)
             if family.name == "chat_write_path" for sample in family.samples}
    assert paths == {"direct": 1, "asgi": 0}
