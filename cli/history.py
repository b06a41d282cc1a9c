"""Print a room's chat history from its Redis Stream chat:session:ROOM (``chat-relay history``, and
``scripts/check_redis_chat.py``).

The Redis URL defaults to $REDIS_URL, else redis://127.0.0.1:6379/0. A URL naming any node of a
Redis Cluster works too (the stream is read on the shard that holds it).

Human output (the default): "Total N messages in chat:session:ROOM"; then, after a blank line,
one block per message ("--- Message #k ---", "ID: <stream id>", "Participant: <role>",
"Content: <body as stored>", a blank line); then "Messages per participant:" with one line per
role, in order of first appearance ("  A: 2"). The history is a snapshot: it ends at the newest
entry present when the script started. An empty room prints only the Total line.

--json: no Total line and no counts; one JSON object per message and line, with the keys "id"
(the stream id), "participant" (the role) and "body" (the stored envelope parsed, or the raw
string when it is not JSON).

--participant ROLE (A, B, user or llm) keeps only that role's messages; Total, numbering and
counts then cover only those. An entry without a participant field shows as "?".

--follow goes on printing messages as they are appended, until interrupted (Ctrl-C / SIGINT);
the counts are printed when it stops, and the exit status is then 0. With --url ws://HOST:PORT the
new messages come from that relay instead of Redis (the Python client, :mod:`client`: it resumes
after the last entry printed, and across reconnects, printing each stored message once); --token
(default: $CHAT_RELAY_TOKEN) is then a room token, or the admin key, when the relay has auth on.

Exit status: 0 when messages were printed; 1 when the room has no (matching) messages; 2, with a
one-line message on stderr, when the room id is invalid (it must match [A-Za-z0-9_-]{1,64}), the
URL is malformed, Redis cannot be reached or answers with an error (e.g. the key is not a
stream); 130 when interrupted without --follow.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from client import RelayError
from client import connect as connect_room
from protocol import CLIENT_ROLES, DEFAULT_ROLE, LLM_ROLE, is_valid_room
from server.store.keys import stream_key

PROG = "chat-relay history"
DEFAULT_URL = "redis://127.0.0.1:6379/0"
ROLES = (*sorted(CLIENT_ROLES), DEFAULT_ROLE, LLM_ROLE)
PAGE_COUNT = 1000  # entries per XRANGE / XREAD reply
BLOCK_MS = 5_000  # how long one XREAD waits for new entries
SOCKET_TIMEOUT_S = BLOCK_MS / 1000 + 10  # must outlast BLOCK_MS, or a quiet room reads as a dead Redis
CONNECT_TIMEOUT_S = 5.0
NO_ENTRIES = "0-0"  # the id before any entry: XREAD after it returns everything

RawEntry = tuple[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    participant: str
    body: str


class Report:
    """Prints entries as human blocks or JSON lines, and counts them per participant."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.counts: Counter[str] = Counter()

    def show(self, entry: Entry) -> None:
        self.counts[entry.participant] += 1
        print(json_line(entry) if self.as_json else block(self.counts.total(), entry))

    def finish(self) -> None:
        if not self.as_json and self.counts:
            print(summary(self.counts))


def block(number: int, entry: Entry) -> str:
    return f"\n--- Message #{number} ---\nID: {entry.id}\nParticipant: {entry.participant}\nContent: {entry.body}"


def summary(counts: Counter[str]) -> str:
    return "\n".join(["\nMessages per participant:", *(f"  {role}: {n}" for role, n in counts.items())])


def json_line(entry: Entry) -> str:
    return orjson.dumps({"id": entry.id, "participant": entry.participant, "body": parse_body(entry.body)}).decode()


