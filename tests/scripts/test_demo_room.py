"""``scripts/demo_room.py``: with no arguments it runs a whole conversation on a server of its own
and exits 0; with ``--url`` it uses a running server."""

from __future__ import annotations

import re
import subprocess
import sys

import orjson
import redis

from server.store.keys import stream_key
from tests.support.schemas import ROOT
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange

DEMO = ROOT / "scripts" / "demo_room.py"
LINES = ["    A | Hi B! Shall we ask the bot about Redis Streams?",
         "    B | Sure. @llm explain Redis Streams in one sentence",
         "  llm | You said: B: Sure. @llm explain Redis Streams in one sentence. This answer comes from",
         "    A | Thanks, bot! That was quick."]


def run_demo(*args: str) -> str:
    result = subprocess.run([sys.executable, str(DEMO), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=90, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def assert_conversation(output: str) -> None:
    transcript, _, history = output.partition("\nStored history (4 messages, GET ")
    positions = [transcript.find(line) for line in LINES]
    assert -1 not in positions and positions == sorted(positions), transcript
    assert "(stop, model scripted-1, " in transcript
    rows = re.findall(r"^ +([0-9]+-[0-9]+)  (\S+) +(\S+) ", history, re.MULTILINE)
    assert [(participant, event) for _, participant, event in rows] == [
        ("A", "chat.message"), ("B", "chat.message"), ("llm", "llm.response"), ("A", "chat.message")]


def test_the_demo_runs_on_a_server_of_its_own() -> None:
    output = run_demo()
    assert re.match(r"demo server on ws://127\.0\.0\.1:[0-9]+ \(embedded store, offline scripted LLM\)\n", output)
    assert_conversation(output)


def test_the_demo_uses_a_running_server_with_url(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    output = run_demo("--url", f"ws://127.0.0.1:{server.port}", "--room", room)
    assert "demo server" not in output
    assert_conversation(output)
    stored = [(fields["participant"], orjson.loads(fields["body"])["hd"]["event"])
              for _, fields in xrange(rdb, stream_key(room))]
    assert stored == [("A", "chat.message"), ("B", "chat.message"), ("llm", "llm.response"), ("A", "chat.message")]


def test_the_demo_refuses_a_url_that_is_not_a_websocket() -> None:
    result = subprocess.run([sys.executable, str(DEMO), "--url", "http://127.0.0.1:3000"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "--url must start with ws://" in result.stderr
