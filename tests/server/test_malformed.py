"""The malformed-frame corpus against a live server: each frame answered with its code, over one
connection that stays usable, and nothing written to Redis."""

from __future__ import annotations

import redis

from server.store.keys import stream_key
from tests.corpus.malformed_frames import BOUND_ROLE, CORPUS
from tests.support.client import Client
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange


def room_keys(rdb: redis.Redis, room: str) -> set[str]:
    return set(rdb.scan_iter(match=f"chat:*{room}", count=1000))


async def test_every_malformed_frame_gets_its_code_and_the_connection_stays_usable(
    server: ServerProcess, room: str, rdb: redis.Redis
) -> None:
    async with await Client.open(server.ws(room, role=BOUND_ROLE)) as sender, \
            await Client.open(server.ws(room)) as other:
        keys_before = room_keys(rdb, room)
        answers = []
        for bad in CORPUS:
            await sender.send_raw(bad.frame)
            error = await sender.recv()
            assert error["hd"] == {"event": "error"}, bad.name
            assert isinstance(error["bd"]["message"], str) and error["bd"]["message"], bad.name
            answers.append((bad.name, error["bd"]["code"]))
        assert answers == [(bad.name, bad.code) for bad in CORPUS]
        assert rdb.xlen(stream_key(room)) == 0
        assert room_keys(rdb, room) == keys_before

        await sender.chat("still here", cid="after-the-corpus")
        accepted = await sender.recv()
        assert (accepted["hd"]["event"], accepted["hd"]["role"], accepted["hd"]["cid"]) == \
            ("chat.message", BOUND_ROLE, "after-the-corpus")
        assert await other.recv() == accepted  # the other member saw nothing before it
    [(entry_id, fields)] = xrange(rdb, stream_key(room))
    assert entry_id == accepted["hd"]["id"] and fields["participant"] == BOUND_ROLE


async def test_a_text_frame_that_is_not_utf8_closes_the_connection_with_1007(
    server: ServerProcess, room: str, rdb: redis.Redis
) -> None:
    async with await Client.open(server.ws(room)) as client:
        await client.ws.send(b'{"hd": {"event": "chat.message"}, "bd": {"text": "\xff"}}', text=True)
        await client.ws.wait_closed()
        assert client.ws.close_code == 1007
    assert rdb.exists(stream_key(room)) == 0
