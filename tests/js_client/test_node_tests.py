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
from tests.support.tools import node_tool

TESTS = sorted((ROOT / "client" / "js" / "test").glob("*.test.js"))

pytestmark = pytest.mark.clients  # Node: scripts/test.sh clients


def node_command(node: str) -> list[str]:
    """``node``, with the flag that turns on its WebSocket where it is not on by default (Node 20)."""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert int(version.lstrip("v").split(".")[0]) >= 20, f"the client needs Node >= 20, not {version}"
    has_websocket = subprocess.run([node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
                                   check=False).returncode == 0
    return [node] if has_websocket else [node, "--experimental-websocket"]


@pytest.mark.timeout(300)
def test_the_javascript_client_passes_its_node_tests(redis_url: str, logs_dir: Path) -> None:
    assert {"answer-text.test.js", "room.test.js"} <= {path.name for path in TESTS}
    env = {**os.environ, "REDIS_URL": redis_url, "CHAT_RELAY_PYTHON": sys.executable,
           "CHAT_RELAY_ROOM_PREFIX": f"t{RUN}-js", "CHAT_RELAY_LOG_DIR": str(logs_dir)}
    result = subprocess.run([*node_command(node_tool("node")), "--test", "--test-reporter=spec",
                             *map(str, TESTS)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
                            check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    assert "# fail 0" in report or "\u2139 fail 0" in report, report[-8000:]
