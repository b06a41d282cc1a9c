"""Auth's rules, with no socket and no Redis: what a token grants and until when, the room instance it
names, the close when it expires, and who may read ``/metrics``."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from protocol.close import TOKEN_EXPIRED
from protocol.errors import ProtocolError
from server.auth import ADMIN, AUDIENCE, Auth, Grant, RoomAccess
from server.member import Member
from server.metrics import MetricsAccess
from server.store.ports import StoreUnavailable
from server.ws import bound_role, close_at_expiry
from tests.unit.fakes import FakeStore

SECRET = "s3cret-for-the-tests-0123456789abcdef"
ADMIN_KEY = "admin-key-for-the-tests-0123"
NOW = 1_700_000_000.0


def refusal(call: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        call(*args)
    return info.value.code, info.value.message


async def async_refusal(call: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(ProtocolError) as info:
        await call(*args)
    return info.value.code, info.value.message


def test_a_grant_carries_the_tokens_room_role_expiry_and_instance() -> None:
    auth = Auth(SECRET, ADMIN_KEY)
    token = auth.issue("r1", "A", 600, "i-1", now=NOW)
    assert auth.grant(token, now=NOW) == Grant("r1", "A", NOW + 600, "i-1")
    assert auth.grant(ADMIN_KEY) is ADMIN and ADMIN.exp is None and ADMIN.instance is None  # never expires


def test_a_token_is_expired_from_its_exp_on() -> None:
    auth = Auth(SECRET, ADMIN_KEY)
    token = auth.issue("r1", "A", 2, "i-1", now=NOW)
    assert auth.grant(token, now=NOW + 1.999).exp == NOW + 2
    assert refusal(auth.grant, token, NOW + 2) == ("unauthorized", "The token has expired.")


def test_a_token_that_names_no_room_instance_is_refused() -> None:
    auth = Auth(SECRET, ADMIN_KEY)
    old = jwt.encode({"sid": "r1", "role": "A", "exp": int(NOW) + 600, "aud": AUDIENCE}, SECRET, algorithm="HS256")
    code, message = refusal(auth.grant, old, NOW)
    assert code == "unauthorized" and "instance" in message


def test_a_token_for_another_room_is_forbidden() -> None:
    auth = Auth(SECRET, ADMIN_KEY)
    assert refusal(auth.for_room, auth.issue("r1", "A", 60, "i-1"), "r2")[0] == "forbidden"


def test_a_token_binds_the_role_the_admin_key_takes_the_one_asked_for() -> None:
    assert bound_role(Grant("r", "A", NOW, "i"), None) == "A"
    assert refusal(bound_role, Grant("r", "A", NOW, "i"), "B")[0] == "role_mismatch"
    assert bound_role(ADMIN, "B") == "B" and bound_role(ADMIN, None) is None


async def test_a_room_keeps_its_instance_while_it_exists_and_gets_a_new_one_when_created_again() -> None:
    store = FakeStore()
    first = await store.instances.open("r1", 60)
    assert await store.instances.open("r1", 60) == first  # new tokens for the same room: the same instance
    assert await store.instances.delete("r1") and not await store.instances.delete("r1")
    assert await store.instances.current("r1") is None
    assert await store.instances.open("r1", 60) != first


async def test_an_instance_lives_as_long_as_its_longest_token() -> None:
    store = FakeStore()
    instance = await store.instances.open("r1", 600)
    await store.instances.open("r1", 10)  # a shorter ttl never shortens it
    store.clock.advance(599)
    assert await store.instances.current("r1") == instance
    store.clock.advance(1)
    assert await store.instances.current("r1") is None


async def test_a_token_is_good_only_for_the_rooms_current_instance() -> None:
    store, auth = FakeStore(), Auth(SECRET, ADMIN_KEY)
    access = RoomAccess(auth, store.instances)
    old = auth.issue("r1", "A", 600, await store.instances.open("r1", 600))
    assert (await access.for_room(old, "r1")).role == "A"

    await store.instances.delete("r1")  # DELETE /api/chat/history/r1
    code, message = await async_refusal(access.for_room, old, "r1")
    assert code == "unauthorized" and "deleted" in message
    new = auth.issue("r1", "B", 600, await store.instances.open("r1", 600))  # created again
    assert (await access.for_room(new, "r1")).role == "B"
    assert (await async_refusal(access.for_room, old, "r1"))[0] == "unauthorized"


async def test_the_admin_key_is_tied_to_no_instance() -> None:
    store = FakeStore()
    access = RoomAccess(Auth(SECRET, ADMIN_KEY), store.instances)
    assert await access.for_room(ADMIN_KEY, "never-created") is ADMIN


async def test_an_unreachable_store_is_not_a_refusal_of_the_token() -> None:
    store, auth = FakeStore(), Auth(SECRET, ADMIN_KEY)
    token = auth.issue("r1", "A", 600, await store.instances.open("r1", 600))
    store.instances.failing = StoreUnavailable("connection refused")
    with pytest.raises(StoreUnavailable):  # answered 503 unavailable, not 401
        await RoomAccess(auth, store.instances).for_room(token, "r1")


class Sent:
    """An ASGI ``send`` that records the close messages."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            self.closes.append((message["code"], message["reason"]))


async def test_a_connection_is_closed_with_4001_when_its_token_expires() -> None:
    sent = Sent()
    member = Member(sent, "r1", "A", 8, outlet_for=lambda _send: None)
    member.start()
    close_at_expiry(member, exp=NOW, now=lambda: NOW)  # expires now: the next loop pass closes it
    await member.wait_closed()
    assert sent.closes == [(TOKEN_EXPIRED.code, TOKEN_EXPIRED.reason)] == [(4001, "token expired")]


async def test_the_expiry_timer_is_one_call_at_the_tokens_exp_and_is_cancelled_with_the_session() -> None:
    sent = Sent()
    member = Member(sent, "r1", "A", 8, outlet_for=lambda _send: None)
    member.start()
    loop = asyncio.get_running_loop()
    before = loop.time()
    timer = close_at_expiry(member, exp=NOW + 30, now=lambda: NOW)
    assert before + 30 <= timer.when() <= loop.time() + 30
    timer.cancel()  # the session ended first
    member.close(1000)
    await member.wait_closed()
    assert sent.closes == [(1000, "")]


def test_metrics_need_the_metrics_token_when_one_is_set() -> None:
    access = MetricsAccess("metrics-token-0123456789", closed=True)
    assert not access.open
    assert access.refusal("metrics-token-0123456789") is None
    assert access.refusal(None) == access.refusal("wrong") == "/metrics needs Authorization: Bearer <METRICS_TOKEN>."


def test_metrics_are_closed_with_auth_on_and_no_metrics_token_even_to_the_admin_key() -> None:
    access = MetricsAccess(None, closed=True)
    refused = access.refusal(ADMIN_KEY)
    assert refused is not None and "METRICS_TOKEN" in refused and access.refusal(None) == refused


def test_metrics_are_open_with_auth_off_and_no_metrics_token() -> None:
    access = MetricsAccess(None, closed=False)
    assert access.open and access.refusal(None) is None
    assert not MetricsAccess("metrics-token-0123456789", closed=False).open  # a token set is always asked for
