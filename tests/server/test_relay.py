"""The wire contract end to end: a real server process, real WebSocket clients, a real Redis."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import redis
from websockets.exceptions import InvalidStatus

from server.store.keys import stream_key
from tests.support.client import Client
from tests.support.server_process import ServerProcess

ID = re.compile(r"\d+-\d+")
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def stored(rdb: redis.Redis, room: str) -> list[tuple[str, dict[str, str]]]:
    return rdb.xrange(stream_key(room))  # type: ignore[return-value]


async def test_members_receive_each_others_messages_with_stream_ids(server: ServerProcess, room: str,
                                                                    rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room)) as a, await Client.open(server.ws(room)) as b:
        await a.chat("hello", role="A", cid="c-17")
        at_a, at_b = await a.recv(), await b.recv()
        assert at_a == at_b
        hd = at_a["hd"]
        assert (hd["event"], hd["role"], hd["sid"], hd["cid"]) == ("chat.message", "A", room, "c-17")
        assert ID.fullmatch(hd["id"]) and TS.fullmatch(hd["ts"])
        assert at_a["bd"] == {"text": "hello"}
        await b.chat("hi A", role="B")
        reply = await a.recv()
        assert reply == await b.recv()
        assert reply["hd"]["role"] == "B" and "cid" not in reply["hd"]
        assert [entry_id for entry_id, _ in stored(rdb, room)] == [hd["id"], reply["hd"]["id"]]


async def test_entries_hold_participant_and_the_broadcast_body(server: ServerProcess, room: str,
                                                               rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room)) as a:
        await a.send({"event": "chat.message", "role": "A", "cid": "x1", "timestamp": "1999-01-01T00:00:00Z"},
                     {"text": "stored?", "extra": {"k": [1, 2]}})
        frame = await a.recv()
    [(entry_id, fields)] = stored(rdb, room)
    assert entry_id == frame["hd"]["id"]
    assert fields["participant"] == "A"
    body = json.loads(fields["body"])
    assert body["bd"] == {"text": "stored?", "extra": {"k": [1, 2]}}
    assert body["hd"] == {k: v for k, v in frame["hd"].items() if k != "id"}
    assert body["hd"]["ts"] != "1999-01-01T00:00:00Z"


async def test_a_message_without_role_is_from_user(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room)) as c:
        await c.chat("anyone there?")
        assert (await c.recv())["hd"]["role"] == "user"
    assert stored(rdb, room)[0][1]["participant"] == "user"


async def test_a_bound_connection_sends_as_its_role(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="B")) as b:
        await b.chat("no role in the frame")
        assert (await b.recv())["hd"]["role"] == "B"
    assert stored(rdb, room)[0][1]["participant"] == "B"


async def test_another_room_receives_nothing(server: ServerProcess, rdb: redis.Redis) -> None:
    from tests.conftest import new_room

    room1, room2 = new_room(), new_room()
    async with await Client.open(server.ws(room1)) as a, await Client.open(server.ws(room2)) as other:
        for n in range(5):
            await a.chat(f"for room1 only {n}", role="A")
        assert len(await a.recv_n(5)) == 5
        # A marker sent to room2 after room1's messages were delivered: if anything of room1 had
        # leaked, it would arrive first.
        await other.chat("marker", role="B")
        first = await other.recv()
        assert (first["hd"]["sid"], first["bd"]["text"]) == (room2, "marker")
    assert len(stored(rdb, room2)) == 1


BAD_FRAMES: list[tuple[str, str | bytes, dict[str, str]]] = [
    ("invalid_json", "{not json", {}),
    ("invalid_envelope", json.dumps({"hd": {"event": "chat.message"}}), {}),
    ("invalid_envelope", json.dumps({"hd": "x", "bd": {"text": "hi"}}), {}),
    ("unknown_event", json.dumps({"hd": {"event": "chat.shout", "cid": "u1"}, "bd": {"text": "hi"}}), {}),
    ("invalid_role", json.dumps({"hd": {"event": "chat.message", "role": "C"}, "bd": {"text": "hi"}}), {}),
    ("invalid_role", json.dumps({"hd": {"event": "chat.message", "role": None}, "bd": {"text": "hi"}}), {}),
    ("reserved_role", json.dumps({"hd": {"event": "chat.message", "role": "llm"}, "bd": {"text": "hi"}}), {}),
    ("role_mismatch", json.dumps({"hd": {"event": "chat.message", "role": "A"}, "bd": {"text": "hi"}}), {"role": "B"}),
    ("empty_text", json.dumps({"hd": {"event": "chat.message"}, "bd": {"text": "   "}}), {}),
    ("empty_text", json.dumps({"hd": {"event": "chat.message"}, "bd": {}}), {}),
    ("too_large", json.dumps({"hd": {"event": "chat.message"}, "bd": {"text": "x" * 5001}}), {}),
    ("too_large", json.dumps({"hd": {"event": "chat.message"}, "bd": {"text": "hi", "pad": "p" * 70000}}), {}),
    ("unsupported_frame", b"\x00\x01binary", {}),
]


@pytest.mark.parametrize(("code", "frame", "params"), BAD_FRAMES, ids=[c for c, _, _ in BAD_FRAMES])
async def test_refused_frames_get_an_error_store_nothing_and_keep_the_connection(
    server: ServerProcess, room: str, rdb: redis.Redis, code: str, frame: str | bytes, params: dict[str, str]
) -> None:
    async with await Client.open(server.ws(room, **params)) as sender, await Client.open(server.ws(room)) as other:
        await sender.send_raw(frame)
        error = await sender.recv()
        assert error["hd"] == {"event": "error"}
        assert error["bd"]["code"] == code
        assert isinstance(error["bd"]["message"], str) and error["bd"]["message"]
        assert rdb.exists(stream_key(room)) == 0
        # Still usable; and the other member's first frame is this message, not the refusal.
        await sender.chat("still here")
        ok = await sender.recv()
        assert ok["hd"]["event"] == "chat.message" and ok["bd"]["text"] == "still here"
        assert (await other.recv()) == ok
    assert len(stored(rdb, room)) == 1


async def test_refusals_echo_the_cid(server: ServerProcess, room: str) -> None:
    async with await Client.open(server.ws(room)) as c:
        await c.send({"event": "chat.message", "role": "Z", "cid": "c-9"}, {"text": "hi"})
        assert (await c.recv())["bd"] == {"code": "invalid_role", "message": "Invalid role 'Z': use 'A' or 'B', "
                                          "or leave it out.", "cid": "c-9"}


@pytest.mark.parametrize("query", ["sid=bad!room", "sid=", "", "sid=" + "x" * 65, "sid=a%20b", "sid=ok&role=C",
                                   "sid=ok&role=llm"])
async def test_bad_handshakes_are_refused_before_accepting(server: ServerProcess, query: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        await Client.open(f"ws://127.0.0.1:{server.port}/v1/session/chat?{query}")
    response = info.value.response
    assert response.status_code == 400
    error = json.loads(bytes(response.body))["error"]
    expected = {"sid=ok&role=C": "invalid_role", "sid=ok&role=llm": "reserved_role"}.get(query, "invalid_room")
    assert error["code"] == expected and error["message"]


async def test_concurrent_senders_are_seen_by_everyone_in_the_stored_order(server: ServerProcess, room: str,
                                                                           rdb: redis.Redis) -> None:
    per_sender = 150
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server.ws(room, role="B")) as b:

        async def burst(client: Client, name: str) -> None:
            for n in range(per_sender):
                await client.chat(f"{name}{n}", cid=f"{name}{n}")

        receivers = [asyncio.create_task(c.recv_n(2 * per_sender)) for c in (a, b)]
        await asyncio.gather(burst(a, "a"), burst(b, "b"))
        got_a, got_b = await asyncio.gather(*receivers)
    ids_a = [f["hd"]["id"] for f in got_a]
    assert ids_a == [f["hd"]["id"] for f in got_b]
    entries = stored(rdb, room)
    assert ids_a == [entry_id for entry_id, _ in entries]
    texts = [f["bd"]["text"] for f in got_a]
    for name in "ab":  # each sender's own order is kept
        assert [t for t in texts if t[0] == name] == [f"{name}{n}" for n in range(per_sender)]

