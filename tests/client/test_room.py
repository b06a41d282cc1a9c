"""The Python client against real server processes and a real Redis: send, read, ask, cancel,
refusals, and a server killed and started again under traffic."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis

from client import RelayError, connect
from client.state import id_key
from server.store.keys import epoch_key, stream_key
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange

WAIT_S = 20.0


def base(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def next_frame(room: Any, event: str) -> dict[str, Any]:
    """The next frame of ``room`` with ``event``, skipping the others."""
    async with asyncio.timeout(WAIT_S):
        async for frame in room:
            if frame["hd"].get("event") == event:
                return dict(frame)
    raise AssertionError(f"the room ended before a {event} frame")


def stored_frames(frames: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(id, text)`` of the stored chat messages among ``frames``."""
    return [(f["hd"]["id"], f["bd"]["text"]) for f in frames
            if f["hd"].get("event") == "chat.message" and "id" in f["hd"]]


def stream_texts(rdb: redis.Redis, room: str) -> list[tuple[str, str]]:
    return [(entry_id, orjson.loads(fields["body"])["bd"]["text"]) for entry_id, fields in xrange(rdb, stream_key(room))
            if orjson.loads(fields["body"])["hd"]["event"] == "chat.message"]


async def test_send_returns_the_stored_envelope_and_every_member_reads_it(server: ServerProcess, room: str,
                                                                          rdb: redis.Redis) -> None:
    async with connect(base(server), room, role="A") as a, connect(base(server), room, role="B") as b:
        ready = await next_frame(b, "session.ready")
        assert ready["bd"]["recovered"] is True and b.role == "B"
        sent = await a.send("hello", mood="cheerful")
        assert sent["hd"]["role"] == "A" and sent["bd"] == {"text": "hello", "mood": "cheerful"}
        assert sent["hd"]["cid"].startswith("c-")
        received = await next_frame(b, "chat.message")
        assert received == sent
        assert b.last_id == sent["hd"]["id"] and b.epoch is None  # the room had no stream when B joined
        assert stream_texts(rdb, room) == [(sent["hd"]["id"], "hello")]
        assert {m["role"] for m in b.members} == {"A", "B"}
    async with connect(base(server), room, last_id="0") as c:
        assert [f["hd"]["event"] for f in [await anext(c), await anext(c)]] == ["session.ready", "chat.message"]
        kept = rdb.get(epoch_key(room))  # "<epoch> <newest id>"
        assert isinstance(kept, str) and c.epoch == kept.split()[0]
        assert c.last_id == sent["hd"]["id"] and c.role == "user"


async def test_several_senders_and_one_reader_share_a_room_object(server: ServerProcess, room: str,
                                                                  rdb: redis.Redis) -> None:
    async with connect(base(server), room, role="A") as a:
        sent = await asyncio.gather(*(a.send(f"m{n}") for n in range(20)))
        assert len({s["hd"]["id"] for s in sent}) == 20
        frames = []
        async with asyncio.timeout(WAIT_S):
            async for frame in a:
                frames.append(frame)
                if len(stored_frames(frames)) == 20:
                    break
        assert frames[0]["hd"]["event"] == "session.ready"
        assert stored_frames(frames) == stream_texts(rdb, room)
        assert sorted(stored_frames(frames)) == sorted((s["hd"]["id"], s["bd"]["text"]) for s in sent)


async def test_a_refused_message_raises_relay_error_with_its_code(server: ServerProcess, room: str) -> None:
    async with connect(base(server), room, role="A") as a:
        with pytest.raises(RelayError) as refused:
            await a.send("   ")
        assert refused.value.code == "empty_text" and refused.value.message
        assert refused.value.frame is not None and refused.value.frame["hd"]["event"] == "error"
        assert (await a.send("still here"))["bd"]["text"] == "still here"


async def test_a_refused_handshake_raises_relay_error(server: ServerProcess, room: str) -> None:
    with pytest.raises(RelayError) as refused:
        async with connect(base(server), room, role="llm"):
            pass
    assert refused.value.code == "reserved_role"


