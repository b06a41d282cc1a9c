"""Presence: who is in a room, on every node, and members that vanish without a goodbye."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import redis

from server.store.keys import presence_key
from tests.support.client import Client
from tests.support.server_process import ServerProcess


def roster(client: Client) -> list[tuple[str, str]]:
    return sorted((m["role"], m["conn"]) for m in client.ready["bd"]["members"])


async def test_presence_across_two_nodes(server: ServerProcess, server2: ServerProcess, room: str) -> None:
    async with await Client.open(server.ws(room, role="A")) as a:
        a_conn = a.ready["hd"]["conn"]
        async with await Client.open(server2.ws(room, role="B")) as b:
            b_conn = b.ready["hd"]["conn"]
            assert roster(b) == [("A", a_conn), ("B", b_conn)]
            joined = await a.recv_presence()
            assert joined["hd"] == {**joined["hd"], "event": "presence.join", "role": "B", "sid": room, "conn": b_conn}
            async with await Client.open(server.ws(room)) as anonymous:
                everyone = [("A", a_conn), ("B", b_conn), ("user", anonymous.ready["hd"]["conn"])]
                assert roster(anonymous) == sorted(everyone)
                for member in (a, b):
                    frame = await member.recv_presence()
                    assert (frame["hd"]["event"], frame["hd"]["role"]) == ("presence.join", "user")
            for member in (a, b):
                frame = await member.recv_presence()
                assert (frame["hd"]["event"], frame["hd"]["role"]) == ("presence.leave", "user")
            await a.chat("hello")  # presence frames are not stored, and do not disturb the chat
            assert (await b.recv())["bd"]["text"] == "hello"
        assert (await a.recv())["bd"]["text"] == "hello"
        left = await a.recv_presence()
        assert (left["hd"]["event"], left["hd"]["conn"]) == ("presence.leave", b_conn)
    async with await Client.open(server2.ws(room, role="B")) as alone:
        assert roster(alone) == [("B", alone.ready["hd"]["conn"])]


async def test_members_of_a_killed_node_leave_the_roster(start_server: Callable[..., ServerProcess], redis_url: str,
                                                         server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    doomed = start_server(REDIS_URL=redis_url, NODE_TTL_S="3")
    async with await Client.open(doomed.ws(room, role="B")) as b:
        async with await Client.open(server.ws(room, role="A")) as a:
            assert ("B", b.ready["hd"]["conn"]) in roster(a)
        assert doomed.process is not None
        doomed.process.send_signal(signal.SIGKILL)  # no goodbye: its roster entry stays behind
        doomed.process.wait()
        deadline = time.monotonic() + 30
        while True:  # bounded by NODE_TTL_S: the dead node's heartbeat key expires
            async with await Client.open(server.ws(room, role="A")) as a:
                if [role for role, _ in roster(a)] == ["A"]:
                    break
            assert time.monotonic() < deadline, "the killed node's member is still in the roster"
            await asyncio.sleep(0.5)
    # The dead node's entry is gone from Redis too. (A's last connection may still be there for a
    # moment: the server answers a client's close before it leaves the roster.)
    assert not [field for field in rdb.hkeys(presence_key(room)) if field.endswith("/" + b.ready["hd"]["conn"])]


async def test_members_still_present_hear_a_dead_node_s_members_leave(start_server: Callable[..., ServerProcess],
                                                                      redis_url: str, room: str,
                                                                      rdb: redis.Redis) -> None:
    survivor = start_server(REDIS_URL=redis_url, NODE_TTL_S="3")  # beats, and sweeps, every second
    doomed = start_server(REDIS_URL=redis_url, NODE_TTL_S="3")
    async with await Client.open(survivor.ws(room, role="A")) as a:
        b = await Client.open(doomed.ws(room, role="B"))
        b_conn = b.ready["hd"]["conn"]
        joined = await a.recv_presence()
        assert (joined["hd"]["event"], joined["hd"]["conn"]) == ("presence.join", b_conn)
        assert doomed.process is not None
        doomed.process.send_signal(signal.SIGKILL)  # B's connection dies with it: no goodbye from its node
        doomed.process.wait()
        left = await a.recv_presence(timeout_s=30)  # bounded: NODE_TTL_S, then the survivor's next beat
        assert left["hd"] == {**left["hd"], "event": "presence.leave", "role": "B", "conn": b_conn, "sid": room}
        assert not any(field.endswith("/" + b_conn) for field in rdb.hkeys(presence_key(room)))
        await a.chat("still here")
        assert (await a.recv())["bd"]["text"] == "still here"
        assert a.presence == []  # one presence.leave, not one per sweeping node
        await b.close()
