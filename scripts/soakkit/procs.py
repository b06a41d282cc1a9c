"""The processes a soak runs and the faults it does to them: a redis-server that keeps an append-only
file fsynced on every write (so killing it loses nothing acknowledged), relay nodes on fixed ports (a
killed node comes back on its own port) and LLM worker processes, all children of the harness.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import redis
from benchkit.procs import ROOT, free_port

START_TIMEOUT_S = 30.0


class SoakError(RuntimeError):
    """The soak cannot run: a process that does not come up."""


def _wait(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SoakError(f"{what} did not come up:\n{tail}")
        time.sleep(0.05)


class Redis:
    """``redis-server`` with ``appendonly yes``, ``appendfsync always``: a reply means the write is on disk."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SoakError("redis-server is not installed: apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait("redis-server", self._answers, self.process, self.log)

    def _answers(self) -> bool:
        try:
            with self.client() as rdb:
                return bool(rdb.ping())  # LOADING (the AOF being replayed) is an error too
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: what was acknowledged is in the AOF; :meth:`start` replays it."""
        if self.process is not None:
            self.thaw()
            self.process.kill()
            self.process.wait()
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.process is not None and self.frozen:
            self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def refuse_writes(self, refuse: bool) -> None:
        """NOREPLICAS on every write while ``min-replicas-to-write`` is 1 and no replica is attached."""
        with self.client() as rdb:
            rdb.config_set("min-replicas-to-write", 1 if refuse else 0)

    def stop(self) -> None:
        if self.process is not None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class Child:
    """A ``python -m <module>`` of the project, restarted with the same environment (and port)."""

    def __init__(self, name: str, module: str, env: Mapping[str, str], log: Path, port: int | None = None) -> None:
        self.name = name
        self.module = module
        self.port = port
        self.env = {**env, **({"PORT": str(port)} if port else {})}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT, env=self.env,
                                            stdout=out, stderr=subprocess.STDOUT)
        if self.port is not None:
            _wait(self.name, self._healthy, self.process, self.log)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
