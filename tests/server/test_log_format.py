"""LOG_FORMAT=json on a real server: every line one JSON object, the room and connection named where
known, and no credential in any line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from client import connect
from tests.support.client import Client
from tests.support.server_process import ServerProcess

SECRET = "a-secret-of-the-log-tests-0123456789abcdef"
ADMIN = "log-admin-key-0123456789"
KEYS = {"time", "level", "logger", "message"}


def json_lines(node: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's log, parsed (fails on a line that is not a JSON object)."""
    parsed = [json.loads(line) for line in node.log_path.read_text().splitlines()]
    assert parsed and all(isinstance(line, dict) and line.keys() >= KEYS for line in parsed)
    return parsed


async def test_json_lines_parse_name_the_connection_and_show_no_token(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str) -> None:
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN, LOG_FORMAT="json")
    async with httpx.AsyncClient(base_url=node.http) as http:
        created = await http.post("/v1/session", json={"sid": room}, headers={"Authorization": f"Bearer {ADMIN}"})
    tokens = created.json()["tokens"]
    # A's token in the query string, which uvicorn's line shows; B's as a header.
    async with (await Client.open(node.ws(room, token=tokens["A"])) as a,
                connect(f"ws://127.0.0.1:{node.port}", room, token=tokens["B"]) as b):
        await b.send("hello")
        await a.recv()
        b_conn = b.conn
    node.stop()

    lines = json_lines(node)
    text = node.log_path.read_text()
    for secret in (tokens["A"], tokens["B"], SECRET, ADMIN):
        assert secret not in text
    accepted = [line for line in lines if "[accepted]" in line["message"]]
    assert len(accepted) == 2 and all(line["sid"] == room and line["logger"] == "uvicorn.error" for line in accepted)
    assert {line["conn"] for line in accepted} == {a.ready["hd"]["conn"], b_conn}
    assert "token=[redacted]" in accepted[0]["message"]
    assert len({line["node"] for line in lines}) == 1  # the process's node id, on every line
    assert any(line["logger"] == "server.app" for line in lines)