async def test_ask_returns_the_stored_answer_and_ask_stream_yields_it_growing(server: ServerProcess, room: str,
                                                                              rdb: redis.Redis) -> None:
    async with connect(base(server), room, role="A") as a:
        await a.send("Redis Streams are append-only logs")
        answer = await a.ask("what are streams?")
        assert answer["hd"]["event"] == "llm.response" and answer["bd"]["finish_reason"] == "stop"
        assert answer["hd"]["id"] == xrange(rdb, stream_key(room))[-1][0]
        texts = [text async for text in a.ask_stream("and consumer groups?")]
        assert len(texts) > 1 and all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
        final = xrange(rdb, stream_key(room))[-1][1]
        assert texts[-1] == orjson.loads(final["body"])["bd"]["text"]


async def test_cancel_ends_a_generation_and_a_question_meanwhile_waits_its_turn(server: ServerProcess,
                                                                              room: str) -> None:
    async with connect(base(server), room, role="A") as a, connect(base(server), room, role="B") as b:
        asking = asyncio.create_task(a.ask("#long tell me everything"))
        streaming = await next_frame(b, "llm.streaming")
        waiting = asyncio.create_task(b.ask("me too"))
        queued = await next_frame(b, "llm.queued")  # LLM_TURNS=queue, the default
        assert queued["hd"]["position"] == 1
        ended = await b.cancel(streaming["hd"]["rid"])
        assert ended["hd"]["event"] == "llm.response" and ended["bd"]["finish_reason"] == "cancelled"
        assert (await asking) == ended
        answer = await waiting  # answered next
        assert answer["hd"]["rid"] == queued["hd"]["rid"] and answer["bd"]["finish_reason"] == "stop"
        with pytest.raises(RelayError) as unknown:
            await b.cancel(streaming["hd"]["rid"])
        assert unknown.value.code == "unknown_generation"


async def test_a_server_killed_and_started_again_loses_and_repeats_nothing(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url)
    total, kill_after = 30, 10
    async with connect(base(node), room, role="A") as sender, connect(base(node), room, role="B") as reader:
        read: list[dict[str, Any]] = []
        killed = asyncio.Event()

        async def read_all() -> None:
            async for frame in reader:
                read.append(frame)
                if len(stored_frames(read)) == kill_after and not killed.is_set():
                    killed.set()
                    node.kill()  # SIGKILL: no close frame, no goodbye
                    await asyncio.to_thread(node.start)  # the same port
                if len(stored_frames(read)) == total:
                    return

        reading = asyncio.create_task(read_all())
        sent = []
        async with asyncio.timeout(60):
            for n in range(total):
                sent.append(await sender.send(f"m{n}"))
            await reading
        assert killed.is_set()
        stream = stream_texts(rdb, room)
        assert [text for _, text in stream] == [f"m{n}" for n in range(total)]  # each once, in order
        assert [(s["hd"]["id"], s["bd"]["text"]) for s in sent] == stream
        assert stored_frames(read) == stream
        readies = [f for f in read if f["hd"]["event"] == "session.ready"]
        assert len(readies) >= 2 and all(f["bd"]["recovered"] for f in readies)
        assert sender.last_id == reader.last_id == stream[-1][0]


async def test_a_message_refused_for_the_rate_is_sent_again_after_a_pause(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url, RATE_LIMIT_PER_SEC="20", RATE_LIMIT_BURST="3")
    async with connect(base(node), room, role="A") as a:
        sent = await asyncio.wait_for(asyncio.gather(*(a.send(f"m{n}") for n in range(5))), WAIT_S)
        newest, refusals = max((s["hd"]["id"] for s in sent), key=id_key), []
        async with asyncio.timeout(WAIT_S):
            async for frame in a:
                refusals += [frame] if frame["hd"]["event"] == "error" else []
                if frame["hd"].get("id") == newest:
                    break
    assert sorted(text for _, text in stream_texts(rdb, room)) == [f"m{n}" for n in range(5)]  # each once
    assert refusals == []  # they were the senders', answered by sending again
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{node.http}/metrics")).text
    refused = re.search(r'^chat_errors_total\{code="rate_limited"\} ([0-9.]+)$', metrics, re.MULTILINE)
    assert refused is not None and float(refused.group(1)) >= 2, metrics  # sent 5 at once, with a burst of 3


