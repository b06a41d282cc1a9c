"""The Postman collection passes against a live server, under newman: every request gets the
status and body its test scripts expect, with authentication off, and on (given the admin key)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.schemas import ROOT
from tests.support.server_process import ServerProcess
from tests.support.tools import node_tool

COLLECTION = ROOT / "postman" / "chat-relay.postman_collection.json"
ADMIN_KEY = "admin-key-for-the-postman-tests-0123"
METRICS_TOKEN = "metrics-token-for-the-postman-tests"

pytestmark = pytest.mark.clients  # newman: scripts/test.sh clients


def collection() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COLLECTION.read_text(encoding="utf-8"))
    return loaded


def requests_in(folder: dict[str, Any]) -> list[str]:
    return [name for item in folder["item"] for name in (requests_in(item) if "item" in item else [item["name"]])]


def run_newman(base_url: str, room: str, tmp_path: Path, *env: str) -> dict[str, Any]:
    """The newman run's report, once it has passed."""
    report_path = tmp_path / "newman.json"
    variables = [arg for pair in (f"baseUrl={base_url}", f"room={room}", *env) for arg in ("--env-var", pair)]
    result = subprocess.run(
        [node_tool("newman"), "run", str(COLLECTION), *variables, "--reporters", "cli,json",
         "--reporter-json-export", str(report_path), "--color", "off", "--disable-unicode",
         "--timeout-request", "10000"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    run: dict[str, Any] = json.loads(report_path.read_text())["run"]
    assert [execution["item"]["name"] for execution in run["executions"]] == requests_in(collection())
    assert run["stats"]["assertions"]["failed"] == 0
    assert run["stats"]["assertions"]["total"] >= len(run["executions"])
    assert any(room in e["request"]["url"]["path"] for e in run["executions"])  # the test's room: cleaned up
    return run


def test_the_collection_passes_under_newman(server: ServerProcess, room: str, tmp_path: Path) -> None:
    run = run_newman(server.http, room, tmp_path)
    session = next(e for e in run["executions"] if e["item"]["name"] == "Create a room")
    assert session["response"]["code"] == 201


def test_the_collection_passes_with_auth_on_given_the_admin_key(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, tmp_path: Path) -> None:
    secured = start_server(REDIS_URL=redis_url, AUTH_SECRET="s3cret-for-the-postman-tests-0123456789",
                           ADMIN_KEY=ADMIN_KEY, METRICS_TOKEN=METRICS_TOKEN)
    run = run_newman(secured.http, room, tmp_path, f"adminKey={ADMIN_KEY}", f"metricsToken={METRICS_TOKEN}")
    session = next(e for e in run["executions"] if e["item"]["name"] == "Create a room")
    headers = {h["key"].lower(): h["value"] for h in session["request"]["header"]}
    assert headers["authorization"] == f"Bearer {ADMIN_KEY}"
    metrics = next(e for e in run["executions"] if e["item"]["name"] == "Prometheus metrics")
    assert {h["key"].lower(): h["value"] for h in metrics["request"]["header"]}["authorization"] == (
        f"Bearer {METRICS_TOKEN}")
