"""scripts/check_redis_chat.py as its users run it: a real process, against the test Redis."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from client import connect
from server.store.keys import stream_key
from tests.conftest import new_room
from tests.support.client import Client
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import free_port
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange, xrevrange

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_redis_chat.py"
TIMEOUT_S = 30.0
# Longer than one XREAD BLOCK of the script (5 s) and than redis-py's default socket timeout (5 s),
# which would cut a blocking read if the script kept it.
QUIET_S = 6.5


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment without REDIS_URL, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, **extra}


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env or script_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def add(rdb: redis.Redis, room: str, participant: str, body: str) -> str:
    """XADD one entry to the room's stream; its id."""
    return str(rdb.xadd(stream_key(room), {"participant": participant, "body": body}))


def envelope(role: str, room: str, text: str) -> str:
    return json.dumps({"hd": {"event": "chat.message", "role": role, "sid": room, "ts": "2025-11-22T15:30:00.123Z"},
                       "bd": {"text": text}}, separators=(",", ":"))


def block(number: int, entry_id: str, participant: str, body: str) -> str:
    return f"\n--- Message #{number} ---\nID: {entry_id}\nParticipant: {participant}\nContent: {body}\n"


def assert_one_line_error(result: subprocess.CompletedProcess[str], starts: str) -> None:
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(starts) and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


async def test_prints_messages_sent_through_the_server_in_the_human_format(
    server: ServerProcess, room: str, rdb: redis.Redis, redis_url: str
) -> None:
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server.ws(room, role="B")) as b:
        for sender, text in ((a, "hi"), (b, "hello"), (a, "bye")):
            await sender.chat(text)
            await a.recv()
            await b.recv()
    stored: list[tuple[str, dict[str, str]]] = rdb.xrange(stream_key(room))  # type: ignore[assignment]
    assert [json.loads(fields["body"])["bd"]["text"] for _, fields in stored] == ["hi", "hello", "bye"]

    result = run_script(room, "--redis-url", redis_url)

    blocks = "".join(block(n, entry_id, fields["participant"], fields["body"])
                     for n, (entry_id, fields) in enumerate(stored, 1))
    assert result.stdout == (f"Total 3 messages in chat:session:{room}\n{blocks}"
                             "\nMessages per participant:\n  A: 2\n  B: 1\n")
    assert (result.returncode, result.stderr) == (0, "")


def test_json_prints_one_object_per_message_with_the_body_parsed_when_it_is_json(
    room: str, rdb: redis.Redis, redis_url: str
) -> None:
    first = add(rdb, room, "A", envelope("A", room, "hello"))
    second = add(rdb, room, "B", "not json {")

    result = run_script(room, "--redis-url", redis_url, "--json")

    assert (result.returncode, result.stderr) == (0, "")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"id": first, "participant": "A", "body": json.loads(envelope("A", room, "hello"))},
        {"id": second, "participant": "B", "body": "not json {"},
    ]


def test_participant_filter_numbers_and_counts_only_that_role(room: str, rdb: redis.Redis, redis_url: str) -> None:
    bodies = [envelope(role, room, f"m{n}") for n, role in enumerate(["A", "B", "A", "llm"])]
    ids = [add(rdb, room, role, body) for role, body in zip(["A", "B", "A", "llm"], bodies, strict=True)]

    result = run_script(room, "--redis-url", redis_url, "--participant", "A")

    assert result.stdout == (f"Total 2 messages in chat:session:{room}\n"
                             f"{block(1, ids[0], 'A', bodies[0])}{block(2, ids[2], 'A', bodies[2])}"
                             "\nMessages per participant:\n  A: 2\n")
    assert result.returncode == 0
    as_json = run_script(room, "--redis-url", redis_url, "--participant", "llm", "--json")
    assert [json.loads(line)["id"] for line in as_json.stdout.splitlines()] == [ids[3]]


def test_a_filter_that_matches_nothing_exits_1(room: str, rdb: redis.Redis, redis_url: str) -> None:
    add(rdb, room, "A", envelope("A", room, "only A here"))

    result = run_script(room, "--redis-url", redis_url, "--participant", "B")

    assert (result.returncode, result.stdout) == (1, f"Total 0 messages in chat:session:{room}\n")


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_room_without_messages_exits_1(room: str, rdb: redis.Redis, redis_url: str, state: str) -> None:
    if state == "empty":  # the stream exists, with no entries left
        add(rdb, room, "A", envelope("A", room, "trimmed away"))
        rdb.xtrim(stream_key(room), maxlen=0, approximate=False)
        assert rdb.exists(stream_key(room)) == 1

    human = run_script(room, "--redis-url", redis_url)
    as_json = run_script(room, "--redis-url", redis_url, "--json")

    assert (human.returncode, human.stdout, human.stderr) == (1, f"Total 0 messages in chat:session:{room}\n", "")
    assert (as_json.returncode, as_json.stdout, as_json.stderr) == (1, "", "")


