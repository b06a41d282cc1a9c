"""SIGTERM: connections are closed as a service restart, running answers are stored as cancelled."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import orjson
import pytest
import redis
from websockets.exceptions import ConnectionClosed

from server.store.keys import stream_key
from tests.support.client import Client
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange


async def test_sigterm_closes_connections_and_stores_running_answers(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url)
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b:
        await a.chat("@llm #long")
        await a.recv()
        streaming = await a.recv()
        assert streaming["hd"]["event"] == "llm.streaming"
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        for client in (a, b):
            with pytest.raises(ConnectionClosed):
                while True:
                    await client.recv_any()
            assert client.ws.close_code in (1001, 1012)
        code = await asyncio.to_thread(node.process.wait, 10)  # the process exits within 10 s
        assert code in (0, -signal.SIGTERM)  # uvicorn ends a graceful shutdown by re-raising the signal
        assert "Application shutdown complete" in node.log()
    answers = [orjson.loads(f["body"]) for _, f in xrange(rdb, stream_key(room)) if f["participant"] == "llm"]
    assert [(a["hd"]["rid"], a["bd"]["finish_reason"]) for a in answers] == [(streaming["hd"]["rid"], "cancelled")]
