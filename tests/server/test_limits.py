"""Limits against live servers: allowed origins, frame rate, connections per address, pings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from websockets.exceptions import InvalidStatus

from server.store.keys import stream_key
from tests.conftest import new_room
from tests.support.client import Client
from tests.support.raw_ws import CLOSE, PING, PONG, TEXT, RawWebSocket
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange

StartServer = Callable[..., ServerProcess]


async def refusal(url: str, **options: Any) -> tuple[int, str]:
    """``(status, error code)`` of a refused handshake."""
    with pytest.raises(InvalidStatus) as info:
        await Client.open(url, **options)
    response = info.value.response
    error = json.loads(bytes(response.body))["error"]
    assert error["message"]
    return response.status_code, error["code"]


async def assert_usable(client: Client, text: str) -> None:
    await client.chat(text)
    assert (await client.recv())["bd"]["text"] == text


# -- origins ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def origin_server(start_server: StartServer, redis_url: str) -> ServerProcess:
    return start_server(REDIS_URL=redis_url, ALLOWED_ORIGINS="https://chat.example.com, http://localhost:8080")


@pytest.mark.parametrize("origin", ["https://evil.example", "https://chat.example.com.evil.example",
                                    "http://chat.example.com", "null"])
async def test_a_browser_from_an_origin_not_listed_is_refused(origin_server: ServerProcess, room: str,
                                                              origin: str) -> None:
    assert await refusal(origin_server.ws(room), origin=origin) == (403, "origin_not_allowed")


@pytest.mark.parametrize("origin", [None, "https://chat.example.com", "http://localhost:8080"])
async def test_listed_origins_and_clients_without_an_origin_connect(origin_server: ServerProcess, room: str,
                                                                    origin: str | None) -> None:
    async with await Client.open(origin_server.ws(room), origin=origin) as client:
        await assert_usable(client, f"from {origin}")


# -- frame rate ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rate_server(start_server: StartServer, redis_url: str) -> ServerProcess:
    # A burst of 5 and almost no refill: within a test, exactly 5 frames pass.
    return start_server(REDIS_URL=redis_url, RATE_LIMIT_PER_SEC="0.001", RATE_LIMIT_BURST="5")


async def test_frames_over_the_limit_are_refused_unstored_and_a_flood_is_closed(
    rate_server: ServerProcess, room: str, rdb: redis.Redis
) -> None:
    async with await Client.open(rate_server.ws(room, role="A")) as flooder, \
            await Client.open(rate_server.ws(room)) as observer:
        for n in range(10):
            await flooder.chat(f"m{n}", cid=f"f{n}")
        answers = await flooder.recv_n(10)
        accepted = [f["hd"]["cid"] for f in answers if f["hd"]["event"] == "chat.message"]
        refused = [(f["bd"]["code"], f["bd"]["cid"]) for f in answers if f["hd"]["event"] == "error"]
        assert accepted == [f"f{n}" for n in range(5)]
        assert refused == [("rate_limited", f"f{n}") for n in range(5, 10)]
        seen = await observer.recv_n(5)
        assert [f["hd"]["cid"] for f in seen] == accepted
        assert [entry_id for entry_id, _ in xrange(rdb, stream_key(room))] == [f["hd"]["id"] for f in seen]

        # Five refusals ignored: the next frame closes the connection.
        await flooder.chat("one more", cid="f10")
        await flooder.ws.wait_closed()
        assert (flooder.ws.close_code, flooder.ws.close_reason) == (1008, "rate limit exceeded")

        await observer.chat("marker")  # nothing of the flooder's came between
        assert (await observer.recv())["bd"]["text"] == "marker"
    assert rdb.xlen(stream_key(room)) == 6


async def test_every_frame_counts_against_the_limit_even_a_refused_one(
    rate_server: ServerProcess, room: str, rdb: redis.Redis
) -> None:
    async with await Client.open(rate_server.ws(room)) as client:
        for frame in (b"binary", "not json", '{"hd": {}}', b"", '{"hd": {"event": "x"}, "bd": {}}'):
            await client.send_raw(frame)
        assert [f["bd"]["code"] for f in await client.recv_n(5)] == \
            ["unsupported_frame", "invalid_json", "invalid_envelope", "unsupported_frame", "unknown_event"]
        await client.chat("too late", cid="c-6")
        assert (await client.recv())["bd"] == {"code": "rate_limited", "message": "Too many frames: this one was not "
                                               "processed. Slow down, then send it again.", "cid": "c-6"}
    assert rdb.exists(stream_key(room)) == 0


async def test_rate_limit_zero_turns_the_limit_off(start_server: StartServer, redis_url: str, room: str) -> None:
    server = start_server(REDIS_URL=redis_url, RATE_LIMIT_PER_SEC="0", RATE_LIMIT_BURST="1")
    async with await Client.open(server.ws(room)) as client:
        for n in range(50):
            await client.chat(f"m{n}")
        assert [f["bd"]["text"] for f in await client.recv_n(50)] == [f"m{n}" for n in range(50)]


# -- connections per address -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ip_server(start_server: StartServer, redis_url: str) -> ServerProcess:
    return start_server(REDIS_URL=redis_url, MAX_CONNECTIONS_PER_IP="2")


async def test_an_address_over_its_connection_limit_is_refused(ip_server: ServerProcess) -> None:
    rooms = [new_room() for _ in range(3)]  # one per connection: each sees only its own messages
    for _ in range(3):  # handshakes refused for a bad room hold no slot
        assert await refusal(ip_server.ws("bad!room")) == (400, "invalid_room")
    async with await Client.open(ip_server.ws(rooms[0])) as first, \
            await Client.open(ip_server.ws(rooms[1])) as second:
        assert await refusal(ip_server.ws(rooms[2])) == (429, "too_many_connections")
        async with await Client.open(ip_server.ws(rooms[2]), local_addr=("127.0.0.2", 0)) as elsewhere:
            await assert_usable(elsewhere, "another address has its own slots")
        await first.close()  # its slot is free once the server has read the close
        async with await Client.open(ip_server.ws(rooms[0])) as third:
            await assert_usable(third, "back in")
            assert await refusal(ip_server.ws(rooms[2])) == (429, "too_many_connections")
        await assert_usable(second, "still here")


# -- pings -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ping_server(start_server: StartServer, redis_url: str) -> ServerProcess:
    return start_server(REDIS_URL=redis_url, PING_INTERVAL_S="0.05", PING_TIMEOUT_S="2")


async def next_non_text(ws: RawWebSocket) -> tuple[int, bytes]:
    """The next ping, pong or close, past text frames (session.ready, presence)."""
    while (frame := await ws.read_frame())[0] == TEXT:
        pass
    return frame


async def test_a_client_answering_pings_stays_connected(ping_server: ServerProcess, room: str) -> None:
    ws = await RawWebSocket.open(ping_server.port, f"/v1/session/chat?sid={room}")
    try:
        for _ in range(3):
            opcode, payload = await next_non_text(ws)
            assert opcode == PING
            ws.send_frame(PONG, payload)
        ws.send_frame(TEXT, orjson.dumps({"hd": {"event": "chat.message"}, "bd": {"text": "alive"}}))
        while True:
            opcode, payload = await ws.read_frame()
            assert opcode in (PING, TEXT)
            if opcode == PING:
                ws.send_frame(PONG, payload)
            elif orjson.loads(payload)["hd"]["event"] == "chat.message":
                break
        assert orjson.loads(payload)["bd"]["text"] == "alive"
    finally:
        ws.close()


async def test_a_client_not_answering_pings_is_closed_with_1011(ping_server: ServerProcess, room: str) -> None:
    ws = await RawWebSocket.open(ping_server.port, f"/v1/session/chat?sid={room}")
    try:
        assert (await next_non_text(ws))[0] == PING
        opcode, payload = await next_non_text(ws)
        assert (opcode, int.from_bytes(payload[:2], "big")) == (CLOSE, 1011)
        assert await ws.at_eof()
    finally:
        ws.close()


async def test_room_limit_counts_connections_on_every_node(start_server: Callable[..., ServerProcess],
                                                           redis_url: str, room: str) -> None:
    first = start_server(REDIS_URL=redis_url, MAX_CONNECTIONS_PER_ROOM="2")
    second = start_server(REDIS_URL=redis_url, MAX_CONNECTIONS_PER_ROOM="2")
    async with await Client.open(first.ws(room, role="A")), await Client.open(second.ws(room, role="B")):
        for node in (first, second):
            with pytest.raises(InvalidStatus) as info:
                await Client.open(node.ws(room))
            assert info.value.response.status_code == 429
            assert orjson.loads(info.value.response.body)["error"]["code"] == "room_full"
    # The slots are free once they leave; A's leave reaches the room's roster a moment after its close.
    deadline = time.monotonic() + 10
    while True:
        async with await Client.open(second.ws(room)) as again:
            members = [m["role"] for m in again.ready["bd"]["members"]]
        if members == ["user"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert members == ["user"]
