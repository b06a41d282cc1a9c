"""The JavaScript client's own tests (``client/js/test/*.test.js``), run by ``node --test`` against
real server processes: sending, the room's frames in order, exactly-once resends, refusals, asking
the bot, cancelling, and a server killed (SIGKILL) and started again on the same port.

The Node tests start their servers themselves (``client/js/test/server.js``: they must kill and
restart them), with this interpreter, on the test Redis, in rooms named for this run (``t<run>-...``,
so the run's cleanup deletes their keys).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RUN
from tests.support.schemas import ROOT
from tests.support.tools import node_package_file, node_tool

TESTS = sorted((ROOT / "client" / "js" / "test").glob("*.test.js"))

pytestmark = pytest.mark.clients  # Node: scripts/test.sh clients


def node_command(node: str) -> tuple[list[str], dict[str, str]]:
    """``node`` and the environment of its tests, by how this Node gets a WebSocket: a global one (Node 22),
    the flag that turns it on (Node 20), or none (Node 18, Debian 12's): then the tests pass the client the
    ``ws`` package's, from ``.ci/node`` (client/js/test/websocket.js)."""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = map(int, version.lstrip("v").split(".")[:2])
    assert (major, minor) >= (18, 15), f"the tests need node --test --test-reporter (Node >= 18.15), not {version}"
    for flags in ([], ["--experimental-websocket"]):
        if subprocess.run([node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
                          capture_output=True, check=False).returncode == 0:
            return [node, *flags], {}
    ws = node_package_file("ws", "package.json")
    return [node], {"CHAT_RELAY_NODE_MODULES": str(ws.parent.parent)}


@pytest.mark.timeout(300)
def test_the_javascript_client_passes_its_node_tests(redis_url: str, logs_dir: Path) -> None:
    assert {"answer-text.test.js", "room.test.js"} <= {path.name for path in TESTS}
    node, node_env = node_command(node_tool("node"))
    env = {**os.environ, **node_env, "REDIS_URL": redis_url, "CHAT_RELAY_PYTHON": sys.executable,
           "CHAT_RELAY_ROOM_PREFIX": f"t{RUN}-js", "CHAT_RELAY_LOG_DIR": str(logs_dir)}
    result = subprocess.run([*node, "--test", "--test-reporter=spec", *map(str, TESTS)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=280, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    assert "# fail 0" in report or "\u2139 fail 0" in report, report[-8000:]