@pytest.mark.parametrize("count", [1000, 2500])
def test_a_stream_longer_than_a_page_is_printed_whole_and_in_order(
    room: str, rdb: redis.Redis, redis_url: str, count: int
) -> None:
    pipe = rdb.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream_key(room), {"participant": "AB"[n % 2], "body": f'{{"n":{n}}}'})
    ids = [str(entry_id) for entry_id in pipe.execute()]

    as_json = run_script(room, "--redis-url", redis_url, "--json")
    human = run_script(room, "--redis-url", redis_url)

    assert [json.loads(line)["id"] for line in as_json.stdout.splitlines()] == ids
    assert human.stdout.startswith(f"Total {count} messages in chat:session:{room}\n")
    assert human.stdout.endswith(f"\nMessages per participant:\n  A: {count // 2}\n  B: {count // 2}\n")
    assert [line.removeprefix("ID: ") for line in human.stdout.splitlines() if line.startswith("ID: ")] == ids


def test_unreachable_redis_exits_2_with_one_line_on_stderr(room: str) -> None:
    result = run_script(room, "--redis-url", f"redis://127.0.0.1:{free_port()}/0")

    assert_one_line_error(result, "check_redis_chat.py: cannot reach Redis")


@pytest.mark.parametrize("bad_room", ["bad room!", "a/b", "x" * 65, ""])
def test_an_invalid_room_id_exits_2_with_one_line_on_stderr(redis_url: str, bad_room: str) -> None:
    result = run_script(bad_room, "--redis-url", redis_url)

    assert_one_line_error(result, "check_redis_chat.py: invalid room id")


def test_the_redis_url_defaults_to_the_environment_and_the_option_overrides_it(
    room: str, rdb: redis.Redis, redis_url: str
) -> None:
    add(rdb, room, "user", envelope("user", room, "from env"))
    dead_url = f"redis://127.0.0.1:{free_port()}/0"

    from_env = run_script(room, env=script_env(REDIS_URL=redis_url))
    from_option = run_script(room, "--redis-url", redis_url, env=script_env(REDIS_URL=dead_url))

    assert from_env.returncode == from_option.returncode == 0
    assert from_env.stdout == from_option.stdout
    assert from_env.stdout.startswith(f"Total 1 messages in chat:session:{room}\n")


class Follower:
    """``check_redis_chat.py --follow`` running, with its stdout lines read by a thread."""

    def __init__(self, *args: str) -> None:
        # A background process started by a non-interactive shell ignores SIGINT, and children
        # inherit that: restore the default so SIGINT acts as Ctrl-C does in a terminal.
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args, "--follow"], cwd=ROOT, env=script_env(), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, wanted: str) -> list[str]:
        """The lines up to and including ``wanted``; fails after TIMEOUT_S or at end of output."""
        seen: list[str] = []
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {wanted!r} within {TIMEOUT_S} s; got {seen}")
            if line is None:
                pytest.fail(f"output ended before {wanted!r}; got {seen}")
            seen.append(line)
            if line == wanted:
                return seen

    def interrupt(self) -> tuple[int, list[str], str]:
        """Send SIGINT; the exit status, the remaining stdout lines and stderr."""
        self.process.send_signal(signal.SIGINT)
        status = self.process.wait(TIMEOUT_S)
        assert self.process.stderr is not None
        rest: list[str] = []
        while (line := self.lines.get(timeout=TIMEOUT_S)) is not None:
            rest.append(line)
        return status, rest, self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_follow_prints_a_message_appended_after_it_started_and_exits_0_on_sigint(
    room: str, rdb: redis.Redis, redis_url: str
) -> None:
    before = envelope("A", room, "before")
    add(rdb, room, "A", before)
    follower = Follower(room, "--redis-url", redis_url)
    try:
        follower.read_until(f"Content: {before}")
        after = envelope("B", room, "after")
        after_id = add(rdb, room, "B", after)

        seen = follower.read_until(f"Content: {after}")
        status, rest, stderr = follower.interrupt()
    finally:
        follower.kill()

    assert seen == ["", "--- Message #2 ---", f"ID: {after_id}", "Participant: B", f"Content: {after}"]
    assert (status, stderr) == (0, "")
    assert rest == ["", "Messages per participant:", "  A: 1", "  B: 1"]


