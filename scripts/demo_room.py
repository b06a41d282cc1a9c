"""A room in one command: A and B talk, B asks the bot, and you watch it happen.

    python scripts/demo_room.py                          # its own server, on a free port
    python scripts/demo_room.py --url ws://127.0.0.1:3000  # a server that is already running

Without ``--url`` the demo starts a server in this process on the embedded store and the offline
scripted LLM (no Redis, no network, no API key), and stops it at the end. It connects A and B to a
fresh room through the Python client (:mod:`client`), prints the conversation as A's connection
receives it (the bot's answer piece by piece, as it streams), then the room's stored history from
the HTTP API, and exits 0; 1 when the server does not answer as expected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn

from client import RelayError, Room, connect
from server.app import create_app
from server.settings import Settings

TIMEOUT_S = 30.0
SCRIPTED_DELAY_MS = 60
SCRIPT: list[tuple[str, str]] = [
    ("A", "Hi B! Shall we ask the bot about Redis Streams?"),
    ("B", "Sure. @llm explain Redis Streams in one sentence"),
    ("A", "Thanks, bot! That was quick."),
]

Frame = dict[str, Any]


class Printer:
    """Shows frames as a transcript: one line per message, the bot's answer growing as it streams."""

    def __init__(self) -> None:
        self._streaming: str | None = None  # the rid of the answer being printed

    def show(self, frame: Frame) -> None:
        hd, bd = frame.get("hd", {}), frame.get("bd", {})
        event = hd.get("event")
        if event == "llm.streaming":
            if self._streaming != hd.get("rid"):
                self._streaming = hd.get("rid")
                print(f"{'llm':>5} | ", end="")
            print(bd.get("delta", ""), end="", flush=True)
        elif event == "llm.response":
            if self._streaming != hd.get("rid"):  # nothing streamed: the whole answer at once
                print(f"{'llm':>5} | {bd.get('text', '')}", end="")
            self._streaming = None
            tokens = (bd.get("usage") or {}).get("completion_tokens", "?")
            print(f"\n{'':>5}   ({bd.get('finish_reason')}, model {bd.get('model')}, {tokens} tokens)")
        elif event == "chat.message":
            print(f"{hd.get('role'):>5} | {bd.get('text')}")
        elif event in ("presence.join", "presence.leave"):
            print(f"{'*':>5} | {hd.get('role')} {'joined' if event == 'presence.join' else 'left'}")
        elif event in ("error", "llm.error"):
            print(f"{'!':>5} | {event}: {bd.get('code')}: {bd.get('message')}")


async def main(url: str | None, room: str) -> int:
    async with serving(url) as base:
        print(f"room {room} on {base}\n")
        try:
            await converse(base, room, Printer())
        except (TimeoutError, OSError, RelayError) as exc:
            print(f"\ndemo: the server did not answer as expected: {exc!r}", file=sys.stderr)
            return 1
        print_history(base, room, await asyncio.to_thread(fetch_history, base, room))
    return 0


@contextlib.asynccontextmanager
async def serving(url: str | None) -> AsyncIterator[str]:
    """The server's ``ws://host:port``: ``url``, or a server started here for the demo's duration."""
    if url is not None:
        yield url.rstrip("/")
        return
    logging.getLogger("server").setLevel(logging.ERROR)  # quiet: no note about the embedded store
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # Not the environment's settings: the embedded store and the scripted LLM, whatever is set, and
    # a pause between the bot's chunks long enough to watch its answer stream in.
    settings = Settings.from_env({"LLM_SCRIPTED_DELAY_MS": str(SCRIPTED_DELAY_MS)})
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    serve = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serve.done():
            raise RuntimeError("the demo server did not start")
        await asyncio.sleep(0.01)
    print(f"demo server on ws://127.0.0.1:{port} (embedded store, offline scripted LLM)")
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serve
        sock.close()


async def converse(base: str, room: str, printer: Printer) -> None:
    """A and B join; each line of :data:`SCRIPT` is said once the previous one has come back. The
    client (:mod:`client`) stores each line once and hands A's frames over in order; B's wait in its
    room object, unread, until it closes."""
    async with connect(base, room, role="A") as a, connect(base, room, role="B") as b:
        await read_until(a, lambda f: f["hd"].get("event") == "presence.join", printer.show)
        for role, text in SCRIPT:
            said = await (a if role == "A" else b).send(text)
            await read_until(a, carries(said["hd"]["id"]), printer.show)
            if "@llm" in text:
                await read_until(a, answering(said), printer.show)


def carries(entry_id: str) -> Callable[[Frame], bool]:
    """Whether a frame is the broadcast of the stored message ``entry_id``."""
    return lambda frame: bool(frame["hd"].get("id") == entry_id)


def answering(question: Frame) -> Callable[[Frame], bool]:
    """Whether a frame ends the bot's answer to ``question``: its one terminal event, its
    ``llm.response`` or its ``llm.error``."""
    def ends(frame: Frame) -> bool:
        hd: dict[str, Any] = frame["hd"]
        return hd.get("reply_to") == question["hd"]["id"] and hd.get("event") in ("llm.error", "llm.response")

    return ends


async def read_until(room: Room, done: Callable[[Frame], bool], show: Callable[[Frame], None]) -> Frame:
    """Frames of ``room``, each shown, up to and including the first that is ``done``."""
    async with asyncio.timeout(TIMEOUT_S):
        async for frame in room:
            show(frame)
            if done(frame):
                return frame
    raise OSError("the connection ended")


def history_url(base: str, room: str) -> str:
    return f"{'http' + base.removeprefix('ws')}/api/chat/history/{room}"


def fetch_history(base: str, room: str) -> Frame:
    """The room's newest page of history (blocking: run it off the event loop the server may share)."""
    with urllib.request.urlopen(history_url(base, room), timeout=TIMEOUT_S) as response:
        return dict(json.load(response))


def print_history(base: str, room: str, page: Frame) -> None:
    print(f"\nStored history ({len(page['messages'])} messages, GET {history_url(base, room)}):")
    for message in page["messages"]:
        bd = message["bd"]
        text = str(bd.get("text", bd.get("prompt", ""))) if isinstance(bd, dict) else ""
        short = text if len(text) <= 72 else text[:69] + "..."
        print(f"  {message['id']:>17}  {message['participant']:<4} {message['event']:<12} {short}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Two members and the bot in a room, printed live.")
    parser.add_argument("--url", help="a running server, ws://host:port (default: start one here)")
    parser.add_argument("--room", default=f"demo-{secrets.token_hex(3)}", help="the room id (default: a new one)")
    args = parser.parse_args(argv)
    if args.url is not None and not args.url.startswith(("ws://", "wss://")):
        parser.error("--url must start with ws:// or wss://")
    return args


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    sys.exit(asyncio.run(main(options.url, options.room)))
