"""The LLM participant: streamed answers to every member on every node, stored answers, failures,
cancel, one generation per room (fenced: a queued question keeps its room, a killed or paused worker
never lets two answers stream at once), and workers that survive being killed."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from protocol.errors import LLM_ERROR_CODES
from server.store.keys import stream_key
from tests.conftest import RUN
from tests.support.client import Client
from tests.support.fake_openai import LEAKED_KEY, FakeOpenAI, error_message
from tests.support.server_process import ServerProcess, WorkerProcess
from tests.support.streams import xrange

END = ("llm.response", "llm.error")


async def until_end(client: Client) -> list[dict[str, Any]]:
    """Frames up to and including the end of a generation: its one terminal event (its llm.response,
    or its llm.error)."""
    frames = []
    while True:
        frame = await client.recv()
        frames.append(frame)
        if frame["hd"]["event"] in END:
            return frames


def deltas(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["hd"]["event"] == "llm.streaming"]


def check_generation(frames: list[dict[str, Any]], trigger: dict[str, Any]) -> dict[str, Any]:
    """The generation answering ``trigger`` in ``frames``: contiguous seq, text == the deltas."""
    assert frames[0]["hd"]["id"] == trigger["hd"]["id"]  # the trigger first, then its generation
    streamed = deltas(frames)
    response = next(f for f in frames if f["hd"]["event"] == "llm.response")
    assert streamed, "no llm.streaming frames"
    assert [d["hd"]["seq"] for d in streamed] == list(range(len(streamed)))
    assert {d["hd"]["rid"] for d in streamed} == {response["hd"]["rid"]}
    assert {d["hd"]["reply_to"] for d in streamed} == {trigger["hd"]["id"]} == {response["hd"]["reply_to"]}
    assert all(d["hd"]["role"] == "llm" and d["hd"]["sid"] == trigger["hd"]["sid"] for d in streamed)
    assert response["bd"]["text"] == "".join(d["bd"]["delta"] for d in streamed)
    assert frames.index(response) > frames.index(streamed[-1])
    return response


def stored(rdb: redis.Redis, room: str, entry_id: str) -> tuple[str, dict[str, Any]]:
    [(_, fields)] = xrange(rdb, stream_key(room), entry_id, entry_id)
    return fields["participant"], orjson.loads(fields["body"])


async def test_a_mention_is_streamed_to_every_member_on_both_nodes(server: ServerProcess, server2: ServerProcess,
                                                                  room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server2.ws(room, role="B")) as b:
        await a.chat("@LLM what is a stream?")
        frames_a, frames_b = await until_end(a), await until_end(b)
    trigger = frames_a[0]
    assert trigger["hd"]["event"] == "chat.message"
    response = check_generation(frames_a, trigger)
    assert check_generation(frames_b, trigger) == response
    assert [f["bd"] for f in deltas(frames_a)] == [f["bd"] for f in deltas(frames_b)]
    assert response["bd"]["finish_reason"] == "stop" and response["bd"]["model"] == "scripted-1"
    assert response["bd"]["usage"]["completion_tokens"] > 0
    participant, body = stored(rdb, room, response["hd"]["id"])
    assert participant == "llm" and body["bd"]["text"] == response["bd"]["text"]
    assert rdb.xlen(stream_key(room)) == 2  # the question and the answer: deltas are not stored


async def test_llm_invoke_with_and_without_prompt(server: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="B")) as b:
        await b.send({"event": "llm.invoke", "cid": "q1"}, {"prompt": "summarise"})
        frames = await until_end(b)
        invoke = frames[0]
        assert (invoke["hd"]["event"], invoke["hd"]["role"], invoke["hd"]["cid"]) == ("llm.invoke", "B", "q1")
        response = check_generation(frames, invoke)
        assert "B: summarise" in response["bd"]["text"]  # the scripted model echoes the question
        assert stored(rdb, room, invoke["hd"]["id"]) == ("B", {"hd": {k: v for k, v in invoke["hd"].items()
                                                                     if k != "id"}, "bd": {"prompt": "summarise"}})
        await b.chat("the sky is green")
        await b.recv()
        await b.send({"event": "llm.invoke"})  # no prompt: the conversation so far
        frames = await until_end(b)
        response = check_generation(frames, frames[0])
        assert "B: the sky is green" in response["bd"]["text"]


@pytest.fixture(scope="module")
def refusing(start_server: Callable[..., ServerProcess], redis_url: str) -> tuple[ServerProcess, ServerProcess]:
    """Two relays with ``LLM_TURNS=refuse`` (a question while the bot answers is refused ``busy``)."""
    queue = f"t{RUN}-refuse"
    return (start_server(REDIS_URL=redis_url, LLM_QUEUE=queue, LLM_TURNS="refuse"),
            start_server(REDIS_URL=redis_url, LLM_QUEUE=queue, LLM_TURNS="refuse"))


async def test_busy_across_two_processes_and_free_again_at_once(refusing: tuple[ServerProcess, ServerProcess],
                                                                room: str, rdb: redis.Redis) -> None:
    server, server2 = refusing
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server2.ws(room, role="B")) as b:
        await a.chat("@llm #long story please")
        await b.recv()  # the question
        first_delta = await b.recv()
        assert first_delta["hd"]["event"] == "llm.streaming"
        await b.send({"event": "llm.invoke", "cid": "i1"}, {"prompt": "me too"})
        await b.chat("@llm and me", cid="m1")
        replies: dict[str, str] = {}
        while len(replies) < 3:
            frame = await b.recv()
            if frame["hd"]["event"] == "error":
                replies[frame["bd"]["cid"]] = frame["bd"]["code"]
            elif frame["hd"].get("cid") == "m1":
                replies["m1-chat"] = "stored"
        assert replies == {"i1": "busy", "m1": "busy", "m1-chat": "stored"}  # the chat itself is kept
        rest = await until_end(a)
        assert rest[-1]["hd"]["event"] == "llm.response"
        await a.send({"event": "llm.invoke"}, {"prompt": "now?"})  # the lock is gone before the answer came
        assert (await a.recv())["hd"]["event"] == "llm.invoke"
        assert (await a.recv())["hd"]["event"] == "llm.streaming"
        await until_end(a)
    events = [orjson.loads(fields["body"])["hd"]["event"] for _, fields in xrange(rdb, stream_key(room))]
    assert events == ["chat.message", "chat.message", "llm.response", "llm.invoke", "llm.response"]


async def test_cancel_from_the_other_node(server: ServerProcess, server2: ServerProcess, room: str) -> None:
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server2.ws(room, role="B")) as b:
        await b.send({"event": "llm.cancel", "cid": "x"}, {"rid": "g-nothing"})
        refusal = await b.recv()
        assert (refusal["bd"]["code"], refusal["bd"]["cid"]) == ("unknown_generation", "x")
        await a.chat("@llm #long tell me everything")
        await b.recv()
        first = await b.recv()
        await b.send({"event": "llm.cancel"}, {"rid": first["hd"]["rid"]})
        frames = [first, *await until_end(b)]
    response = frames[-1]
    assert response["hd"]["event"] == "llm.response" and response["bd"]["finish_reason"] == "cancelled"
    assert response["bd"]["cancelled_by"] == "B"  # LLM_CANCEL=any: the other human may, and is named
    assert response["bd"]["text"] == "".join(d["bd"]["delta"] for d in deltas(frames))
    assert len(response["bd"]["text"].split()) < 200  # stopped well before the ~300 words of the whole answer


async def test_with_cancel_asker_only_the_asker_stops_the_answer_on_any_node(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    queue = f"t{RUN}-asker"
    one = start_server(REDIS_URL=redis_url, LLM_QUEUE=queue, LLM_CANCEL="asker")
    two = start_server(REDIS_URL=redis_url, LLM_QUEUE=queue, LLM_CANCEL="asker", LLM_WORKERS="0")
    async with await Client.open(one.ws(room, role="A")) as a, await Client.open(two.ws(room, role="B")) as b:
        await a.chat("@llm #long tell me everything")
        await b.recv()
        first = await b.recv()
        rid = first["hd"]["rid"]
        await b.send({"event": "llm.cancel", "cid": "stop-1"}, {"rid": rid})
        refusal = await b.recv()
        while refusal["hd"]["event"] != "error":  # deltas still arriving meanwhile
            refusal = await b.recv()
        assert (refusal["bd"]["code"], refusal["bd"]["cid"]) == ("forbidden", "stop-1")
        assert "LLM_CANCEL=asker" in refusal["bd"]["message"]
        assert (await b.recv())["hd"]["event"] == "llm.streaming"  # the answer goes on
        await a.send({"event": "llm.cancel"}, {"rid": rid})
        response = (await until_end(a))[-1]
        assert (await until_end(b))[-1] == response
    assert (response["bd"]["finish_reason"], response["bd"]["cancelled_by"]) == ("cancelled", "A")
    participant, body = stored(rdb, room, response["hd"]["id"])
    assert participant == "llm" and body["bd"]["cancelled_by"] == "A"


@pytest.fixture(scope="module")
def openai_node(start_server: Callable[..., ServerProcess], redis_url: str, fake_openai: FakeOpenAI) -> ServerProcess:
    return start_server(REDIS_URL=redis_url, LLM_PROVIDER="openai", OPENAI_BASE_URL=fake_openai.base_url,
                        OPENAI_API_KEY="sk-test", LLM_MODEL="fake-model", LLM_MAX_RETRIES="0", LLM_TIMEOUT_S="2",
                        LLM_SYSTEM_PROMPT="You are the test bot.", LLM_HISTORY_TURNS="3")


async def test_openai_provider_sees_system_prompt_and_earlier_turns(openai_node: ServerProcess, room: str,
                                                                    fake_openai: FakeOpenAI) -> None:
    tag = "tag" + secrets.token_hex(4)
    async with await Client.open(openai_node.ws(room, role="A")) as a:
        for text in ("one", "two", "three"):
            await a.chat(text)
            await a.recv()
        await a.send({"event": "llm.invoke"}, {"prompt": f"what did I say? {tag}"})
        frames = await until_end(a)
    response = check_generation(frames, frames[0])
    assert response["bd"]["model"] == "fake-model" and response["bd"]["usage"]["total_tokens"] > 0
    [exchange] = fake_openai.exchanges(tag)
    assert exchange.body["stream"] is True and exchange.body["model"] == "fake-model"
    assert exchange.body["messages"] == [
        {"role": "system", "content": "You are the test bot."},
        {"role": "user", "content": "A: two"},
        {"role": "user", "content": "A: three"},
        {"role": "user", "content": f"A: what did I say? {tag}"},
    ]


@pytest.mark.parametrize(("marker", "code", "partial"), [
    ("#429", "provider_rate_limited", False),
    ("#hang", "provider_timeout", False),
    ("#cut", "provider_unavailable", True),
    ("#500", "provider_error", False),
])
async def test_provider_failures_give_llm_error_and_the_room_stays_usable(
        openai_node: ServerProcess, room: str, marker: str, code: str, partial: bool, rdb: redis.Redis) -> None:
    async with await Client.open(openai_node.ws(room, role="A")) as a, \
            await Client.open(openai_node.ws(room, role="B")) as b:
        await a.chat(f"@llm {marker}")
        frames = await until_end(b)
        end = frames[-1]
        if partial:  # the text streamed before the failure is kept, and says why it was cut
            assert end["hd"]["event"] == "llm.response" and end["bd"]["finish_reason"] == "error"
            assert end["bd"]["error"]["code"] == code and end["bd"]["error"]["message"]
            assert end["bd"]["text"] == "".join(d["bd"]["delta"] for d in deltas(frames)) != ""
        else:
            assert end["hd"]["event"] == "llm.error" and end["bd"]["code"] == code and end["bd"]["message"]
            assert end["hd"]["reply_to"] == frames[0]["hd"]["id"]
        assert (await until_end(a))[-1] == end
        await b.chat("@llm again")  # not busy: the failed generation released the room
        frames = await until_end(a)
        assert frames[-1]["hd"]["event"] == "llm.response"


@pytest.mark.parametrize(("status", "code"), [
    (401, "provider_auth"), (429, "provider_rate_limited"), (408, "provider_timeout"),
    (503, "provider_unavailable"), (404, "provider_bad_request"), (500, "provider_error"),
])
async def test_each_provider_status_reaches_the_room_as_its_code_with_the_providers_message_and_one_warning(
        openai_node: ServerProcess, room: str, status: int, code: str) -> None:
    async with await Client.open(openai_node.ws(room, role="A")) as a:
        await a.chat(f"@llm #status={status}")
        end = (await until_end(a))[-1]
    shown = error_message(status).replace(LEAKED_KEY, "sk-proj-***")
    assert end["hd"]["event"] == "llm.error" and end["bd"]["code"] == code
    assert end["bd"]["message"] == f"{LLM_ERROR_CODES[code]} HTTP {status}: {shown}"
    log = openai_node.log_path.read_text(errors="replace")
    warnings = [line for line in log.splitlines() if f"room {room}: generation" in line and " failed: " in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0]
    assert f"failed: {code} (HTTP {status}): " in warnings[0] and shown in warnings[0]
    assert LEAKED_KEY not in log and LEAKED_KEY[8:] not in log


async def test_bd_model_is_the_model_asked_for_whether_the_answer_finished_failed_or_was_cancelled(
        openai_node: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(openai_node.ws(room, role="A")) as a:
        await a.chat("@llm #dated")  # the upstream names a dated snapshot of the model
        finished = (await until_end(a))[-1]
        await a.chat("@llm #dated #cut")
        failed = (await until_end(a))[-1]
        await a.chat("@llm #dated #slow")
        await a.recv()
        first = await a.recv()
        await a.send({"event": "llm.cancel"}, {"rid": first["hd"]["rid"]})
        cancelled = (await until_end(a))[-1]
    assert [end["bd"]["finish_reason"] for end in (finished, failed, cancelled)] == ["stop", "error", "cancelled"]
    assert {end["bd"]["model"] for end in (finished, failed, cancelled)} == {"fake-model"}
    assert stored(rdb, room, finished["hd"]["id"])[1]["bd"]["model"] == "fake-model"


async def test_cancel_closes_the_upstream_stream(openai_node: ServerProcess, room: str,
                                                 fake_openai: FakeOpenAI) -> None:
    tag = "tag" + secrets.token_hex(4)
    async with await Client.open(openai_node.ws(room, role="A")) as a:
        await a.chat(f"@llm #slow {tag}")
        await a.recv()
        first = await a.recv()
        await a.send({"event": "llm.cancel"}, {"rid": first["hd"]["rid"]})
        frames = await until_end(a)
    assert frames[-1]["bd"]["finish_reason"] == "cancelled"
    exchange = await fake_openai.ended(tag, timeout_s=10)
    assert exchange.ended == "client_closed" and exchange.tokens_sent < 200


async def test_a_killed_worker_s_request_is_finished_by_another(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis,
        logs_dir: Path) -> None:
    queue = f"t{RUN}-kill"
    env = {"REDIS_URL": redis_url, "LLM_QUEUE": queue, "LLM_RECLAIM_AFTER_S": "1", "LLM_SCRIPTED_DELAY_MS": "30"}
    node = start_server(**env, LLM_WORKERS="0")
    first = WorkerProcess(env, logs_dir / f"worker-{room}-1.log").start()
    second = WorkerProcess(env, logs_dir / f"worker-{room}-2.log")
    try:
        async with await Client.open(node.ws(room, role="A")) as a:
            await a.chat("@llm #long")
            await a.recv()
            early = await a.recv()
            assert early["hd"]["event"] == "llm.streaming" and "attempt" not in early["hd"]
            first.kill()  # SIGKILL mid-generation: its claim is never renewed again
            second.start()
            frames = await until_end(a)
        retried = [d for d in deltas(frames) if d["hd"].get("attempt") == 2]
        assert retried and retried[0]["hd"]["seq"] == 0  # the answer starts over, and says so
        response = frames[-1]
        assert response["hd"]["rid"] == early["hd"]["rid"] and response["hd"]["attempt"] == 2
        assert response["bd"]["text"] == "".join(d["bd"]["delta"] for d in retried)
        answers = [f for _, f in xrange(rdb, stream_key(room)) if f["participant"] == "llm"]
        assert len(answers) == 1
    finally:
        first.kill()
        second.stop()


async def test_a_worker_with_every_slot_taken_serves_the_queued_questions_as_slots_free(
        start_server: Callable[..., ServerProcess], redis_url: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_CONCURRENCY="1")
    rooms = [f"t{RUN}-slots-{secrets.token_hex(3)}-{n}" for n in range(3)]
    clients = [await Client.open(node.ws(room, role="A")) for room in rooms]
    try:
        for client in clients:  # three questions for one slot: two wait in the queue
            await client.chat("@llm one at a time?")
        for client in clients:
            frames = await until_end(client)
            assert check_generation(frames, frames[0])["bd"]["finish_reason"] == "stop"
    finally:
        for client in clients:
            await client.close()
    assert [rdb.xlen(stream_key(room)) for room in rooms] == [2, 2, 2]


async def busy_probe(client: Client, cid: str) -> str:
    """Ask the bot with an ``llm.invoke``: ``busy``, or ``accepted`` (the invoke was stored)."""
    await client.send({"event": "llm.invoke", "cid": cid}, {"prompt": "me too"})
    while True:
        frame = await client.recv()
        if frame["hd"]["event"] == "error" and frame["bd"].get("cid") == cid:
            return str(frame["bd"]["code"])
        if frame["hd"]["event"] == "llm.invoke" and frame["hd"].get("cid") == cid:
            return "accepted"


def one_generation_at_a_time(frames: list[dict[str, Any]]) -> None:
    """The bot's frames in ``frames`` come one generation after the other: a generation's frames are
    contiguous and end with exactly one terminal event."""
    bot = [f for f in frames if f["hd"].get("role") == "llm"]
    runs: list[str] = []
    for frame in bot:
        if not runs or runs[-1] != frame["hd"]["rid"]:
            runs.append(frame["hd"]["rid"])
    assert len(runs) == len(set(runs)), f"interleaved generations: {runs}"
    for rid in runs:
        ends = [f for f in bot if f["hd"]["rid"] == rid and f["hd"]["event"] in END]
        assert len(ends) == 1, f"{rid}: {len(ends)} terminal events"


async def test_a_question_waiting_in_the_queue_longer_than_the_running_lease_keeps_its_room(
        start_server: Callable[..., ServerProcess], redis_url: str, rdb: redis.Redis) -> None:
    # One worker slot; the running lease is 2 s (twice LLM_RECLAIM_AFTER_S); the long answer takes ~8 s.
    node = start_server(REDIS_URL=redis_url, LLM_CONCURRENCY="1", LLM_RECLAIM_AFTER_S="1", LLM_TURNS="refuse",
                        LLM_SCRIPTED_DELAY_MS="80", LLM_QUEUE=f"t{RUN}-lease-{secrets.token_hex(3)}")
    busy_room, waiting_room = (f"t{RUN}-lease-{secrets.token_hex(3)}-{n}" for n in range(2))
    async with await Client.open(node.ws(busy_room, role="A")) as x, \
            await Client.open(node.ws(waiting_room, role="A")) as y:
        await x.chat("@llm #long take the only slot")
        await x.recv()
        first = await x.recv()
        assert first["hd"]["event"] == "llm.streaming"
        await y.chat("@llm wait for the slot")  # queued: every slot is busy
        asked_at = time.monotonic()
        assert (await y.recv())["hd"]["event"] == "chat.message"
        while time.monotonic() - asked_at < 4.5:  # more than twice the running lease: the old lock lapsed
            assert (await x.recv())["hd"]["event"] == "llm.streaming", "the long answer ended too soon"
        assert await busy_probe(y, "second") == "busy"  # the queued question still holds its room
        await x.send({"event": "llm.cancel"}, {"rid": first["hd"]["rid"]})  # free the slot
        assert (await until_end(x))[-1]["hd"]["event"] == "llm.response"
        frames = await until_end(y)
        assert frames[-1]["hd"]["event"] == "llm.response" and frames[-1]["bd"]["finish_reason"] == "stop"
        one_generation_at_a_time(frames)
    answers = [f for _, f in xrange(rdb, stream_key(waiting_room)) if f["participant"] == "llm"]
    assert len(answers) == 1


async def test_a_killed_worker_never_lets_two_answers_stream_at_once(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis,
        logs_dir: Path) -> None:
    queue = f"t{RUN}-kill2-{secrets.token_hex(3)}"
    env = {"REDIS_URL": redis_url, "LLM_QUEUE": queue, "LLM_RECLAIM_AFTER_S": "1", "LLM_SCRIPTED_DELAY_MS": "30",
           "LLM_TURNS": "refuse"}
    node = start_server(**env, LLM_WORKERS="0")
    first = WorkerProcess(env, logs_dir / f"worker-{room}-k1.log").start()
    second = WorkerProcess(env, logs_dir / f"worker-{room}-k2.log")
    try:
        async with await Client.open(node.ws(room, role="A")) as a, \
                await Client.open(node.ws(room, role="B")) as b:
            await a.chat("@llm #long")
            question = await a.recv()
            early = await a.recv()
            assert early["hd"]["event"] == "llm.streaming"
            second.start()  # idle: the request is the first worker's
            first.kill()  # SIGKILL mid-answer: its lock is never renewed again
            probes = [await busy_probe(b, "p0")]  # at once: the dead worker's lease still holds the room
            frames = [question, early]
            while (frame := await a.recv())["hd"]["event"] not in END:
                frames.append(frame)
                if frame["hd"]["event"] == "llm.streaming" and frame["hd"].get("attempt") == 2 and len(probes) < 2:
                    probes.append(await busy_probe(b, "p1"))  # taken over: fenced again, still one answer
            frames.append(frame)
            assert probes == ["busy", "busy"]
            after = await busy_probe(b, "after")  # free again at once
            assert after == "accepted"
            frames += await until_end(a)
        frames = [f for f in frames if f["hd"]["event"] != "llm.invoke"]
        one_generation_at_a_time(frames)
        assert frames[-1]["hd"]["event"] == "llm.response"
        answers = [f for _, f in xrange(rdb, stream_key(room)) if f["participant"] == "llm"]
        assert len(answers) == 2  # the question's (attempt 2) and the one asked after it
    finally:
        first.kill()
        second.stop()


async def test_a_paused_worker_whose_request_was_taken_over_writes_no_frame_and_stores_nothing(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis,
        logs_dir: Path) -> None:
    queue = f"t{RUN}-pause-{secrets.token_hex(3)}"
    env = {"REDIS_URL": redis_url, "LLM_QUEUE": queue, "LLM_RECLAIM_AFTER_S": "1", "LLM_SCRIPTED_DELAY_MS": "40"}
    node = start_server(**env, LLM_WORKERS="0")
    first = WorkerProcess(env, logs_dir / f"worker-{room}-p1.log").start()
    second = WorkerProcess(env, logs_dir / f"worker-{room}-p2.log")
    paused = False
    try:
        async with await Client.open(node.ws(room, role="A")) as a:
            await a.chat("@llm #long")
            frames = [await a.recv(), await a.recv()]
            assert frames[-1]["hd"]["event"] == "llm.streaming"
            second.start()
            assert first.process is not None
            os.kill(first.process.pid, signal.SIGSTOP)  # a stalled worker: it still believes it holds the room
            paused = True
            while (frame := await a.recv())["hd"].get("attempt") != 2:  # the second worker took it over
                frames.append(frame)
            frames.append(frame)
            os.kill(first.process.pid, signal.SIGCONT)  # it wakes with a stale token
            paused = False
            frames += await until_end(a)
            taken_over_at = next(i for i, f in enumerate(frames) if f["hd"].get("attempt") == 2)
            assert all(f["hd"].get("attempt") == 2 for f in frames[taken_over_at:]), "a stale worker wrote a frame"
            one_generation_at_a_time(frames)
            await a.chat("@llm one more")  # anything the stale worker still sent would arrive before this
            later = await until_end(a)
            assert [f for f in later if f["hd"].get("rid") == frames[-1]["hd"]["rid"]] == []
        answers = [f for _, f in xrange(rdb, stream_key(room)) if f["participant"] == "llm"]
        assert len(answers) == 2 and orjson.loads(answers[0]["body"])["hd"]["attempt"] == 2
        deadline = time.monotonic() + 10
        while "lost its room's lock" not in first.log_path.read_text(errors="replace"):  # it knows, and stopped
            assert time.monotonic() < deadline, "the stale worker did not notice"
            await asyncio.sleep(0.05)
    finally:
        if paused and first.process is not None:
            os.kill(first.process.pid, signal.SIGCONT)
        first.kill()
        second.stop()
