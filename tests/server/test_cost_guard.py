"""The cost guard and ``llm.regenerate`` on real server processes and a real Redis.

- the room's hourly budget, counted across nodes: the question over it is stored, its asker gets
  ``quota_exceeded`` with an honest ``retry_after_s``, and the usage route tells the room's numbers;
- the room's and the deployment's daily token budgets;
- regenerate: a new rid, the same reply_to, ``regenerates`` in every frame on every node, both answers
  stored; an unknown or running rid is ``unknown_generation``;
- the usage route asks for the room's token (or the admin key) when auth is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis

from server.store.keys import stream_key
from tests.conftest import RUN
from tests.server.test_llm import until_end
from tests.server.test_metrics import scrape
from tests.support.client import Client
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess
from tests.support.streams import xrange

SECRET = "s3cret-for-the-cost-guard-0123456789ab"
ADMIN = "admin-key-for-the-cost-guard-012345"


@pytest.fixture(scope="module")
def two_an_hour(start_server: Callable[..., ServerProcess], redis_url: str) -> tuple[ServerProcess, ServerProcess]:
    """Two nodes of one deployment that answer two questions per room and hour."""
    env = {"REDIS_URL": redis_url, "LLM_ROOM_GENERATIONS_PER_HOUR": "2", "LLM_QUEUE": f"t{RUN}-two-an-hour"}
    return start_server(**env), start_server(**env)


async def usage(node: ServerProcess, room: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=node.http, timeout=30) as http:
        return await http.get(f"/api/chat/{room}/usage", headers=headers)


async def ask(client: Client, text: str, cid: str) -> list[dict[str, Any]]:
    """Mention the bot; the frames up to its answer's end."""
    await client.chat(f"@llm {text}", cid=cid)
    return await until_end(client)


def stored_events(rdb: redis.Redis, room: str) -> list[tuple[str, str]]:
    return [(fields["participant"], orjson.loads(fields["body"])["hd"]["event"])
            for _, fields in xrange(rdb, stream_key(room), "-", "+")]


async def test_a_question_over_the_rooms_hourly_budget_is_stored_and_refused_with_retry_after(
        two_an_hour: tuple[ServerProcess, ServerProcess], room: str, rdb: redis.Redis) -> None:
    one, two = two_an_hour
    async with await Client.open(one.ws(room, role="A")) as a, await Client.open(two.ws(room, role="B")) as b:
        first = (await ask(a, "one", "q1"))[-1]
        await until_end(b)
        second = (await ask(b, "two", "q2"))[-1]  # on the other node: one budget for the room
        await until_end(a)
        assert first["hd"]["event"] == second["hd"]["event"] == "llm.response"
        asked_at = time.monotonic()
        await b.chat("@llm three", cid="q3")
        question = await b.recv()
        refusal = await b.recv()
        assert (await a.recv())["hd"]["id"] == question["hd"]["id"]  # the question reached the room
    assert question["hd"]["event"] == "chat.message" and question["hd"]["cid"] == "q3"
    assert refusal["hd"] == {"event": "error"}
    assert (refusal["bd"]["code"], refusal["bd"]["cid"]) == ("quota_exceeded", "q3")
    assert "LLM_ROOM_GENERATIONS_PER_HOUR" in refusal["bd"]["message"]
    # the first question was counted a moment before its answer: it leaves the hour within the hour
    assert 3600 - (time.monotonic() - asked_at) - 60 <= refusal["bd"]["retry_after_s"] <= 3600
    assert stored_events(rdb, room) == [("A", "chat.message"), ("llm", "llm.response"), ("B", "chat.message"),
                                        ("llm", "llm.response"), ("B", "chat.message")]  # stored, not answered
    answered = await usage(two, room)
    assert answered.status_code == 200
    tokens = first["bd"]["usage"]["total_tokens"] + second["bd"]["usage"]["total_tokens"]
    assert answered.json() == {"sid": room, "generations_last_hour": 2, "tokens_today": tokens,
                               "limits": {"generations_per_hour": 2, "tokens_per_day": None}}


async def test_an_invoke_over_the_budget_is_stored_and_refused(two_an_hour: tuple[ServerProcess, ServerProcess],
                                                              room: str, rdb: redis.Redis) -> None:
    one, _ = two_an_hour
    async with await Client.open(one.ws(room, role="A")) as a:
        for n in range(2):
            await a.send({"event": "llm.invoke", "cid": f"i{n}"}, {"prompt": "hi"})
            await until_end(a)
        await a.send({"event": "llm.invoke", "cid": "i2"}, {"prompt": "hi"})
        invoke, refusal = await a.recv(), await a.recv()
    assert (invoke["hd"]["event"], invoke["hd"]["cid"]) == ("llm.invoke", "i2")
    assert (refusal["bd"]["code"], refusal["bd"]["cid"]) == ("quota_exceeded", "i2")
    assert stored_events(rdb, room)[-1] == ("A", "llm.invoke")


async def test_the_usage_of_a_room_that_never_asked_is_zero(two_an_hour: tuple[ServerProcess, ServerProcess],
                                                           room: str) -> None:
    assert (await usage(two_an_hour[0], room)).json() == {
        "sid": room, "generations_last_hour": 0, "tokens_today": 0,
        "limits": {"generations_per_hour": 2, "tokens_per_day": None}}
    assert (await usage(two_an_hour[0], "not a room")).json()["error"]["code"] == "invalid_room"


def seconds_to_utc_midnight() -> float:
    return 86400 - time.time() % 86400


