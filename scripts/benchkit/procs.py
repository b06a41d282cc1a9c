"""The processes a run measures: the relay's server processes (started here or found by port) and
redis-server, with their CPU time and resident memory read from ``/proc``.

CPU is utime + stime of every thread, in clock ticks (10 ms on most kernels): figures from runs
shorter than a few seconds are coarse. Servers started here inherit this process's raised
open-files limit (see :func:`raise_fd_limit`), so they can hold as many connections as it opens.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

ROOT = Path(__file__).resolve().parents[2]  # the project: ``python -m server`` runs from here
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

#: Server settings of the benchmark: no trimming (so that XRANGE shows every message), short-lived
#: rooms in case a run dies before its cleanup, quiet logs, and no per-client limits for the one
#: address all the load comes from (ignored by servers that have no such settings).
SERVER_ENV: dict[str, str] = {
    "STREAM_MAXLEN": "0",
    "ROOM_TTL_SECONDS": "3600",
    "LOG_LEVEL": "warning",
    "RATE_LIMIT_PER_SEC": "0",
    "MAX_CONNECTIONS_PER_IP": "1000000",
}


class SetupError(RuntimeError):
    """The run cannot start: a server that does not come up, a limit that is too low..."""


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SetupError(f"no VmRSS for pid {pid}")


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft open-files limit to its hard limit; fails when that is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SetupError(f"{needed} open files needed but the hard limit is {hard} (raise it: ulimit -Hn)")
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_pids(port: int) -> list[int]:
    """The pids holding a TCP socket that listens on ``port`` (any address)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(cols[9])
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in os.listdir(f"/proc/{pid}/fd")):
                pids.add(int(pid))
    return sorted(pids)


def redis_pid(url: str) -> int | None:
    """The pid of the redis-server at ``url`` when it runs on this machine (``INFO server``), else None."""
    parts = urlsplit(url)
    if parts.scheme != "unix" and not _is_loopback(parts.hostname or "localhost"):
        return None
    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    try:
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().startswith("redis") else None
    except OSError:
        return None  # in another pid namespace (a container)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Node:
    """One server process as the load sees it."""

    http: str  # http://HOST:PORT
    pids: tuple[int, ...]  # empty: unknown (CPU and memory are not reported)

    @property
    def ws(self) -> str:
        return "ws" + self.http.removeprefix("http")

    def chat_url(self, room: str, role: str | None = None) -> str:
        return f"{self.ws}/v1/session/chat?sid={room}" + (f"&role={role}" if role else "")


def running_nodes(urls: Sequence[str], pids: Sequence[int]) -> list[Node]:
    """Nodes already running at ``urls`` (http:// or ws://); their pids from ``pids`` or found by port."""
    nodes = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "ws") or parts.hostname is None:
            raise SetupError(f"--url {url!r}: give http://HOST:PORT (or ws://HOST:PORT)")
        port = parts.port or 80
        found = tuple(pids) if pids else tuple(listening_pids(port)) if _is_loopback(parts.hostname) else ()
        nodes.append(Node(f"http://{parts.hostname}:{port}", found))
    return nodes


