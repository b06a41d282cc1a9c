"""Two relays on a Redis Cluster of 3 masters and 3 replicas, each given a different node's URL and
nothing else: the chat contract, presence, the bot, resume, history, export and delete, on rooms
held by each of the three masters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from server.store.cluster import is_cluster
from server.store.keys import epoch_key, followers_key, presence_key, stream_key
from tests.conftest import RUN, new_room
from tests.server.test_llm import check_generation, until_end
from tests.support.careful import CarefulSender
from tests.support.client import Client
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import free_port
from tests.support.server_process import ServerProcess

Nodes = tuple[ServerProcess, ServerProcess]


@pytest.fixture(scope="session")
def nodes(start_server: Callable[..., ServerProcess], redis_cluster: RedisCluster) -> Nodes:
    """Two relays sharing one LLM queue: the first on the cluster's first node, the second on its
    last one (a replica, at first)."""
    queue = f"t{RUN}-cluster"
    first = start_server(REDIS_URL=redis_cluster.url, LLM_QUEUE=queue)
    last = start_server(REDIS_URL=redis_cluster.nodes[-1].url.removesuffix("/0"), LLM_QUEUE=queue)
    return first, last


@pytest.fixture(scope="session")
def crdb(redis_cluster: RedisCluster) -> Iterator[ClusterClient]:
    client = ClusterClient.from_url(redis_cluster.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def rooms(redis_cluster: RedisCluster) -> list[str]:
    """Three rooms, one on each master."""
    found = redis_cluster.rooms_on_every_master(new_room)
    assert len({redis_cluster.master_of(room) for room in found}) == 3
    return found


@pytest.fixture
async def http(nodes: Nodes) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=nodes[1].http, timeout=30) as client:
        yield client


async def test_both_relays_detect_the_cluster_and_are_ready(nodes: Nodes) -> None:
    for node in nodes:
        async with httpx.AsyncClient(base_url=node.http) as http:
            assert (await http.get("/readyz")).json() == {"status": "ready", "store": "redis"}
        assert "Redis Cluster" in node.log()


async def test_members_on_two_relays_see_one_order_in_rooms_on_every_master(nodes: Nodes, rooms: list[str],
                                                                          crdb: ClusterClient) -> None:
    for room in rooms:
        async with (await Client.open(nodes[0].ws(room, role="A")) as a,
                    await Client.open(nodes[1].ws(room, role="B")) as b):
            received = [asyncio.create_task(member.recv_n(40)) for member in (a, b)]
            for n in range(20):  # interleaved: each relay appends between the other's entries
                await a.chat(f"a{n}")
                await b.chat(f"b{n}")
            frames_a, frames_b = await asyncio.gather(*received)
        stored = [entry_id for entry_id, _ in crdb.xrange(stream_key(room))]  # type: ignore[union-attr]
        assert [f["hd"]["id"] for f in frames_a] == [f["hd"]["id"] for f in frames_b] == stored
        assert sorted(f["bd"]["text"] for f in frames_a) == sorted([f"a{n}" for n in range(20)]
                                                                   + [f"b{n}" for n in range(20)])
        assert crdb.get(epoch_key(room)) is not None


async def test_a_resent_cid_is_stored_once_on_a_cluster(nodes: Nodes, rooms: list[str], crdb: ClusterClient) -> None:
    for room in rooms:
        async with await Client.open(nodes[0].ws(room, role="A")) as a:
            await a.chat("once", cid="c1")
            first = await a.recv()
        async with await Client.open(nodes[1].ws(room, role="A")) as again:
            await again.chat("once", cid="c1")  # the reply was lost: sent again, through the other relay
            ack = await again.recv()
        assert ack == first  # the original broadcast, to the sender only
        assert crdb.xlen(stream_key(room)) == 1


async def test_presence_crosses_relays_on_a_cluster(nodes: Nodes, rooms: list[str], crdb: ClusterClient) -> None:
    for room in rooms:
        async with await Client.open(nodes[0].ws(room, role="A")) as a:
            b = await Client.open(nodes[1].ws(room, role="B"))
            assert sorted(m["role"] for m in b.ready["bd"]["members"]) == ["A", "B"]
            joined = await a.recv_presence()
            assert (joined["hd"]["event"], joined["hd"]["role"]) == ("presence.join", "B")
            assert len(crdb.zrange(followers_key(room), 0, -1)) == 2  # both relays follow the room
            await b.close()
            left = await a.recv_presence()
            assert (left["hd"]["event"], left["hd"]["role"]) == ("presence.leave", "B")
            assert list(crdb.hgetall(presence_key(room)).values()) == ["A"]


async def test_the_bot_answers_members_on_both_relays_on_a_cluster(nodes: Nodes, rooms: list[str]) -> None:
    for room in rooms:
        async with (await Client.open(nodes[0].ws(room, role="A")) as a,
                    await Client.open(nodes[1].ws(room, role="B")) as b):
            await b.chat("@LLM what is a shard?")
            frames_a, frames_b = await until_end(a), await until_end(b)
        response = check_generation(frames_a, frames_a[0])
        assert check_generation(frames_b, frames_b[0]) == response
        assert response["hd"]["event"] == "llm.response"


async def test_resume_through_the_other_relay_replays_what_was_missed(nodes: Nodes, rooms: list[str]) -> None:
    for room in rooms:
        async with await Client.open(nodes[0].ws(room, role="A")) as a:
            for n in range(5):
                await a.chat(f"m{n}")
            seen = await a.recv_n(5)
        async with await Client.open(nodes[1].ws(room, role="A", last_id=seen[1]["hd"]["id"])) as again:
            assert [f["bd"]["text"] for f in again.replayed] == ["m2", "m3", "m4"]
            assert again.ready["bd"]["recovered"] is True
            await again.chat("live")
            assert (await again.recv())["bd"]["text"] == "live"


async def post(http: httpx.AsyncClient, room: str, text: str) -> dict[str, Any]:
    response = await http.post(f"/api/chat/{room}/messages", json={"hd": {"event": "chat.message", "role": "A"},
                                                                   "bd": {"text": text}})
    assert response.status_code == 201, response.text
    envelope: dict[str, Any] = response.json()
    return envelope


async def test_history_export_and_delete_on_every_master(http: httpx.AsyncClient, rooms: list[str],
                                                         crdb: ClusterClient) -> None:
    for room in rooms:
        sent = [(await post(http, room, f"h{n}"))["hd"]["id"] for n in range(5)]
        page = (await http.get(f"/api/chat/history/{room}", params={"limit": 3})).json()
        assert [m["id"] for m in page["messages"]] == sent[-3:]
        export = (await http.get(f"/api/chat/history/{room}/export", params={"format": "json"})).json()
        assert [m["id"] for m in export["messages"]] == sent
        assert crdb.exists(epoch_key(room)) == 1
        assert (await http.delete(f"/api/chat/history/{room}")).status_code == 204
        assert crdb.exists(stream_key(room), epoch_key(room)) == 0  # one step, on the room's shard
        assert (await http.get(f"/api/chat/history/{room}")).status_code == 404


def test_every_key_of_a_room_is_in_the_stream_s_slot(crdb: ClusterClient, rooms: list[str]) -> None:
    room, elsewhere = rooms[0], rooms[1]
    slot = key_slot(stream_key(room).encode())
    assert {key_slot(key.encode()) for key in (epoch_key(room), presence_key(room), followers_key(room))} == {slot}
    with pytest.raises(redis.ResponseError):  # and the cluster refuses a script that strays from it
        crdb.eval("return redis.call('GET', ARGV[1])", 1, stream_key(room), epoch_key(elsewhere))


async def test_a_master_killed_under_traffic_fails_over_and_both_relays_follow(
        nodes: Nodes, rooms: list[str], redis_cluster: RedisCluster, crdb: ClusterClient) -> None:
    loop = asyncio.get_running_loop()
    victim = redis_cluster.master_of(rooms[0])
    senders = [CarefulSender(nodes[n % 2], room) for n, room in enumerate(rooms)]
    stop = asyncio.Event()
    running = [asyncio.create_task(sender.run(stop)) for sender in senders]
    try:
        deadline = loop.time() + 30
        while min(len(sender.acked) for sender in senders) < 10:  # traffic in every room
            assert loop.time() < deadline, "no traffic"
            await asyncio.sleep(0.05)
        killed_at = loop.time()
        node = redis_cluster.kill(victim)
        deadline = killed_at + 30
        while redis_cluster.master_of(rooms[0]) == victim:  # until its replica is promoted
            assert loop.time() < deadline, "no replica took over"
            await asyncio.sleep(0.1)
        promoted_at = loop.time()
        while min(len([at for at in sender.acked_at if at > promoted_at]) for sender in senders) < 10:
            assert loop.time() < deadline, "a room did not resume"  # (the failed shard's, or another)
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*running)
    for sender in senders[1:]:  # the other shards' rooms went on while the failed one had no master
        assert any(killed_at < at < promoted_at for at in sender.acked_at), sender.room
    for sender in senders:
        stored: list[tuple[str, dict[str, str]]] = crdb.xrange(stream_key(sender.room))  # type: ignore[assignment]
        cids = [orjson.loads(fields["body"])["hd"]["cid"] for _, fields in stored]
        assert len(cids) == len(set(cids)), "a resent cid was stored twice"
        ids = [entry_id for entry_id, _ in stored]
        after = [entry_id for (_, entry_id), at in zip(sender.acked, sender.acked_at, strict=True) if at > promoted_at]
        assert after and set(after) <= set(ids)  # acknowledged after the failover: stored
    async with (await Client.open(nodes[0].ws(rooms[0], role="A")) as a,
                await Client.open(nodes[1].ws(rooms[0], role="B")) as b):
        await a.chat("after the failover")
        assert (await b.recv())["bd"]["text"] == "after the failover"
    for relay in nodes:  # ready again, with one master fewer than at the start (its replica took over)
        async with httpx.AsyncClient(base_url=relay.http) as http:
            while (await http.get("/readyz")).status_code != 200:
                assert loop.time() < deadline + 15, (await http.get("/readyz")).json()
                await asyncio.sleep(0.1)
    node.start()  # back, as a replica: the cluster is whole again for the other tests
    redis_cluster.wait_formed()


def test_a_cluster_is_told_from_a_single_redis_by_asking_it(redis_cluster: RedisCluster, redis_url: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    assert is_cluster(redis_cluster.url, wait_s=0) and is_cluster(redis_cluster.nodes[-1].url, wait_s=0)
    assert not is_cluster(redis_url, wait_s=0)
    assert not is_cluster(f"redis://127.0.0.1:{free_port()}", wait_s=0)  # nobody there: taken for a single Redis
    assert "taken for a single Redis" in caplog.text
