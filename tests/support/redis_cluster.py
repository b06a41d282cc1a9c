"""A private Redis Cluster for the tests: 3 masters and 3 replicas on loopback free ports, nothing persisted.

``redis-server --cluster-enabled yes`` six times (each in a temp dir of its own), ``redis-cli --cluster
create ... --cluster-replicas 1``, then polled until every node sees the cluster ``ok``, knows all six
nodes, and every replica's link to its master is up (no fixed sleeps).

The benchmark (``scripts/bench.py --mode scale --cluster N``) starts other shapes: any number of masters,
with 0 or more replicas each. ``redis-cli --cluster create`` wants 3 masters at least, so smaller clusters
are formed by hand: the slots split evenly (``CLUSTER ADDSLOTSRANGE``), ``CLUSTER MEET``, then each
replica's ``CLUSTER REPLICATE``.
"""

from __future__ import annotations

import functools
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

import redis
from redis.crc import key_slot

from server.store.keys import stream_key
from tests.support.redis_server import RedisServer

MASTERS = 3
REPLICAS = 1  # per master
SLOTS = 16384
START_TIMEOUT_S = 60.0


def free_cluster_port(taken: set[int]) -> int:
    """A free port below 55536 whose cluster bus port (10000 higher) is free too, not in ``taken`` (added)."""
    while True:
        port = random.randrange(20000, 30000)
        if port in taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.add(port)
        return port


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16384 slots split into ``masters`` contiguous ranges as even as can be (first, last)."""
    bounds = [SLOTS * n // masters for n in range(masters + 1)]
    return [(bounds[n], bounds[n + 1] - 1) for n in range(masters)]


class RedisCluster:
    """``masters`` x (1 + ``replicas``) ``redis-server`` nodes made into one cluster; :attr:`url` names the
    first. :meth:`masters` says which nodes ended up masters."""

    def __init__(self, masters: int = MASTERS, replicas: int = REPLICAS) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: apt-get install redis-server (it ships redis-cli)")
        self.cli = cli
        taken: set[int] = set()
        self.nodes = [RedisServer(free_cluster_port(taken), extra=("--cluster-enabled", "yes", "--cluster-config-file",
                                                      "nodes.conf", "--cluster-node-timeout", "2000",
                                                              "--cluster-require-full-coverage", "no"))
                      for _ in range(masters * (1 + replicas))]
        self.masters_count, self.replicas = masters, replicas
        self.url = self.nodes[0].url.removesuffix("/0")

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            if self.masters_count >= MASTERS:
                addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
                subprocess.run([self.cli, "--cluster", "create", *addresses, "--cluster-replicas",
                                str(self.replicas), "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=START_TIMEOUT_S)
            else:
                self._form_by_hand()
            self.wait_formed()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            shutil.rmtree(node.dir, ignore_errors=True)

    def _form_by_hand(self) -> None:
        """What ``redis-cli --cluster create`` does, for fewer than 3 masters (which it refuses)."""
        masters = self.nodes[:self.masters_count]
        for node, (first, last) in zip(masters, slot_ranges(self.masters_count), strict=True):
            with self.client(node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.client(self.nodes[0].port) as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        for n, replica in enumerate(self.nodes[self.masters_count:]):
            with self.client(masters[n // self.replicas].port) as client:
                master_id = client.execute_command("CLUSTER", "MYID")
            self._wait(functools.partial(self._knows, replica.port, master_id))
            with self.client(replica.port) as client:
                client.execute_command("CLUSTER", "REPLICATE", master_id)

    def _knows(self, port: int, node_id: str) -> bool:
        """Whether the node on ``port`` has met ``node_id`` (the handshake done: it knows it by its id)."""
        with self.client(port) as client:
            return node_id in client.execute_command("CLUSTER", "NODES")

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)

    def masters(self) -> list[tuple[int, list[tuple[int, int]]]]:
        """Each master's port and the slot ranges it serves, as the first live node sees them."""
        for node in self.nodes:
            if node.process is None:
                continue
            with self.client(node.port) as client:
                shards = client.execute_command("CLUSTER", "SLOTS")
            by_port: dict[int, list[tuple[int, int]]] = {}
            for start, end, master, *_ in shards:
                by_port.setdefault(int(master[1]), []).append((int(start), int(end)))
            return sorted(by_port.items())
        raise RuntimeError("no node of the cluster is running")

    def wait_formed(self) -> None:
        """Until every node sees the cluster ok, knows every node, and every replica's link is up."""
        self._wait(self._formed)

    def kill(self, port: int) -> RedisServer:
        """SIGKILL the node on ``port`` (its data dir and cluster config stay: :meth:`RedisServer.start`
        brings it back, as a replica of whoever took its place)."""
        node = next(node for node in self.nodes if node.port == port)
        assert node.process is not None
        node.process.kill()
        node.process.wait()
        node.process = None
        return node

    def master_of(self, room: str) -> int:
        """The port of the master that holds ``room`` (its slot's)."""
        slot = key_slot(stream_key(room).encode())
        return next(port for port, ranges in self.masters() if any(start <= slot <= end for start, end in ranges))

    def rooms_on_every_master(self, new_room: Callable[[], str]) -> list[str]:
        """Rooms named by ``new_room``, one held by each master, in the order of their ports."""
        ranges = self.masters()
        found: dict[int, str] = {}
        while len(found) < len(ranges):
            room = new_room()
            slot = key_slot(stream_key(room).encode())
            port = next(port for port, spans in ranges if any(start <= slot <= end for start, end in spans))
            found.setdefault(port, room)
        return [found[port] for port, _ in ranges]

    def _formed(self) -> bool:
        if any(node.process is None for node in self.nodes):
            return False
        for node in self.nodes:
            with self.client(node.port) as client:
                info = client.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}" not in info:
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                    return False
        return True

    @staticmethod
    def _wait(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not come up")
            time.sleep(0.05)
