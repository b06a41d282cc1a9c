"""Exactly-once sending: a resend with the same cid is answered with the original, stored once."""

from __future__ import annotations

import httpx
import redis

from server.store.keys import stream_key
from tests.support.client import Client
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange


async def test_resend_with_same_cid_is_stored_once(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server.ws(room, role="B")) as b:
        await a.chat("pay 10", cid="pay-1")
        original = await a.recv()
        assert (await b.recv())["hd"]["id"] == original["hd"]["id"]
        await a.chat("pay 10", cid="pay-1")  # the client does not know whether the first try landed
        again = await a.recv()
        assert again == original  # the original broadcast, id included, to the sender only
        await a.chat("next")
        assert (await b.recv())["bd"]["text"] == "next"  # b saw no second "pay 10"
        assert (await a.recv())["bd"]["text"] == "next"
    assert rdb.xlen(stream_key(room)) == 2


async def test_resend_after_reconnect_and_other_roles(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="A")) as a:
        await a.chat("once", cid="c-1")
        original = await a.recv()
    async with await Client.open(server.ws(room)) as a:
        await a.chat("once", cid="c-1", role="A")
        assert (await a.recv())["hd"]["id"] == original["hd"]["id"]
        await a.send({"event": "chat.message", "role": "B", "cid": "c-1"}, {"text": "B's own c-1"})
        other = await a.recv()  # the cid is the sender's own: another role's c-1 is another message
        assert other["hd"]["role"] == "B" and other["hd"]["id"] != original["hd"]["id"]
    assert rdb.xlen(stream_key(room)) == 2


async def test_publish_api_resend_is_idempotent(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    envelope = {"hd": {"event": "chat.message", "role": "A", "cid": "post-1"}, "bd": {"text": "via HTTP"}}
    async with httpx.AsyncClient(base_url=server.http) as http:
        first = await http.post(f"/api/chat/{room}/messages", json=envelope)
        second = await http.post(f"/api/chat/{room}/messages", json=envelope)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert rdb.xlen(stream_key(room)) == 1


async def test_dedupe_window_zero_turns_it_off(start_server, redis_url: str, room: str, rdb: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    node = start_server(REDIS_URL=redis_url, DEDUPE_WINDOW_S="0")
    async with await Client.open(node.ws(room, role="A")) as a:
        await a.chat("x", cid="same")
        await a.chat("x", cid="same")
        first, second = await a.recv_n(2)
    assert first["hd"]["id"] != second["hd"]["id"]
    assert rdb.xlen(stream_key(room)) == 2


async def test_a_deleted_room_forgets_its_cids_over_http(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    """Exactly-once per room instance: after DELETE, the same cid is a new message of the new room."""
    envelope = {"hd": {"event": "chat.message", "role": "A", "cid": "post-1"}, "bd": {"text": "again"}}
    async with httpx.AsyncClient(base_url=server.http) as http:
        first = await http.post(f"/api/chat/{room}/messages", json=envelope)
        assert (await http.delete(f"/api/chat/history/{room}")).status_code == 204
        second = await http.post(f"/api/chat/{room}/messages", json=envelope)
        assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
        history = await http.get(f"/api/chat/history/{room}")
        third = await http.post(f"/api/chat/{room}/messages", json=envelope)  # the new room remembers it
    assert first.status_code == 201
    stored = [entry_id for entry_id, _ in xrange(rdb, stream_key(room))]
    assert stored == [second.json()["hd"]["id"]]
    assert history.status_code == 200
    assert [m["id"] for m in history.json()["messages"]] == stored
    assert third.headers["Idempotent-Replayed"] == "true" and third.json() == second.json()


async def test_a_deleted_room_forgets_its_cids_over_websocket(server: ServerProcess, room: str,
                                                              rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="A")) as a:
        await a.chat("once", cid="c-1")
        await a.recv()
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.delete(f"/api/chat/history/{room}")).status_code == 204
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server.ws(room, role="B")) as b:
        await a.chat("once", cid="c-1")
        again = await a.recv()
        assert (await b.recv())["hd"]["id"] == again["hd"]["id"]  # a new message: everyone receives it
    assert [entry_id for entry_id, _ in xrange(rdb, stream_key(room))] == [again["hd"]["id"]]
