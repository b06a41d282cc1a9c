"""``REDIS_MIN_REPLICAS``: a primary and a replica (``redis-server --replicaof``) on free ports, real relay
processes. An acknowledged message is on the replica when its sender hears of it; with the replica stalled a
sender is told ``unavailable`` and nobody receives the message, which its resend (same cid) finds stored once
the replica is back; and a failover under careful clients loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from redis.cluster import RedisCluster as ClusterClient

from client import connect
from server.store.keys import stream_key
from server.store.ports import Duplicate, NewEntry, NotReplicated, Retention
from server.store.redis_store import RedisStore, Replicas
from tests.conftest import new_room
from tests.support.careful import CarefulSender
from tests.support.client import Client
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange

WAIT_MS = "300"  # REDIS_MIN_REPLICAS_TIMEOUT_MS: a stalled replica fails an append this fast
QUIET_S = 0.3  # how long a member is watched for a frame it must not get (see the test that uses it)


def replica_of(primary: RedisServer) -> RedisServer:
    replica = RedisServer(extra=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.start()
    linked(primary, replica)
    return replica


def linked(primary: RedisServer, replica: RedisServer, timeout_s: float = 20.0) -> None:
    """Wait until ``replica`` has synchronised with ``primary`` and its link is up."""
    deadline = time.monotonic() + timeout_s
    with redis.Redis.from_url(replica.url, decode_responses=True) as client:
        while True:
            info = client.info("replication")
            if info.get("master_port") == primary.port and info.get("master_link_status") == "up":
                return
            assert time.monotonic() < deadline, f"the replica did not link to its primary: {info}"
            time.sleep(0.05)


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica, linked."""
    primary = RedisServer()
    primary.start()
    replica = replica_of(primary)
    yield primary, replica
    for server in (replica, primary):
        if server.process is not None:
            server.thaw()  # (a frozen process would not take its SIGTERM)
        server.stop()


def ids_on(url: str, room: str) -> list[str]:
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return [entry_id for entry_id, _ in xrange(client, stream_key(room))]


def stored(url: str, room: str) -> list[tuple[str, dict[str, Any]]]:
    with redis.Redis.from_url(url, decode_responses=True) as client:
        return [(entry_id, orjson.loads(fields["body"])) for entry_id, fields in xrange(client, stream_key(room))]


async def test_an_acknowledged_message_is_on_the_replica_when_its_sender_hears_of_it(
        start_server: Callable[..., ServerProcess], pair: tuple[RedisServer, RedisServer], room: str) -> None:
    primary, replica = pair
    node = start_server(REDIS_URL=primary.url, REDIS_MIN_REPLICAS="1", REDIS_MIN_REPLICAS_TIMEOUT_MS=WAIT_MS)
    other = start_server(REDIS_URL=primary.url, REDIS_MIN_REPLICAS="1", REDIS_MIN_REPLICAS_TIMEOUT_MS=WAIT_MS)
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(other.ws(room, role="B")) as b:
        for n in range(5):
            await a.chat(f"m{n}", cid=f"c{n}")
            mine = await a.recv()
            assert mine["bd"] == {"text": f"m{n}"}
            # read at once, with no waiting: WAIT returned only once the replica had it
            assert stored(replica.url, room)[-1][0] == mine["hd"]["id"]
            theirs = await b.recv()  # the other node: announced once replicated
            assert theirs["hd"]["id"] == mine["hd"]["id"]
    assert [body["bd"]["text"] for _, body in stored(primary.url, room)] == [f"m{n}" for n in range(5)]


async def test_with_the_replica_stalled_the_sender_is_told_unavailable_and_nobody_receives_it_until_resent(
        start_server: Callable[..., ServerProcess], pair: tuple[RedisServer, RedisServer], room: str) -> None:
    primary, replica = pair
    env = {"REDIS_URL": primary.url, "REDIS_MIN_REPLICAS": "1", "REDIS_MIN_REPLICAS_TIMEOUT_MS": WAIT_MS}
    node, other = start_server(**env), start_server(**env)
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b, \
            await Client.open(other.ws(room, role="B")) as c:
        replica.freeze()  # SIGSTOP: connected, acknowledging nothing
        await a.chat("during", cid="d1")
        refused = await a.recv()
        assert (refused["hd"]["event"], refused["bd"]["code"], refused["bd"]["cid"]) == ("error", "unavailable", "d1")
        [(held_id, held)] = stored(primary.url, room)  # the primary has it: the truth the resend will tell
        assert held["hd"]["cid"] == "d1"
        # A member of the sender's node would have been handed it before the sender's answer (the feed is
        # told first, in the same step): nothing came then, nor on the other node (never announced).
        for member in (b, c):
            with pytest.raises(TimeoutError):
                await member.recv(QUIET_S)

        replica.thaw()
        linked(primary, replica)
        await a.chat("during", cid="d1")  # the documented resend: the stored copy, once it is replicated
        again = await a.recv()
        assert (again["hd"]["id"], again["bd"]["text"]) == (held_id, "during")
        for member in (b, c):  # and now everyone gets it, once
            frame = await member.recv()
            assert (frame["hd"]["id"], frame["bd"]["text"]) == (held_id, "during")
        await a.chat("after", cid="a1")
        for member in (b, c):
            assert (await member.recv())["bd"]["text"] == "after"
    assert [body["hd"]["cid"] for _, body in stored(primary.url, room)] == ["d1", "a1"]


