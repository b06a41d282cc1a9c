"""A member that never reads does not slow the others down, and is closed as a slow consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis

from server.store.keys import stream_key
from tests.support.client import Client
from tests.support.raw_ws import CLOSE, RawWebSocket
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange


async def test_a_reader_that_never_reads_does_not_hold_up_the_room(start_server: Callable[..., ServerProcess],
                                                                   redis_url: str, room: str,
                                                                   rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url, SEND_QUEUE_MAX="64", MAX_TEXT_CHARS="40000")
    stalled = await RawWebSocket.open(node.port, f"/v1/session/chat?sid={room}")  # connects, then never reads
    text = "x" * 30_000
    count = 300
    got_a, got_b = [], []
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b:
        for n in range(count):  # a conversation: each message answers the one before, as soon as it arrives
            await (a if n % 2 == 0 else b).chat(text, cid=f"c{n}")
            frame_a, frame_b = await asyncio.gather(a.recv(), b.recv())
            got_a.append(frame_a)
            got_b.append(frame_b)
    stored = [entry_id for entry_id, _ in xrange(rdb, stream_key(room))]
    assert [f["hd"]["id"] for f in got_a] == [f["hd"]["id"] for f in got_b] == stored
    assert len(stored) == count
    # When the stalled client finally reads, it finds at most a queue's worth of frames, then the close.
    frames = 0
    while True:
        opcode, payload = await stalled.read_frame()
        if opcode == CLOSE:
            break
        frames += 1
    assert int.from_bytes(payload[:2], "big") == 1013 and payload[2:] == b"slow consumer"
    assert frames < count
    stalled.close()
