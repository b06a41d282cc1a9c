"""Log lines in JSON (LOG_FORMAT=json): one object per line, the context's fields, redacted first."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from server import logs
from server.settings import Settings, SettingsError

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzaWQiOiJyMSIsInJvbGUiOiJBIn0.cQ-HeuW8V6tLCaDHAUePI2A8xG321PxErG0k"
ADMIN = "admin-key-0123456789abcdef"


@pytest.fixture
def root_handler() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """The root logger with one handler writing to a string, set up by :func:`logs.setup` for JSON
    (restored afterwards, the node too)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    saved, level, node = root.handlers[:], root.level, logs._node[:]
    logs._node[:] = []  # as in a process that has built no relay yet
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    logs.setup(logging.DEBUG, "json", (ADMIN,))  # (the level is basicConfig's: set only on a root with no handler)
    yield handler
    root.handlers[:] = saved
    root.setLevel(level)
    logs._node[:] = node


def written(handler: logging.StreamHandler[io.StringIO]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in handler.stream.getvalue().splitlines()]


def test_each_line_is_one_object_with_time_level_logger_and_message(
        root_handler: logging.StreamHandler[io.StringIO]) -> None:
    logging.getLogger("server.app").warning("write path: %s", "direct")
    [line] = written(root_handler)
    assert line.keys() == {"time", "level", "logger", "message"}
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "server.app", "write path: direct")
    assert line["time"].endswith("Z") and len(line["time"]) == len("2025-11-22T15:30:00.123Z")


def test_a_traceback_stays_on_the_one_line(root_handler: logging.StreamHandler[io.StringIO]) -> None:
    try:
        raise ValueError(f"bad\nthing {ADMIN}")
    except ValueError:
        logging.getLogger("server.errors").exception("internal error")
    [line] = written(root_handler)
    assert "ValueError: bad" in line["exc"] and ADMIN not in line["exc"]


def test_secrets_are_redacted_before_the_line_is_formatted(root_handler: logging.StreamHandler[io.StringIO]) -> None:
    logging.getLogger("uvicorn.error").info('"WebSocket %s" [accepted]', f"/v1/session/chat?sid=r&token={JWT}")
    logging.getLogger("x").info("key %s", ADMIN)
    text = root_handler.stream.getvalue()
    assert JWT not in text and ADMIN not in text
    assert [line["message"] for line in written(root_handler)] == [
        '"WebSocket /v1/session/chat?sid=r&token=[redacted]" [accepted]', "key [redacted]"]


async def test_the_context_names_the_room_connection_and_generation(
        root_handler: logging.StreamHandler[io.StringIO]) -> None:
    logs.set_node("n1")

    async def connection() -> None:
        logs.bind(sid="room1", conn="c1")
        logging.getLogger("server.ws").warning("in a connection")

    async def generation() -> None:
        logs.bind(sid="room2", rid="g-1")
        logging.getLogger("server.llm.worker").warning("in a generation")
        logging.getLogger("server.llm.worker").warning("told", extra={"rid": "g-2"})

    await asyncio.gather(asyncio.create_task(connection()), asyncio.create_task(generation()))
    logging.getLogger("x").warning("elsewhere")
    lines = {line["message"]: {k: v for k, v in line.items() if k in logs.FIELDS} for line in written(root_handler)
             if line["logger"].startswith(("server.", "x"))}
    assert lines == {"in a connection": {"node": "n1", "sid": "room1", "conn": "c1"},
                     "in a generation": {"node": "n1", "sid": "room2", "rid": "g-1"},
                     "told": {"node": "n1", "sid": "room2", "rid": "g-2"},
                     "elsewhere": {"node": "n1"}}


def test_the_text_format_is_the_default(root_handler: logging.StreamHandler[io.StringIO]) -> None:
    logs.setup(logging.INFO, "text")
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": " JSON "}).log_format == "json"
    with pytest.raises(SettingsError, match="LOG_FORMAT='xml' is not one of text, json"):
        Settings.from_env({"LOG_FORMAT": "xml"})
