"""A private Redis Cluster for the tests: 3 masters and 3 replicas on loopback free ports, nothing persisted.

``redis-server --cluster-enabled yes`` six times (each in a temp dir of its own), ``redis-cli --cluster
create ... --cluster-replicas 1``, then polled until every node sees the cluster ``ok``, knows all six
nodes, and every replica's link to its master is up (no fixed sleeps).
"""

from __future__ import annotations

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


class RedisCluster:
    """Six ``redis-server`` nodes made into one cluster; :attr:`url` names the first."""

    def __init__(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: apt-get install redis-server (it ships redis-cli)")
        self.cli = cli
        taken: set[int] = set()
        self.nodes = [RedisServer(free_cluster_port(taken), extra=("--cluster-enabled", "yes", "--cluster-config-file",
                                                      "nodes.conf", "--cluster-node-timeout", "2000",
                                                              "--cluster-require-full-coverage", "no"))
                      for _ in range(2 * MASTERS)]
        self.url = self.nodes[0].url.removesuffix("/0")

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run([self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "1",
                            "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=START_TIMEOUT_S)
            self.wait_formed()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            shutil.rmtree(node.dir, ignore_errors=True)

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
