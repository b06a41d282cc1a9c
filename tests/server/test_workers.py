"""``WORKERS=N``: one port served by N processes, each a node of its own, under uvicorn's supervisor.

Which node serves a connection is read from what the server already records: the room's roster in
Redis (``<node>/<conn>`` per member, ``conn`` being ``session.ready``'s ``hd.conn``), and each
worker's log lines, which name its node (``[node <id>]``), its pid among them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
from websockets.exceptions import ConnectionClosed

from server.store.keys import presence_key, stream_key
from tests.support.client import Client
from tests.support.server_process import ROOT, ServerProcess

STARTED = re.compile(r"\[node ([0-9a-f]+)\] uvicorn\.error: Started server process \[(\d+)\]")
READY = re.compile(r"\[node ([0-9a-f]+)\] uvicorn\.error: Application startup complete")
WAIT_S = 20.0


def workers_started(server: ServerProcess) -> dict[str, int]:
    """node id -> pid of every worker process the group started so far (from its log)."""
    return {node: int(pid) for node, pid in STARTED.findall(server.log_path.read_text(errors="replace"))}


def wait_until_ready(server: ServerProcess, count: int) -> set[str]:
    """The nodes whose startup completed, once there are ``count`` of them."""
    deadline = time.monotonic() + WAIT_S
    while True:
        ready = set(READY.findall(server.log_path.read_text(errors="replace")))
        if len(ready) >= count:
            return ready
        assert server.process is not None and server.process.poll() is None, server.log()
        assert time.monotonic() < deadline, f"{len(ready)} of {count} workers ready: {server.log()}"
        time.sleep(0.05)


def node_of(rdb: redis.Redis, room: str, client: Client) -> str:
    """The node serving ``client``, from its entry in the room's roster (``<node>/<conn>``)."""
    conn = client.ready["hd"]["conn"]
    fields = [field for field in map(str, rdb.hkeys(presence_key(room))) if field.endswith(f"/{conn}")]
    assert len(fields) == 1, fields
    return fields[0].partition("/")[0]


@contextlib.asynccontextmanager
async def members_on_each_node(server: ServerProcess, rdb: redis.Redis, room: str,
                               nodes: set[str]) -> AsyncIterator[dict[str, Client]]:
    """One open member of ``room`` on each of ``nodes``: connections are opened to the port until
    every node has answered one (the others are closed at once)."""
    found: dict[str, Client] = {}
    deadline = time.monotonic() + WAIT_S
    try:
        while set(found) != nodes:
            assert time.monotonic() < deadline, f"only {sorted(found)} of {sorted(nodes)} answered"
            client = await Client.open(server.ws(room))
            node = node_of(rdb, room, client)
            assert node in nodes, (node, nodes)
            if node in found:
                await client.ws.close()
            else:
                found[node] = client
        yield found
    finally:
        for client in found.values():
            await client.ws.close()


@pytest.fixture
def start_workers(start_server: Callable[..., ServerProcess],
                  redis_url: str) -> Iterator[Callable[[int], ServerProcess]]:
    """Start ``python -m server`` with ``WORKERS=count`` on the test Redis. At the end each group is
    stopped (SIGTERM to its main process), and a worker process still running after that (its main
    process was killed, or did not wait for it) is killed: none outlives the test."""
    started: list[ServerProcess] = []

    def start(count: int) -> ServerProcess:
        started.append(start_server(REDIS_URL=redis_url, WORKERS=str(count)))
        return started[-1]

    yield start
    for server in started:
        server.stop()
        for pid in workers_started(server).values():
            with contextlib.suppress(OSError):  # gone, as it should be
                if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


async def test_two_workers_serve_one_port_as_two_nodes_in_one_order(
        start_workers: Callable[[int], ServerProcess], room: str, rdb: redis.Redis) -> None:
    server = start_workers(2)
    nodes = wait_until_ready(server, 2)
    assert len(nodes) == 2
    assert len(set(workers_started(server).values())) == 2  # two processes
    per_sender = 100
    async with members_on_each_node(server, rdb, room, nodes) as members:
        first, second = members.values()
        receivers = [asyncio.create_task(m.recv_n(2 * per_sender)) for m in (first, second)]
        for n in range(per_sender):  # interleaved, so that both nodes append between each other's entries
            await first.chat(f"a{n}", role="A")
            await second.chat(f"b{n}", role="B")
        received = await asyncio.gather(*receivers)
    stored_ids = [entry_id for entry_id, _ in rdb.xrange(stream_key(room))]  # type: ignore[union-attr]
    assert len(stored_ids) == 2 * per_sender
    for frames in received:
        assert [f["hd"]["id"] for f in frames] == stored_ids


def test_workers_on_the_embedded_store_stop_startup_naming_workers() -> None:
    for value in ("2", "0"):
        result = subprocess.run([sys.executable, "-m", "server"], cwd=ROOT, capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "WORKERS": value}, timeout=30)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "WORKERS" in lines[0] and "REDIS_URL" in lines[0], result.stderr


async def test_sigterm_to_the_main_process_closes_every_connection_and_the_group_exits(
        start_workers: Callable[[int], ServerProcess], room: str, rdb: redis.Redis) -> None:
    server = start_workers(2)
    nodes = wait_until_ready(server, 2)
    pids = workers_started(server)
    async with members_on_each_node(server, rdb, room, nodes) as members:
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        for client in members.values():
            with pytest.raises(ConnectionClosed):
                while True:
                    await client.recv_any()
            assert client.ws.close_code == 1012
        code = await asyncio.to_thread(server.process.wait, 10)
    assert code == 0, server.log()
    for pid in pids.values():  # the main process waited for every worker: none is left
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert server.log().count("Application shutdown complete") >= 2


async def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(
        start_workers: Callable[[int], ServerProcess], room: str, rdb: redis.Redis) -> None:
    server = start_workers(2)
    nodes = wait_until_ready(server, 2)
    victim, survivor = sorted(nodes)
    os.kill(workers_started(server)[victim], signal.SIGKILL)
    replacement = wait_until_ready(server, 3) - nodes
    assert len(replacement) == 1
    async with members_on_each_node(server, rdb, room, {survivor, *replacement}) as members:
        sender, receiver = members[survivor], members[replacement.pop()]
        await sender.chat("after the kill", role="A")
        frames = [await member.recv() for member in (sender, receiver)]
    assert [f["bd"]["text"] for f in frames] == ["after the kill"] * 2
    assert frames[0]["hd"]["id"] == frames[1]["hd"]["id"]