def parse_body(body: str) -> Any:
    """The body's JSON value, or ``body`` itself when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", metavar="ROOM", help="room id, [A-Za-z0-9_-]{1,64}")
    parser.add_argument("--redis-url", metavar="URL", default=os.environ.get("REDIS_URL") or DEFAULT_URL,
                        help=f"default: $REDIS_URL, else {DEFAULT_URL}")
    parser.add_argument("--json", action="store_true", help="one JSON object per message and line")
    parser.add_argument("--follow", action="store_true", help="keep printing new messages until interrupted")
    parser.add_argument("--participant", choices=ROLES, help="only this role's messages")
    parser.add_argument("--url", metavar="WS_URL", help="with --follow: take new messages from this relay "
                                                        "(ws://host:port) instead of Redis")
    parser.add_argument("--token", default=os.environ.get("CHAT_RELAY_TOKEN"),
                        help="with --url: a room token or the admin key (default: $CHAT_RELAY_TOKEN)")


def parse_args(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser.parse_args(argv)


def connect(url: str) -> redis.Redis:
    """A client for ``url``; raises ValueError for a malformed URL (nothing is sent yet)."""
    return redis.Redis.from_url(url, decode_responses=True, encoding_errors="replace",
                                socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)


def on_cluster(client: redis.Redis, url: str) -> Any:
    """``client``, or a Redis Cluster client when ``url`` names a node of one (asked: ``INFO cluster``)."""
    if not client.info("cluster").get("cluster_enabled"):
        return client
    client.close()
    return redis.RedisCluster.from_url(url, decode_responses=True, encoding_errors="replace",
                                       socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)


def to_entry(raw: RawEntry) -> Entry:
    entry_id, fields = raw
    return Entry(entry_id, fields.get("participant", "?"), fields.get("body", ""))


def newest_id(client: redis.Redis, key: str) -> str:
    """The id of the newest entry in ``key``, or ``0-0`` when the stream is empty or absent."""
    newest: list[RawEntry] = client.xrevrange(key, count=1)  # type: ignore[assignment]
    return newest[0][0] if newest else NO_ENTRIES


def history(client: redis.Redis, key: str, end: str) -> Iterator[Entry]:
    """The entries of ``key`` up to ``end`` included, oldest first, read PAGE_COUNT at a time."""
    start = "-"
    while end != NO_ENTRIES:
        page: list[RawEntry] = client.xrange(key, start, end, count=PAGE_COUNT)  # type: ignore[assignment]
        yield from map(to_entry, page)
        if len(page) < PAGE_COUNT:
            return
        start = "(" + page[-1][0]


def follow(client: redis.Redis, key: str, after: str) -> Iterator[Entry]:
    """The entries appended to ``key`` after the id ``after``, as they arrive; never ends."""
    while True:
        reply: Any = client.xread({key: after}, count=PAGE_COUNT, block=BLOCK_MS)
        streams = reply.items() if isinstance(reply, dict) else reply or []  # RESP3 / RESP2 shape
        for _, page in streams:
            yield from map(to_entry, page)
            after = page[-1][0]


async def follow_relay(url: str, room: str, after: str, token: str | None, report: Report,
                       participant: str | None) -> None:
    """Show the stored messages the relay at ``url`` delivers after the id ``after``; never ends."""
    async with connect_room(url, room, token=token, last_id="0" if after == NO_ENTRIES else after) as relay:
        async for frame in relay:
            hd = frame["hd"]
            if "id" in hd and (participant is None or hd.get("role") == participant):
                report.show(from_frame(frame))


def from_frame(frame: dict[str, Any]) -> Entry:
    """A stored message's frame as its entry: the body is the envelope without ``hd.id``."""
    hd = {key: value for key, value in frame["hd"].items() if key != "id"}
    body = orjson.dumps({"hd": hd, "bd": frame["bd"]}).decode()
    return Entry(frame["hd"]["id"], str(hd.get("role", "?")), body)


def matching(entries: Iterable[Entry], participant: str | None) -> Iterator[Entry]:
    return (entry for entry in entries if participant is None or entry.participant == participant)


def run(client: redis.Redis, args: argparse.Namespace, report: Report) -> int:
    """Print the history (then, with --follow, what comes next); return the exit status."""
    key = stream_key(args.room)
    end = newest_id(client, key)
    if not args.json:
        total = sum(1 for _ in matching(history(client, key, end), args.participant))
        print(f"Total {total} messages in {key}", flush=True)
    for entry in matching(history(client, key, end), args.participant):
        report.show(entry)
    if args.follow:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        if args.url is not None:
            asyncio.run(follow_relay(args.url, args.room, end, args.token, report, args.participant))
        else:
            for entry in matching(follow(client, key, end), args.participant):
                report.show(entry)
    return 0 if report.counts else 1


def fail(prog: str, message: str) -> int:
    """Print ``message`` on one line of stderr; return exit status 2."""
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    return run_args(parse_args(argv, prog), prog)


def run_args(args: argparse.Namespace, prog: str = PROG) -> int:
    """Run with parsed arguments; return the exit status."""
    if not is_valid_room(args.room):
        return fail(prog, f"invalid room id {args.room!r}: use 1 to 64 characters among A-Z a-z 0-9 _ -")
    if args.url is not None and not args.follow:
        return fail(prog, "--url goes with --follow (the history itself is read from Redis)")
    if args.url is not None and not args.url.startswith(("ws://", "wss://")):
        return fail(prog, f"--url must start with ws:// or wss:// (got {args.url!r})")
    try:
        client = connect(args.redis_url)
    except ValueError as exc:
        return fail(prog, f"invalid Redis URL: {exc}")
    report = Report(as_json=args.json)
    try:
        client = on_cluster(client, args.redis_url)
        status = run(client, args, report)
    except KeyboardInterrupt:
        status = 0 if args.follow else 130
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException) as exc:
        return fail(prog, f"cannot reach Redis: {exc}")
    except redis.RedisError as exc:
        return fail(prog, f"Redis error: {exc}")
    except RelayError as exc:
        return fail(prog, f"the relay refused: {exc.code}: {exc.message}")
    except OSError as exc:
        return fail(prog, f"cannot reach the relay at {args.url}: {exc}")
    finally:
        client.close()
    report.finish()
    return status

