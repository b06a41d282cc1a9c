"""Auth: the admin key creates rooms and tokens; tokens bind a connection to its room and role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from server.auth import AUDIENCE
from tests.support.client import Client
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