async def test_a_failover_under_careful_clients_loses_nothing_acknowledged(
        start_server: Callable[..., ServerProcess], pair: tuple[RedisServer, RedisServer], room: str) -> None:
    """Traffic; the replica stalls and loses its link, so the primary holds writes the replica lacks; the
    primary dies (SIGKILL),
    the replica is promoted (``REPLICAOF NO ONE``, a new replica linked to it) and the relay is started again
    on it. Every message whose ``send`` returned is in the new primary's stream under the id its sender was
    given, and every message is stored once."""
    primary, replica = pair
    node = start_server(REDIS_URL=primary.url, REDIS_MIN_REPLICAS="1", REDIS_MIN_REPLICAS_TIMEOUT_MS=WAIT_MS)
    total, stall_at = 30, 10
    acknowledged: dict[str, str] = {}  # text -> id its sender was given
    spare: list[RedisServer] = []
    try:
        async with connect(f"ws://127.0.0.1:{node.port}", room, role="A") as sender:
            async def send(numbers: range) -> None:
                for n in numbers:
                    sent = await sender.send(f"m{n}")
                    acknowledged[f"m{n}"] = sent["hd"]["id"]

            async with asyncio.timeout(90):
                await send(range(stall_at))
                replica.freeze()  # (what it was sent already stays in its socket: it gets that when thawed)
                with redis.Redis.from_url(primary.url) as client:
                    client.execute_command("CLIENT", "KILL", "TYPE", "replica")  # from now on the primary alone
                sending = asyncio.create_task(send(range(stall_at, total)))
                deadline = time.monotonic() + 10
                while len(stored(primary.url, room)) == stall_at:  # a message written on the primary alone
                    assert time.monotonic() < deadline, "no write on the primary"
                    await asyncio.sleep(0.01)
                at_failover = dict(acknowledged)
                primary.process.kill()  # type: ignore[union-attr]  # SIGKILL: its unreplicated writes are gone
                primary.process.wait()  # type: ignore[union-attr]
                primary.process = None
                replica.thaw()
                with redis.Redis.from_url(replica.url) as client:
                    client.execute_command("REPLICAOF", "NO", "ONE")
                spare.append(replica_of(replica))
                node.kill()
                node.env["REDIS_URL"] = replica.url
                await asyncio.to_thread(node.start)  # the same port: the client reconnects, resumes, resends
                await sending
        final = stored(replica.url, room)
        ids = {body["bd"]["text"]: entry_id for entry_id, body in final}
        assert len(final) == total == len(ids)  # each once
        assert {text: ids[text] for text in at_failover} == at_failover  # nothing acknowledged was lost
        assert {text: ids[text] for text in acknowledged} == acknowledged
        assert len(at_failover) >= stall_at
    finally:
        for server in spare:
            server.stop()


def replica_port(cluster: RedisCluster, master: int) -> int:
    with cluster.client(master) as client:
        return int(client.info("replication")["slave0"]["port"])