async def test_a_close_that_says_do_not_reconnect_ends_the_room(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str) -> None:
    node = start_server(REDIS_URL=redis_url, RATE_LIMIT_PER_SEC="0.1", RATE_LIMIT_BURST="2")
    async with connect(base(node), room, role="A") as a:
        outcomes = await asyncio.wait_for(asyncio.gather(*(a.send(f"m{n}") for n in range(8)),
                                                         return_exceptions=True), WAIT_S)
        ended = [o for o in outcomes if isinstance(o, RelayError)]
        assert ended and all(o.code == "closed" and o.close_code == 1008 for o in ended)
        with pytest.raises(RelayError) as reading:
            async with asyncio.timeout(WAIT_S):
                async for _ in a:
                    pass
        assert reading.value.close_code == 1008
        with pytest.raises(RelayError):
            await a.send("after the end")


async def test_a_message_sent_while_the_server_is_away_is_stored_once_it_is_back(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url)
    async with connect(base(node), room, role="A") as a:
        await a.send("before")
        node.kill()
        sending = asyncio.create_task(a.send("while away"))  # sent into the void, or queued: either way again
        await asyncio.to_thread(node.start)
        sent = await asyncio.wait_for(sending, WAIT_S)
        assert sent["bd"]["text"] == "while away"
    assert [text for _, text in stream_texts(rdb, room)] == ["before", "while away"]


async def test_a_resume_that_cannot_be_honoured_is_shown_to_the_reader(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    node = start_server(REDIS_URL=redis_url)
    async with connect(base(node), room, role="A") as a, connect(base(node), room, role="B") as b:
        first = await a.send("in the first epoch")
        assert (await next_frame(b, "chat.message")) == first
        node.kill()
        rdb.delete(stream_key(room), epoch_key(room))  # the stream is lost while B is away
        await asyncio.to_thread(node.start)
        resumed = await next_frame(b, "session.ready")
        assert resumed["bd"]["recovered"] is False and resumed["bd"]["last_id"] is None
        again = await a.send("in the next epoch")
        assert (await next_frame(b, "chat.message")) == again
        assert b.last_id == again["hd"]["id"]
    assert [text for _, text in stream_texts(rdb, room)] == ["in the next epoch"]


async def test_a_token_function_gives_each_connection_a_token_and_outlives_an_expiry(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, rdb: redis.Redis) -> None:
    admin = "client-admin-key-0123456789"
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET="a-secret-of-the-client-tests-0123456789ab", ADMIN_KEY=admin)
    issued = []

    async def token() -> str:  # what a backend would hand out: a token of 2 seconds
        async with httpx.AsyncClient() as http:
            created = await http.post(f"{node.http}/v1/session", json={"sid": room, "ttl_s": 2},
                                      headers={"Authorization": f"Bearer {admin}"})
        issued.append(str(created.json()["tokens"]["A"]))
        return issued[-1]

    async with connect(base(node), room, token=token) as a:
        first = await a.send("with the first token")
        readies = [await next_frame(a, "session.ready"), await next_frame(a, "session.ready")]  # closed (4001)
        assert [r["hd"]["role"] for r in readies] == ["A", "A"] and readies[1]["bd"]["recovered"] is True
        second = await a.send("with the next one")
    assert len(issued) >= 2 and len(set(issued)) == len(issued)
    assert stream_texts(rdb, room) == [(first["hd"]["id"], "with the first token"),
                                       (second["hd"]["id"], "with the next one")]