def test_follow_keeps_waiting_through_a_quiet_spell_longer_than_one_blocking_read(
    room: str, rdb: redis.Redis, redis_url: str
) -> None:
    before = envelope("A", room, "before")
    add(rdb, room, "A", before)
    follower = Follower(room, "--redis-url", redis_url)
    try:
        follower.read_until(f"Content: {before}")
        with pytest.raises(subprocess.TimeoutExpired):  # still following, not failed on a socket timeout
            follower.process.wait(QUIET_S)
        after = envelope("A", room, "after the quiet spell")
        add(rdb, room, "A", after)

        follower.read_until(f"Content: {after}")
        status, _, stderr = follower.interrupt()
    finally:
        follower.kill()

    assert (status, stderr) == (0, "")


def test_follow_waits_on_an_empty_room_and_applies_the_participant_filter(
    room: str, rdb: redis.Redis, redis_url: str
) -> None:
    follower = Follower(room, "--redis-url", redis_url, "--participant", "B")
    try:
        follower.read_until(f"Total 0 messages in chat:session:{room}")
        add(rdb, room, "A", envelope("A", room, "not for the B filter"))
        for_b = envelope("B", room, "for B")
        b_id = add(rdb, room, "B", for_b)

        seen = follower.read_until(f"Content: {for_b}")
        status, rest, stderr = follower.interrupt()
    finally:
        follower.kill()

    assert seen == ["", "--- Message #1 ---", f"ID: {b_id}", "Participant: B", f"Content: {for_b}"]
    assert (status, stderr) == (0, "")
    assert rest == ["", "Messages per participant:", "  B: 1"]


async def test_follow_with_url_takes_new_messages_from_the_relay_as_stored(
    server: ServerProcess, room: str, rdb: redis.Redis, redis_url: str
) -> None:
    before = envelope("A", room, "before")
    add(rdb, room, "A", before)
    follower = Follower(room, "--redis-url", redis_url, "--json", "--url", f"ws://127.0.0.1:{server.port}")
    try:
        follower.read_until(json.dumps({"id": xrevrange_newest(rdb, room), "participant": "A",
                                        "body": json.loads(before)}, separators=(",", ":")))
        async with connect(f"ws://127.0.0.1:{server.port}", room, role="B") as b:
            sent = [await b.send(text) for text in ("one", "two")]
        seen = follower.read_until(json.dumps(json_entry(rdb, room, sent[-1]["hd"]["id"]), separators=(",", ":")))
        status, rest, stderr = follower.interrupt()
    finally:
        follower.kill()
    stored = [json_entry(rdb, room, entry_id) for entry_id, _ in xrange(rdb, stream_key(room))]
    assert [json.loads(line) for line in seen] == stored[1:]  # each as stored, once, in order
    assert (status, rest, stderr) == (0, [], "")


def xrevrange_newest(rdb: redis.Redis, room: str) -> str:
    return xrevrange(rdb, stream_key(room), count=1)[0][0]


def json_entry(rdb: redis.Redis, room: str, entry_id: str) -> dict[str, object]:
    """What --json prints for the stored entry ``entry_id``."""
    [(_, fields)] = xrange(rdb, stream_key(room), entry_id, entry_id)
    return {"id": entry_id, "participant": fields["participant"], "body": json.loads(fields["body"])}


def test_url_must_be_a_websocket_url(room: str, redis_url: str) -> None:
    result = run_script(room, "--redis-url", redis_url, "--follow", "--url", "http://127.0.0.1:1")
    assert_one_line_error(result, "check_redis_chat.py: --url must start with ws://")


def test_a_cluster_node_s_url_reads_rooms_on_every_master(redis_cluster: RedisCluster) -> None:
    crdb = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        for room in redis_cluster.rooms_on_every_master(new_room):
            ids = [str(crdb.xadd(stream_key(room), {"participant": role, "body": envelope(role, room, "hi")}))
                   for role in ("A", "B")]
            result = run_script(room, "--json", "--redis-url", redis_cluster.nodes[-1].url.removesuffix("/0"))
            assert result.returncode == 0, result.stderr
            assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ids
    finally:
        crdb.close()
