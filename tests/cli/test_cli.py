"""The ``chat-relay`` command as its users run it: real processes, the test Redis, real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from client import RelayError, connect
from server.store.keys import room_instance_key
from tests.support.redis_server import free_port
from tests.support.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
COMMAND = str(Path(sys.executable).with_name("chat-relay"))
SCRIPT = str(ROOT / "scripts" / "check_redis_chat.py")
TIMEOUT_S = 30.0
SECRET = "a-secret-of-the-cli-tests-0123456789abcdef"
ADMIN = "cli-admin-key-0123456789"


def env(**extra: str) -> dict[str, str]:
    """This process's environment without the relay's settings, plus ``extra``."""
    unset = ("REDIS_URL", "AUTH_SECRET", "ADMIN_KEY", "PORT", "LOG_FORMAT")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, **extra}


def run(*args: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], cwd=ROOT, env=environment or env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@pytest.mark.parametrize("command", [[], ["serve"], ["history"], ["token"]])
def test_help_describes_each_command(command: list[str]) -> None:
    result = run(COMMAND, *command, "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"usage: chat-relay {' '.join(command)}".rstrip())


def test_a_command_is_required() -> None:
    result = run(COMMAND)
    assert result.returncode == 2 and "COMMAND" in result.stderr


@pytest.mark.parametrize("options", [["--json"], [], ["--participant", "B"]])
async def test_history_prints_what_the_replay_script_prints(server: ServerProcess, room: str, redis_url: str,
                                                            options: list[str]) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}", room, role="A") as a, \
            connect(f"ws://127.0.0.1:{server.port}", room, role="B") as b:
        for sender, text in ((a, "hi"), (b, "hello"), (a, "bye")):
            await sender.send(text)
    from_command = run(COMMAND, "history", room, "--redis-url", redis_url, *options)
    from_script = run(sys.executable, SCRIPT, room, "--redis-url", redis_url, *options)
    assert (from_command.returncode, from_command.stderr) == (0, "")
    assert from_command.stdout == from_script.stdout
    assert room in from_command.stdout


def test_history_s_errors_name_the_command() -> None:
    result = run(COMMAND, "history", "bad room!")
    assert result.returncode == 2 and result.stderr.startswith("chat-relay history: invalid room id")


@pytest.fixture(scope="module")
def secured(start_server: Callable[..., ServerProcess], redis_url: str) -> ServerProcess:
    return start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN)


def token(room: str, role: str, *options: str, redis_url: str) -> str:
    result = run(COMMAND, "token", room, role, *options,
                 environment=env(AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN, REDIS_URL=redis_url))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.count("\n") == 1
    return result.stdout.strip()


async def test_token_gives_a_token_the_server_accepts_for_that_role(secured: ServerProcess, room: str,
                                                                    redis_url: str, rdb: redis.Redis) -> None:
    for_a, for_b = token(room, "A", redis_url=redis_url), token(room, "B", "--ttl-s", "600", redis_url=redis_url)
    assert rdb.get(room_instance_key(room)) is not None  # created as POST /v1/session creates it
    url = f"ws://127.0.0.1:{secured.port}"
    async with connect(url, room, token=for_a) as a, connect(url, room, token=for_b) as b:
        assert (a.role, b.role) == ("A", "B")
        sent = await a.send("signed in")
        assert sent["hd"]["role"] == "A"
    with pytest.raises(RelayError) as mismatch:
        async with connect(url, room, role="B", token=for_a):
            pass
    assert mismatch.value.code == "role_mismatch"
    with pytest.raises(RelayError) as elsewhere:
        async with connect(url, room + "-other", token=for_a):
            pass
    assert elsewhere.value.code == "forbidden"
    assert for_a not in secured.log_path.read_text()


@pytest.mark.parametrize(("args", "environment", "says"), [
    (["r1", "A"], {}, "AUTH_SECRET is not set"),
    (["r1", "A"], {"AUTH_SECRET": SECRET, "ADMIN_KEY": ADMIN}, "REDIS_URL is not set"),
    (["r1", "A"], {"AUTH_SECRET": "short"}, "bad setting: AUTH_SECRET is too short"),
    (["bad room!", "A"], {}, "invalid room id"),
    (["r1", "A", "--ttl-s", "0"], {}, "--ttl-s must be from 1"),
])
def test_token_refuses_with_one_line(args: list[str], environment: dict[str, str], says: str) -> None:
    result = run(COMMAND, "token", *args, environment=env(**environment))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("chat-relay token: ") and says in result.stderr
    assert result.stderr.count("\n") == 1


def test_token_refuses_a_role_that_is_not_a_human_one() -> None:
    result = run(COMMAND, "token", "r1", "llm", environment=env(AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN))
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_token_says_when_redis_cannot_be_reached() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = run(COMMAND, "token", "r1", "A", environment=env(AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN, REDIS_URL=dead))
    assert result.returncode == 2 and result.stderr.startswith("chat-relay token: cannot create the room")
    assert dead not in result.stderr


def test_serve_runs_the_relay_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([COMMAND, "serve"], cwd=ROOT, env=env(PORT=str(port)), stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "chat-relay serve did not answer /healthz"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has stopped
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Uvicorn running on" in (tmp_path / "serve.log").read_text()


def test_history_takes_url_only_to_follow(room: str, redis_url: str) -> None:
    result = run(COMMAND, "history", room, "--redis-url", redis_url, "--url", "ws://127.0.0.1:1")
    assert result.returncode == 2 and result.stderr.startswith("chat-relay history: --url goes with --follow")
