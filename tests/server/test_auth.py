"""Auth: the admin key creates rooms and tokens; tokens bind a connection to its room and role, for as
long as they last and as the room's instance does; no credential ever reaches the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from server.auth import AUDIENCE
from tests.support.client import Client
from tests.support.fake_openai import FakeOpenAI
from tests.support.server_process import ServerProcess

SECRET = "s3cret-for-the-tests-0123456789abcdef"
ADMIN = "admin-key-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def secured(start_server: Callable[..., ServerProcess], redis_url: str) -> ServerProcess:
    return start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN)


async def create(node: ServerProcess, body: dict[str, Any] | None = None, key: str | None = ADMIN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=node.http) as http:
        return await http.post("/v1/session", json=body, headers=headers)


async def refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        await Client.open(url, headers)
    response = info.value.response
    return response.status_code, orjson.loads(response.body)["error"]["code"]


async def test_the_token_flow_end_to_end(secured: ServerProcess, room: str) -> None:
    assert (await create(secured, {"sid": room}, key=None)).status_code == 401
    assert (await create(secured, {"sid": room}, key="wrong")).json()["error"]["code"] == "unauthorized"
    made = await create(secured, {"sid": room, "ttl_s": 600})
    assert made.status_code == 201
    body = made.json()
    assert body["sid"] == room and set(body["tokens"]) == {"A", "B"} and body["expires_at"].endswith("Z")
    token_a, token_b = body["tokens"]["A"], body["tokens"]["B"]
    assert jwt.decode(token_a, SECRET, algorithms=["HS256"], audience=AUDIENCE)["role"] == "A"

    assert await refused(secured.ws(room)) == (401, "unauthorized")
    assert await refused(secured.ws(room, token="not-a-jwt")) == (401, "unauthorized")
    assert await refused(secured.ws(room, token=token_a, role="B")) == (403, "role_mismatch")
    other = (await create(secured)).json()
    assert await refused(secured.ws(other["sid"], token=token_a)) == (403, "forbidden")
    expired = jwt.encode({"sid": room, "role": "A", "exp": 1, "aud": AUDIENCE}, SECRET, algorithm="HS256")
    assert await refused(secured.ws(room, token=expired)) == (401, "unauthorized")
    forged = jwt.encode({"sid": room, "role": "A", "exp": 2**40, "aud": AUDIENCE},
                        "another-secret-0123456789abcdefghijkl", algorithm="HS256")
    assert await refused(secured.ws(room, token=forged)) == (401, "unauthorized")

    async with await Client.open(secured.ws(room, token=token_a)) as a, \
            await Client.open(secured.ws(room), {"Authorization": f"Bearer {token_b}"}) as b:
        assert a.ready["hd"]["role"] == "A" and b.ready["hd"]["role"] == "B"
        await a.chat("hello")  # bound by the token: no role needed
        assert (await b.recv())["hd"]["role"] == "A"
        await a.chat("I am B", role="B")  # impersonation
        assert (await a.recv())["hd"]["role"] == "A"
        refusal = await a.recv()
        assert refusal["bd"]["code"] == "role_mismatch"

    async with httpx.AsyncClient(base_url=secured.http) as http:
        history = f"/api/chat/history/{room}"
        assert (await http.get(history)).status_code == 401
        assert (await http.get(history, headers={"Authorization": f"Bearer {token_b}"})).status_code == 200
        other_token = other["tokens"]["A"]
        assert (await http.get(history, headers={"Authorization": f"Bearer {other_token}"})).status_code == 403
        assert (await http.get(f"{history}/export", headers={"Authorization": f"Bearer {token_a}"})).status_code == 200
        assert (await http.delete(history, headers={"Authorization": f"Bearer {token_a}"})).status_code == 403
        posted = await http.post(f"/api/chat/{room}/messages", headers={"Authorization": f"Bearer {token_b}"},
                                 json={"hd": {"event": "chat.message"}, "bd": {"text": "via HTTP"}})
        assert posted.status_code == 201 and posted.json()["hd"]["role"] == "B"
        assert (await http.delete(history, headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 204


async def test_room_creation_with_auth_off(server: ServerProcess) -> None:
    made = await create(server, key=None)
    assert made.status_code == 201
    assert made.json()["tokens"] == {} and made.json()["sid"]
    assert (await create(server, {"sid": "bad room"})).json()["error"]["code"] == "invalid_room"
    assert (await create(server, {"ttl_s": 0})).json()["error"]["code"] == "invalid_ttl"


def test_auth_secret_without_admin_key_stops_startup() -> None:
    from server.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="ADMIN_KEY"):
        Settings.from_env({"AUTH_SECRET": SECRET})


async def closed_by_the_server(client: Client, timeout_s: float) -> tuple[int | None, str | None]:
    """The close code and reason, once the server has closed ``client`` (within ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        await client.ws.wait_closed()
    return client.ws.close_code, client.ws.close_reason


async def test_a_connection_is_closed_with_4001_when_its_token_expires_and_resumes_with_a_new_one(
        secured: ServerProcess, room: str) -> None:
    made = (await create(secured, {"sid": room, "ttl_s": 2})).json()
    exp = jwt.decode(made["tokens"]["A"], options={"verify_signature": False})["exp"]
    async with await Client.open(secured.ws(room, token=made["tokens"]["A"])) as a, \
            await Client.open(secured.ws(room, role="B"), {"Authorization": f"Bearer {ADMIN}"}) as admin:
        await a.chat("before the expiry")
        last_id = (await a.recv())["hd"]["id"]
        assert (await admin.recv())["hd"]["id"] == last_id
        assert await closed_by_the_server(a, timeout_s=10) == (4001, "token expired")
        assert time.time() >= exp  # at its exp, not before

        await admin.chat("the admin key never expires")  # the other connection stays open
        assert (await admin.recv())["bd"]["text"] == "the admin key never expires"
        assert await refused(secured.ws(room, token=made["tokens"]["A"])) == (401, "unauthorized")
        fresh = (await create(secured, {"sid": room, "ttl_s": 600})).json()["tokens"]["A"]  # the same room
        async with await Client.open(secured.ws(room, token=fresh, last_id=last_id)) as again:
            assert [f["bd"]["text"] for f in again.replayed] == ["the admin key never expires"]
            assert again.ready["bd"]["recovered"] is True


async def test_a_room_deleted_and_created_again_refuses_its_old_tokens(secured: ServerProcess, room: str) -> None:
    first = (await create(secured, {"sid": room})).json()["tokens"]
    second = (await create(secured, {"sid": room})).json()["tokens"]  # asked again: new tokens, same instance
    async with await Client.open(secured.ws(room, token=first["A"])), \
            await Client.open(secured.ws(room, token=second["B"])):
        pass
    async with httpx.AsyncClient(base_url=secured.http) as http:
        history = f"/api/chat/history/{room}"
        assert (await http.delete(history, headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 204  # no
        assert (await http.delete(history, headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 404  # stream
        for old in (*first.values(), *second.values()):
            assert await refused(secured.ws(room, token=old)) == (401, "unauthorized")

        again = (await create(secured, {"sid": room})).json()["tokens"]  # created again: a new instance
        for old in (first["A"], second["B"]):
            assert await refused(secured.ws(room, token=old)) == (401, "unauthorized")
            answer = await http.get(history, headers={"Authorization": f"Bearer {old}"})
            assert answer.status_code == 401 and "deleted" in answer.json()["error"]["message"]
            posted = await http.post(f"/api/chat/{room}/messages", headers={"Authorization": f"Bearer {old}"},
                                     json={"hd": {"event": "chat.message"}, "bd": {"text": "from the old room"}})
            assert posted.status_code == 401
        async with await Client.open(secured.ws(room, token=again["A"])) as a:
            assert a.ready["hd"]["role"] == "A"
        assert (await http.get(history, headers={"Authorization": f"Bearer {again['B']}"})).status_code == 404
        # The admin key is tied to no instance: it reaches a room nobody created.
        async with await Client.open(secured.ws(room + "-never-created"), {"Authorization": f"Bearer {ADMIN}"}):
            pass


async def test_no_token_admin_key_or_api_key_reaches_the_log_at_any_level(
        start_server: Callable[..., ServerProcess], redis_url: str, fake_openai: FakeOpenAI, room: str) -> None:
    metrics_token, api_key = "metrics-token-for-the-tests-0123", "sk-test-openai-key-0123456789abcdef"
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN, METRICS_TOKEN=metrics_token,
                        LLM_PROVIDER="openai", OPENAI_API_KEY=api_key, OPENAI_BASE_URL=fake_openai.base_url,
                        LLM_MAX_RETRIES="0", LOG_LEVEL="debug")
    tokens = (await create(node, {"sid": room})).json()["tokens"]
    other = (await create(node)).json()["tokens"]
    # uvicorn writes a line for every handshake, with the query string: accepted, and refused ones.
    async with await Client.open(node.ws(room, token=tokens["A"])) as a, \
            await Client.open(node.ws(room), {"Authorization": f"Bearer {tokens['B']}"}):
        for question in ("@llm hello", "@llm #500 and a failure"):  # the API key in use; an error logged
            await a.chat(question)
            while (await a.recv())["hd"]["event"] not in ("llm.response", "llm.error"):
                pass
    assert await refused(node.ws(room, token=other["A"])) == (403, "forbidden")
    assert await refused(node.ws(room, token=tokens["A"] + "x")) == (401, "unauthorized")
    assert await refused(node.ws(room, token=ADMIN, role="llm")) == (400, "reserved_role")
    async with httpx.AsyncClient(base_url=node.http) as http:
        assert (await http.get(f"/api/chat/history/{room}?token={tokens['A']}",
                               headers={"Authorization": f"Bearer {tokens['A']}"})).status_code == 200
        assert (await http.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})).status_code == 200
        assert (await http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})).status_code == 401
    node.stop()  # everything written and flushed

    text = node.log_path.read_text(errors="replace")
    assert "token=[redacted]" in text and " 403" in text  # uvicorn's lines are there, redacted
    for secret in (SECRET, ADMIN, metrics_token, api_key, *tokens.values(), *other.values()):
        assert secret not in text
        assert secret.rpartition(".")[2] not in text  # not even a token's signature
