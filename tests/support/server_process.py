"""The relay as the tests meet it: ``python -m server`` in its own process, over real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class _Process:
    """A child process writing to ``log_path``: stopped with SIGTERM (killed if it lingers)."""

    log_path: Path
    process: subprocess.Popen[bytes] | None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code, self.process = self.process.returncode, None
        return code


class ServerProcess(_Process):
    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        # No frame rate limit unless a test asks for one: tests send in bulk over one connection.
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "LOG_LEVEL": "info",
                    "RATE_LIMIT_PER_SEC": "0", **env}
        if "REDIS_URL" in self.env and not self.env["REDIS_URL"]:
            del self.env["REDIS_URL"]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, room: str, **params: str) -> str:
        query = "&".join([f"sid={room}", *(f"{k}={v}" for k, v in params.items())])
        return f"ws://127.0.0.1:{self.port}/v1/session/chat?{query}"

    def start(self, timeout_s: float = 20) -> ServerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.http}/healthz", timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not answer /healthz: {self.log()}") from None
                time.sleep(0.05)



class WorkerProcess(_Process):
    """``python -m server.llm_worker`` in its own process."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = {**os.environ, "LOG_LEVEL": "info", **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "server.llm_worker"], cwd=ROOT, env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while "LLM worker" not in self.log_path.read_text(errors="replace"):  # its start-up line
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {self.log()}")
            time.sleep(0.05)
        return self