@dataclass
class ServerSet:
    """``count`` servers (``python -m server``) on free ports, started by :meth:`start`; each serves
    its port from ``workers`` processes (``WORKERS``; a node's pids are then every process holding
    its port)."""

    count: int
    redis_url: str | None  # None: the embedded store (one process only)
    env: Mapping[str, str] = field(default_factory=dict)  # on top of SERVER_ENV
    workers: int = 1
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chat-relay-bench-")))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    def start(self) -> list[Node]:
        for n in range(self.count):
            port = free_port()
            env = {**os.environ, **SERVER_ENV, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": str(self.workers),
                   **self.env}
            env.pop("REDIS_URL", None)
            if self.redis_url:
                env["REDIS_URL"] = self.redis_url
            with open(self.log_dir / f"server-{n}.log", "ab") as log:
                process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env,
                                           stdout=log, stderr=subprocess.STDOUT)
            self.processes.append(process)
            self.nodes.append(Node(f"http://127.0.0.1:{port}", (process.pid,)))
        for n, node in enumerate(self.nodes):
            self._wait_healthy(n, node)
            if self.workers > 1:
                self.nodes[n] = self._wait_workers(n, node)
        return self.nodes

    def _wait_healthy(self, n: int, node: Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        host, port = urlsplit(node.http).hostname, urlsplit(node.http).port
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(host or "127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            process = self.processes[n]
            if process.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"server {n} did not come up (exit status {process.poll()}); "
                                 f"log {self.log_dir}/server-{n}.log:\n{self.log_tail(n)}")
            time.sleep(0.05)

    def _wait_workers(self, n: int, node: Node) -> Node:
        """``node`` once each of its ``workers`` processes has answered ``/healthz`` (new connections
        go to any of them), with every pid holding its port (its main process's and the workers')."""
        deadline = time.monotonic() + START_TIMEOUT_S
        host, port = urlsplit(node.http).hostname or "127.0.0.1", urlsplit(node.http).port or 80
        answered: set[bytes] = set()
        while len(answered) < self.workers:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(host, port, timeout=1)
                conn.request("GET", "/healthz")
                answered.add(conn.getresponse().read())  # {"status":"ok","node":"<its node id>"}
                conn.close()
            if self.processes[n].poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"server {n}: {len(answered)} of {self.workers} workers answered; "
                                 f"log {self.log_dir}/server-{n}.log:\n{self.log_tail(n)}")
        return Node(node.http, tuple(listening_pids(port)))

    def log_tail(self, n: int) -> str:
        return (self.log_dir / f"server-{n}.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop the servers; their logs are deleted unless one of them failed (then its path is printed)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # uvicorn ends a graceful shutdown by re-raising the signal: -SIGTERM is a clean exit
        failed = [n for n, process in enumerate(self.processes) if process.returncode not in (0, -signal.SIGTERM)]
        self.processes.clear()
        if failed:
            print(f"bench.py: server(s) {failed} exited with an error; logs in {self.log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[list[Node]]:
        try:
            yield self.start()
        finally:
            self.stop()


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far by the servers, Redis and this process, at ``wall_s`` (monotonic); with
    ``shards_s`` (each master's, from ``INFO cpu``), ``redis_s`` is their sum."""

    wall_s: float
    server_s: float | None  # None: no server pid known
    redis_s: float | None  # None: Redis is not a local process (or is embedded in the server)
    client_s: float
    shards_s: tuple[float, ...] = ()  # each master of the Redis under test, when the probe reads them

    def __sub__(self, earlier: CpuSample) -> CpuSample:
        return CpuSample(self.wall_s - earlier.wall_s, _minus(self.server_s, earlier.server_s),
                         _minus(self.redis_s, earlier.redis_s), self.client_s - earlier.client_s,
                         tuple(now - then for now, then in zip(self.shards_s, earlier.shards_s, strict=True)))


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass(frozen=True, slots=True)
class Probe:
    """Reads the CPU (and memory) of the processes a run measures."""

    server_pids: tuple[int, ...]
    redis_pid: int | None
    shards_cpu: Callable[[], tuple[float, ...]] | None = None  # each master's CPU seconds (INFO cpu)

    def cpu(self) -> CpuSample:
        server = sum(cpu_s(pid) for pid in self.server_pids) if self.server_pids else None
        if self.shards_cpu is not None:
            shards = self.shards_cpu()
            return CpuSample(time.monotonic(), server, sum(shards), time.process_time(), shards)
        redis_cpu = cpu_s(self.redis_pid) if self.redis_pid is not None else None
        return CpuSample(time.monotonic(), server, redis_cpu, time.process_time())

    def server_rss_kib(self) -> int | None:
        return sum(rss_kib(pid) for pid in self.server_pids) if self.server_pids else None