async def test_a_room_over_its_daily_tokens_is_refused_until_utc_midnight(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_ROOM_TOKENS_PER_DAY="10")
    async with await Client.open(node.ws(room, role="A")) as a:
        answer = (await ask(a, "hi", "q1"))[-1]
        assert answer["hd"]["event"] == "llm.response" and answer["bd"]["usage"]["total_tokens"] > 10
        await a.chat("@llm again", cid="q2")
        await a.recv()
        refusal = await a.recv()
    assert (refusal["bd"]["code"], refusal["bd"]["cid"]) == ("quota_exceeded", "q2")
    assert "LLM_ROOM_TOKENS_PER_DAY" in refusal["bd"]["message"]
    assert abs(refusal["bd"]["retry_after_s"] - seconds_to_utc_midnight()) <= 5
    counted = (await usage(node, room)).json()
    assert counted["tokens_today"] == answer["bd"]["usage"]["total_tokens"]
    assert counted["limits"] == {"generations_per_hour": 60, "tokens_per_day": 10}
    samples = await scrape(node)
    assert samples["chat_llm_tokens_out_total{model=scripted-1}"] == answer["bd"]["usage"]["completion_tokens"]
    assert samples["chat_llm_tokens_in_total{model=scripted-1}"] == answer["bd"]["usage"]["prompt_tokens"]


async def test_the_deployments_daily_tokens_refuse_every_room(start_server: Callable[..., ServerProcess],
                                                             private_redis: RedisServer, room: str) -> None:
    node = start_server(REDIS_URL=private_redis.url, LLM_TOKENS_PER_DAY="10")  # its own Redis: its own day
    async with await Client.open(node.ws(room, role="A")) as a:
        assert (await ask(a, "hi", "q1"))[-1]["hd"]["event"] == "llm.response"
    async with await Client.open(node.ws(room + "-other", role="B")) as b:
        await b.chat("@llm me too", cid="q2")
        await b.recv()
        refusal = await b.recv()
    assert (refusal["bd"]["code"], refusal["bd"]["cid"]) == ("quota_exceeded", "q2")
    assert "LLM_TOKENS_PER_DAY" in refusal["bd"]["message"]
    assert abs(refusal["bd"]["retry_after_s"] - seconds_to_utc_midnight()) <= 5


# -- regenerate --------------------------------------------------------------------------------------

async def test_regenerate_answers_the_same_question_again_and_both_answers_stay(
        server: ServerProcess, server2: ServerProcess, room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room, role="A")) as a, await Client.open(server2.ws(room, role="B")) as b:
        first = (await ask(a, "what is a stream?", "q1"))[-1]
        await until_end(b)
        await b.send({"event": "llm.regenerate", "cid": "r1"}, {"rid": first["hd"]["rid"]})
        again_b, again_a = await until_end(b), await until_end(a)
    question_id, old_rid = first["hd"]["reply_to"], first["hd"]["rid"]
    for frames in (again_a, again_b):  # every frame of the new answer, on both nodes
        assert [f["hd"]["event"] for f in frames][-1] == "llm.response"
        assert {f["hd"]["regenerates"] for f in frames} == {old_rid}
        assert {f["hd"]["reply_to"] for f in frames} == {question_id}
        assert len({f["hd"]["rid"] for f in frames}) == 1 and frames[0]["hd"]["rid"] != old_rid
        assert [f["hd"]["seq"] for f in frames[:-1]] == list(range(len(frames) - 1))
        assert frames[-1]["bd"]["text"] == "".join(f["bd"]["delta"] for f in frames[:-1])
    answers = [entry for entry in xrange(rdb, stream_key(room), "-", "+") if entry[1]["participant"] == "llm"]
    assert [entry_id for entry_id, _ in answers] == [first["hd"]["id"], again_a[-1]["hd"]["id"]]


async def test_regenerate_of_an_unknown_or_running_rid_is_unknown_generation(server: ServerProcess, room: str) -> None:
    async with await Client.open(server.ws(room, role="A")) as a:
        await a.send({"event": "llm.regenerate", "cid": "r1"}, {"rid": "g-0000000000000000"})
        unknown = await a.recv()
        await a.chat("@llm #long please", cid="q1")
        await a.recv()  # the question
        running = await a.recv()
        assert running["hd"]["event"] == "llm.streaming"
        await a.send({"event": "llm.regenerate", "cid": "r2"}, {"rid": running["hd"]["rid"]})
        while (frame := await a.recv())["hd"]["event"] == "llm.streaming":
            pass
        await a.send({"event": "llm.cancel"}, {"rid": running["hd"]["rid"]})
        await until_end(a)
    for refusal, cid in ((unknown, "r1"), (frame, "r2")):
        assert (refusal["hd"]["event"], refusal["bd"]["code"], refusal["bd"]["cid"]) == ("error", "unknown_generation",
                                                                                         cid)


# -- who may read the usage ----------------------------------------------------------------------------

async def test_with_auth_on_the_usage_needs_a_token_of_the_room_or_the_admin_key(
        start_server: Callable[..., ServerProcess], redis_url: str) -> None:
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN)
    async with httpx.AsyncClient(base_url=node.http) as http:
        made = (await http.post("/v1/session", headers={"Authorization": f"Bearer {ADMIN}"})).json()
        other = (await http.post("/v1/session", headers={"Authorization": f"Bearer {ADMIN}"})).json()
    room = made["sid"]
    assert (await usage(node, room)).json()["error"]["code"] == "unauthorized"
    assert (await usage(node, room, other["tokens"]["A"])).status_code == 403
    assert (await usage(node, room, made["tokens"]["B"])).json()["generations_last_hour"] == 0
    assert (await usage(node, room, ADMIN)).status_code == 200