async def test_a_cluster_master_killed_under_careful_clients_loses_nothing_acknowledged(
        start_server: Callable[..., ServerProcess], redis_cluster: RedisCluster) -> None:
    """Two relays with REDIS_MIN_REPLICAS=1 on the cluster, careful senders in a room on every master. The
    replica of the first room's master stalls and loses its link, so that master holds writes its replica
    lacks; the master dies (SIGKILL), its replica takes over, and the dead node comes back as the new
    master's replica (until then that shard has no replica: its rooms are told ``unavailable``). Every
    message acknowledged in every room, before the failover or after, is stored under the id its sender was
    given, and no cid twice."""
    loop = asyncio.get_running_loop()
    relays = [start_server(REDIS_URL=redis_cluster.url, REDIS_MIN_REPLICAS="1", REDIS_MIN_REPLICAS_TIMEOUT_MS=WAIT_MS),
              start_server(REDIS_URL=redis_cluster.nodes[-1].url.removesuffix("/0"), REDIS_MIN_REPLICAS="1",
                           REDIS_MIN_REPLICAS_TIMEOUT_MS=WAIT_MS)]
    rooms = redis_cluster.rooms_on_every_master(new_room)
    victim = redis_cluster.master_of(rooms[0])
    stalled = next(node for node in redis_cluster.nodes if node.port == replica_port(redis_cluster, victim))
    senders = [CarefulSender(relays[n % 2], room) for n, room in enumerate(rooms)]
    stop = asyncio.Event()
    running = [asyncio.create_task(sender.run(stop)) for sender in senders]
    dead: RedisServer | None = None
    try:
        deadline = loop.time() + 30
        while min(len(sender.acked) for sender in senders) < 5:  # traffic in every room
            assert loop.time() < deadline, "no traffic"
            await asyncio.sleep(0.05)
        senders[0].go.clear()
        await asyncio.wait_for(senders[0].idle.wait(), 30)  # (its message in flight acknowledged first)
        stalled.freeze()
        with redis_cluster.client(victim) as client:
            count = client.xlen(stream_key(rooms[0]))
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
            senders[0].go.set()
            while client.xlen(stream_key(rooms[0])) == count:  # a write on the master alone
                assert loop.time() < deadline, "no write on the master"
                await asyncio.sleep(0.01)
        dead = redis_cluster.kill(victim)
        stalled.thaw()
        deadline = loop.time() + 30
        while redis_cluster.master_of(rooms[0]) == victim:  # until its replica is promoted
            assert loop.time() < deadline, "no replica took over"
            await asyncio.sleep(0.1)
        dead.start()  # back, as the new master's replica: its shard acknowledges messages again
        dead = None
        redis_cluster.wait_formed()
        resumed_at = loop.time()
        while min(len([at for at in sender.acked_at if at > resumed_at]) for sender in senders) < 5:
            assert loop.time() < deadline + 30, "a room did not resume"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*running)
        if stalled.process is not None:
            stalled.thaw()
        if dead is not None:  # (the cluster is whole again for the other tests)
            dead.start()
            redis_cluster.wait_formed()
    with ClusterClient.from_url(redis_cluster.url, decode_responses=True) as crdb:
        for sender in senders:
            entries: list[tuple[str, dict[str, str]]] = crdb.xrange(stream_key(sender.room))
            cids = [orjson.loads(fields["body"])["hd"]["cid"] for _, fields in entries]
            assert len(cids) == len(set(cids)), "a resent cid was stored twice"
            texts = {orjson.loads(fields["body"])["bd"]["text"]: entry_id for entry_id, fields in entries}
            assert {text: texts.get(text) for text, _ in sender.acked} == dict(sender.acked), sender.room


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis-py"])
async def test_the_room_log_waits_for_the_replica_on_either_client(pair: tuple[RedisServer, RedisServer], room: str,
                                                                   lean: bool) -> None:
    """The port itself, on the lean pipelined client and on redis-py's (the path of ``rediss://`` and
    ``unix://`` URLs): appended and replicated; short of the replica, stored but :class:`NotReplicated` (for a
    resend too), and the room not reported; the resend once replicated finds the original."""
    primary, replica = pair
    store = RedisStore.connect(primary.url, lean=lean, timeout_s=5, replicas=Replicas(1, int(WAIT_MS)))
    retention = Retention(dedupe_s=60)
    try:
        first = await store.log.append_batch([NewEntry(room, "A", b"one", cid="c1")], retention, "n1")
        [one] = first.ids
        assert isinstance(one, bytes) and ids_on(replica.url, room) == [one.decode()]
        replica.freeze()
        resend = NewEntry(room, "A", b"one", cid="c1")
        short = await store.log.append_batch([NewEntry(room, "A", b"two", cid="c2"), resend], retention, "n1")
        assert [type(outcome) for outcome in short.ids] == [NotReplicated, NotReplicated] and short.before == {}
        [two] = ids_on(primary.url, room)[1:]  # on the primary all the same
        replica.thaw()
        linked(primary, replica)
        again = await store.log.append_batch([NewEntry(room, "A", b"two", cid="c2")], retention, "n1")
        assert again.ids == [Duplicate(two.encode(), b"two")] and again.before == {room: two.encode()}
    finally:
        await store.close()
