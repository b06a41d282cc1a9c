"""/metrics: Prometheus text that moves when messages flow, for the scraper's token only when auth is on."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import Client
from tests.support.server_process import ServerProcess

SECRET = "s3cret-for-the-tests-0123456789abcdef"
ADMIN = "admin-key-for-the-tests-0123456789"
METRICS_TOKEN = "metrics-token-for-the-tests-0123"


async def scrape(node: ServerProcess, token: str | None = None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=node.http) as http:
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_metrics_move_when_messages_flow(start_server: Callable[..., ServerProcess], redis_url: str,
                                               room: str) -> None:
    node = start_server(REDIS_URL=redis_url)
    before = await scrape(node)
    async with await Client.open(node.ws(room, role="A")) as a, await Client.open(node.ws(room, role="B")) as b:
        during = await scrape(node)
        for n in range(5):
            await a.chat(f"m{n}")
        await b.recv_n(5)
        await a.recv_n(5)
        await a.send_raw("not json")
        assert (await a.recv())["bd"]["code"] == "invalid_json"
        await a.chat("@llm hello")
        while (await b.recv())["hd"]["event"] != "llm.response":
            pass
        after = await scrape(node)

    def moved(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert during["chat_connections{}"] == 2 and during["chat_rooms{}"] == 1
    assert moved("chat_messages_in_total{event=chat.message}") == 6
    assert moved("chat_messages_out_total{event=chat.message}") == 12  # 6 messages x 2 members
    assert moved("chat_messages_out_total{event=llm.response}") == 2
    assert moved("chat_messages_out_total{event=llm.streaming}") >= 2
    assert moved("chat_messages_out_total{event=presence.join}") == 1  # B's arrival, told to A
    assert moved("chat_errors_total{code=invalid_json}") == 1
    assert moved("chat_llm_generations_total{outcome=stop}") == 1
    assert moved("chat_llm_tokens_streamed_total{}") * 2 == moved("chat_messages_out_total{event=llm.streaming}")
    assert moved("chat_xadd_seconds_count{}") >= 1 and moved("chat_accept_to_delivery_seconds_count{}") >= 1


async def test_with_auth_on_metrics_need_the_metrics_token(start_server: Callable[..., ServerProcess],
                                                           redis_url: str) -> None:
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN, METRICS_TOKEN=METRICS_TOKEN)
    async with httpx.AsyncClient(base_url=node.http) as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Bearer {ADMIN}"}):
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "chat_connections" not in refused.text
    assert "chat_connections{}" in await scrape(node, METRICS_TOKEN)


async def test_with_auth_on_and_no_metrics_token_metrics_are_closed_and_the_server_says_so(
        start_server: Callable[..., ServerProcess], redis_url: str) -> None:
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN)
    async with httpx.AsyncClient(base_url=node.http) as http:
        for headers in ({}, {"Authorization": f"Bearer {ADMIN}"}):  # not even the admin key
            refused = await http.get("/metrics", headers=headers)
            assert refused.status_code == 401 and "METRICS_TOKEN" in refused.json()["error"]["message"]
    assert "METRICS_TOKEN is not: /metrics refuses every request" in node.log()


async def test_with_auth_off_a_metrics_token_is_still_asked_for(start_server: Callable[..., ServerProcess],
                                                                redis_url: str) -> None:
    node = start_server(REDIS_URL=redis_url, METRICS_TOKEN=METRICS_TOKEN)
    async with httpx.AsyncClient(base_url=node.http) as http:
        assert (await http.get("/metrics")).status_code == 401
    assert "chat_rooms{}" in await scrape(node, METRICS_TOKEN)
