"""The HTTP API end to end: history pages, exports, deletion and publishing, on a real server and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
import redis

from server.store.keys import stream_key
from tests.support.client import Client
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess

MAX_ID = f"{2**64 - 1}-{2**64 - 1}"


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as client:
        yield client


async def post(http: httpx.AsyncClient, room: str, text: str, **hd: str) -> dict[str, Any]:
    response = await http.post(f"/api/chat/{room}/messages", json={"hd": {"event": "chat.message", **hd},
                                                                   "bd": {"text": text}})
    assert response.status_code == 201, response.text
    envelope: dict[str, Any] = response.json()
    return envelope


async def fill(server: ServerProcess, room: str, roles: Sequence[str | None]) -> list[str]:
    """One message per role over a WebSocket (None: no role), all delivered; their ids in order."""
    async with await Client.open(server.ws(room)) as client:
        received = asyncio.create_task(client.recv_n(len(roles)))  # read while sending: no slow consumer
        for n, role in enumerate(roles):
            await client.chat(f"m{n}", **({} if role is None else {"role": role}))
        frames = await received
    return [frame["hd"]["id"] for frame in frames]


def stored(rdb: redis.Redis, room: str) -> list[tuple[str, dict[str, str]]]:
    return rdb.xrange(stream_key(room))  # type: ignore[return-value]


def stored_ids(rdb: redis.Redis, room: str) -> list[str]:
    return [entry_id for entry_id, _ in stored(rdb, room)]


async def history(http: httpx.AsyncClient, room: str, **params: str | int) -> dict[str, Any]:
    response = await http.get(f"/api/chat/history/{room}", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def walk(http: httpx.AsyncClient, room: str, direction: str, **params: str | int) -> list[dict[str, Any]]:
    """Every page, following ``next_<direction>`` from the newest page (before) or the start (after)."""
    cursor = {} if direction == "before" else {"after": "0-0"}
    pages = []
    while True:
        pages.append(await history(http, room, **params, **cursor))
        following = pages[-1][f"next_{direction}"]
        if following is None:
            return pages
        cursor = {direction: following}


def ids(page: dict[str, Any]) -> list[str]:
    return [m["id"] for m in page["messages"]]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    return error


async def test_the_default_page_is_the_newest_messages_oldest_first(http: httpx.AsyncClient, room: str,
                                                                    rdb: redis.Redis) -> None:
    roles: list[dict[str, str]] = [{"role": "A"}, {"role": "B"}, {"role": "A"}, {"role": "B"}, {}]
    sent = [await post(http, room, f"hello {n}", **role) for n, role in enumerate(roles)]
    stored = stored_ids(rdb, room)
    page = await history(http, room, limit=3)
    assert ids(page) == stored[-3:]
    assert (page["sid"], page["next_before"], page["next_after"]) == (room, stored[-3], None)
    for message, envelope, participant in zip(page["messages"], sent[-3:], ["A", "B", "user"], strict=True):
        hd = envelope["hd"]
        assert message == {"id": hd["id"], "participant": participant, "event": "chat.message", "ts": hd["ts"],
                           "hd": hd, "bd": envelope["bd"]}
    everything = await history(http, room)
    assert ids(everything) == stored
    assert everything["next_before"] is None and everything["next_after"] is None


async def test_walking_back_with_before_gives_every_message_once(server: ServerProcess, http: httpx.AsyncClient,
                                                                 room: str, rdb: redis.Redis) -> None:
    await fill(server, room, ["A", "B", None] * 7 + ["A", "B"])
    pages = await walk(http, room, "before", limit=5)
    assert [len(page["messages"]) for page in pages] == [5, 5, 5, 5, 3]
    assert [i for page in reversed(pages) for i in ids(page)] == stored_ids(rdb, room)
    assert pages[0]["next_after"] is None  # no cursor: the newest page
    for page in pages[1:]:
        assert page["next_after"] == ids(page)[-1]  # newer entries exist: the ones already seen


async def test_walking_forward_with_after_gives_every_message_once(server: ServerProcess, http: httpx.AsyncClient,
                                                                   room: str, rdb: redis.Redis) -> None:
    await fill(server, room, ["A", "B", None] * 7 + ["A", "B"])
    pages = await walk(http, room, "after", limit=5)
    assert [len(page["messages"]) for page in pages] == [5, 5, 5, 5, 3]
    assert [i for page in pages for i in ids(page)] == stored_ids(rdb, room)
    assert pages[0]["next_before"] is None  # nothing older than the first entry
    for page in pages[1:]:
        assert page["next_before"] == ids(page)[0]


async def test_limit_bounds_are_accepted(server: ServerProcess, http: httpx.AsyncClient, room: str) -> None:
    sent = await fill(server, room, ["A"] * 3)
    assert ids(await history(http, room, limit=1)) == sent[-1:]
    assert ids(await history(http, room, limit=1000)) == sent


@pytest.mark.parametrize("limit", ["0", "1001", "x", "", "-1", "1.5", " 5", "1e3"])
async def test_a_limit_outside_1_to_1000_is_refused(http: httpx.AsyncClient, room: str, limit: str) -> None:
    await post(http, room, "hi")
    assert_error(await http.get(f"/api/chat/history/{room}", params={"limit": limit}), 400, "invalid_limit")


async def test_before_and_after_together_are_refused(http: httpx.AsyncClient, room: str) -> None:
    entry_id = (await post(http, room, "hi"))["hd"]["id"]
    response = await http.get(f"/api/chat/history/{room}", params={"before": entry_id, "after": "0-0"})
    assert_error(response, 400, "invalid_cursor")


@pytest.mark.parametrize("cursor", ["abc", "1-", "-1", "1-2-3", "01-0", "1-01", "18446744073709551616-0", "", "+"])
@pytest.mark.parametrize("name", ["before", "after"])
async def test_a_malformed_cursor_is_refused(http: httpx.AsyncClient, room: str, name: str, cursor: str) -> None:
    await post(http, room, "hi")
    assert_error(await http.get(f"/api/chat/history/{room}", params={name: cursor}), 400, "invalid_cursor")


async def test_cursors_past_either_end_give_an_empty_page(http: httpx.AsyncClient, room: str) -> None:
    first = (await post(http, room, "only one"))["hd"]["id"]
    empty: dict[str, Any] = {"sid": room, "messages": [], "next_before": None, "next_after": None}
    for cursor in ({"before": "0-0"}, {"before": "0"}, {"before": first}, {"after": first}, {"after": MAX_ID}):
        assert await history(http, room, **cursor) == empty, cursor
    assert ids(await history(http, room, after="0")) == [first]


async def test_the_participant_filter_pages_through_one_role_only(server: ServerProcess, http: httpx.AsyncClient,
                                                                  room: str, rdb: redis.Redis) -> None:
    await fill(server, room, ["A", "B", None] * 5)
    entries = stored(rdb, room)
    for participant in ("A", "B", "user"):
        expected = [i for i, fields in entries if fields["participant"] == participant]
        back = await walk(http, room, "before", limit=2, participant=participant)
        assert [i for page in reversed(back) for i in ids(page)] == expected
        forward = await walk(http, room, "after", limit=2, participant=participant)
        assert [i for page in forward for i in ids(page)] == expected
        assert {m["participant"] for page in back + forward for m in page["messages"]} == {participant}
    assert (await history(http, room, participant="llm"))["messages"] == []


async def test_the_participant_filter_reads_past_a_long_run_of_others(server: ServerProcess, http: httpx.AsyncClient,
                                                                      room: str) -> None:
    [b_id, *_] = await fill(server, room, ["B"] + ["A"] * 2500)
    page = await history(http, room, limit=1, participant="B")
    assert (ids(page), page["next_before"], page["next_after"]) == ([b_id], None, None)
    # Forward, the stream goes on after B's message: a cursor is given, and the page it leads to
    # holds no match (telling so would have meant reading to the end).
    forward = await history(http, room, limit=1, participant="B", after="0-0")
    assert (ids(forward), forward["next_before"], forward["next_after"]) == ([b_id], None, b_id)
    rest = await history(http, room, limit=1, participant="B", after=b_id)
    assert (rest["messages"], rest["next_before"], rest["next_after"]) == ([], None, None)


@pytest.mark.parametrize("participant", ["C", "", "a", "LLM"])
async def test_an_unknown_participant_is_refused(http: httpx.AsyncClient, room: str, participant: str) -> None:
    await post(http, room, "hi")
    response = await http.get(f"/api/chat/history/{room}", params={"participant": participant})
    assert_error(response, 400, "invalid_participant")


async def test_a_room_without_a_stream_is_not_found(http: httpx.AsyncClient, room: str) -> None:
    assert_error(await http.get(f"/api/chat/history/{room}"), 404, "room_not_found")
    assert_error(await http.get(f"/api/chat/history/{room}", params={"after": "0-0"}), 404, "room_not_found")
    assert_error(await http.get(f"/api/chat/history/{room}/export"), 404, "room_not_found")
    assert_error(await http.delete(f"/api/chat/history/{room}"), 404, "room_not_found")


@pytest.mark.parametrize("sid", ["bad!room", "x" * 65, "a%20b", "%C3%A9"])
async def test_an_invalid_room_id_is_refused(http: httpx.AsyncClient, sid: str) -> None:
    assert_error(await http.get(f"/api/chat/history/{sid}"), 400, "invalid_room")
    assert_error(await http.get(f"/api/chat/history/{sid}/export"), 400, "invalid_room")
    assert_error(await http.delete(f"/api/chat/history/{sid}"), 400, "invalid_room")
    message = {"hd": {"event": "chat.message"}, "bd": {"text": "hi"}}
    assert_error(await http.post(f"/api/chat/{sid}/messages", json=message), 400, "invalid_room")


async def test_the_json_export_is_the_whole_conversation_as_a_download(server: ServerProcess, http: httpx.AsyncClient,
                                                                       room: str, rdb: redis.Redis) -> None:
    await fill(server, room, ["A", "B", None] * 400 + ["A"])  # several reads of the stream
    response = await http.get(f"/api/chat/history/{room}/export", params={"format": "json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == f'attachment; filename="{room}.json"'
    export = response.json()
    assert set(export) == {"sid", "messages"} and export["sid"] == room
    assert [m["id"] for m in export["messages"]] == stored_ids(rdb, room)
    assert export["messages"][-5:] == (await history(http, room, limit=5))["messages"]
    default = await http.get(f"/api/chat/history/{room}/export")
    assert default.headers["content-disposition"] == f'attachment; filename="{room}.json"'
    assert default.json() == export


async def test_the_markdown_export_has_a_section_per_message(http: httpx.AsyncClient, room: str) -> None:
    sent = [await post(http, room, "hello", role="A"), await post(http, room, "hi **A**\nline two", role="B"),
            await post(http, room, "anyone?")]
    response = await http.get(f"/api/chat/history/{room}/export", params={"format": "markdown"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="{room}.md"'
    title, *sections = response.text.split("\n### ")
    assert title.startswith("# ") and room in title
    expected = [f"{role} · {envelope['hd']['ts']}\n\n{envelope['bd']['text']}\n"
                for role, envelope in zip(["A", "B", "user"], sent, strict=True)]
    assert sections == expected


async def test_an_unknown_export_format_is_refused(http: httpx.AsyncClient, room: str) -> None:
    await post(http, room, "hi")
    response = await http.get(f"/api/chat/history/{room}/export", params={"format": "csv"})
    assert_error(response, 400, "invalid_format")


async def test_delete_removes_the_rooms_stream(http: httpx.AsyncClient, room: str, rdb: redis.Redis) -> None:
    await post(http, room, "forget me")
    response = await http.delete(f"/api/chat/history/{room}")
    assert (response.status_code, response.content) == (204, b"")
    assert rdb.exists(stream_key(room)) == 0
    assert_error(await http.delete(f"/api/chat/history/{room}"), 404, "room_not_found")
    assert_error(await http.get(f"/api/chat/history/{room}"), 404, "room_not_found")


async def test_a_posted_message_is_stored_and_broadcast_to_the_room(server: ServerProcess, http: httpx.AsyncClient,
                                                                    room: str, rdb: redis.Redis) -> None:
    async with await Client.open(server.ws(room)) as member:
        envelope = await post(http, room, "from a bot", role="B", cid="bot-1")
        assert await member.recv() == envelope
        anonymous = await post(http, room, "no role")
        assert await member.recv() == anonymous
    hd = envelope["hd"]
    assert (hd["event"], hd["role"], hd["sid"], hd["cid"]) == ("chat.message", "B", room, "bot-1")
    assert envelope["bd"] == {"text": "from a bot"}
    assert anonymous["hd"]["role"] == "user" and "cid" not in anonymous["hd"]
    [(first_id, first), (second_id, second)] = stored(rdb, room)
    assert (first_id, second_id) == (hd["id"], anonymous["hd"]["id"])
    assert (first["participant"], second["participant"]) == ("B", "user")
    assert json.loads(first["body"]) == {"hd": {k: v for k, v in hd.items() if k != "id"}, "bd": envelope["bd"]}


def envelope(hd: dict[str, Any], bd: dict[str, Any]) -> bytes:
    return json.dumps({"hd": {"event": "chat.message", **hd}, "bd": bd}).encode()


BAD_POSTS: list[tuple[str, int, bytes, str | None]] = [
    ("invalid_json", 400, b"{not json", None),
    ("invalid_json", 400, b"\xff\xfe not utf-8", None),
    ("invalid_envelope", 400, json.dumps({"hd": {"event": "chat.message"}}).encode(), None),
    ("unknown_event", 400, json.dumps({"hd": {"event": "chat.shout", "cid": "u1"}, "bd": {"text": "hi"}}).encode(),
     "u1"),
    ("invalid_role", 400, envelope({"role": "C", "cid": "r1"}, {"text": "hi"}), "r1"),
    ("reserved_role", 400, envelope({"role": "llm"}, {"text": "hi"}), None),
    ("empty_text", 400, envelope({"cid": "e1"}, {"text": "   "}), "e1"),
    ("empty_text", 400, envelope({}, {}), None),
    ("too_large", 413, envelope({"cid": "big"}, {"text": "x" * 5001}), "big"),
    ("too_large", 413, envelope({}, {"text": "hi", "pad": "p" * 70000}), None),
]


@pytest.mark.parametrize(("code", "status", "body", "cid"), BAD_POSTS, ids=[c for c, *_ in BAD_POSTS])
async def test_a_refused_post_gets_an_error_and_stores_nothing(http: httpx.AsyncClient, room: str, rdb: redis.Redis,
                                                              code: str, status: int, body: bytes,
                                                              cid: str | None) -> None:
    response = await http.post(f"/api/chat/{room}/messages", content=body,
                               headers={"content-type": "application/json"})
    error = assert_error(response, status, code)
    assert error.get("cid") == cid
    assert rdb.exists(stream_key(room)) == 0


async def test_the_api_answers_unavailable_while_redis_is_down(start_server: Callable[..., ServerProcess],
                                                               private_redis: RedisServer, room: str) -> None:
    node = start_server(REDIS_URL=private_redis.url)
    async with httpx.AsyncClient(base_url=node.http, timeout=30) as http:
        await post(http, room, "before")
        private_redis.stop()
        assert_error(await http.get(f"/api/chat/history/{room}"), 503, "unavailable")
        assert_error(await http.get(f"/api/chat/history/{room}/export"), 503, "unavailable")
        assert_error(await http.delete(f"/api/chat/history/{room}"), 503, "unavailable")
        response = await http.post(f"/api/chat/{room}/messages", content=envelope({"cid": "d1"}, {"text": "during"}))
        assert assert_error(response, 503, "unavailable")["cid"] == "d1"
        private_redis.start()
        assert (await post(http, room, "after"))["bd"] == {"text": "after"}


def fill_big(rdb: redis.Redis, room: str, count: int, extra_bytes: int) -> list[str]:
    """``count`` entries whose ``bd`` carries ``extra_bytes`` characters, written straight to the stream."""
    ids = []
    for n in range(count):
        body = json.dumps({"hd": {"event": "chat.message", "role": "A", "sid": room, "ts": "t", "cid": f"b{n}"},
                           "bd": {"text": f"big {n}", "extra": "x" * extra_bytes}})
        ids.append(str(rdb.xadd(stream_key(room), {"participant": "A", "body": body})))
    return ids


def entry_size(rdb: redis.Redis, room: str) -> int:
    """The size of the room's entries as a page counts them (its id, field names and values)."""
    [(entry_id, fields)] = stored(rdb, room)[:1]
    return len(entry_id) + sum(len(name) + len(value) for name, value in fields.items())


async def test_pages_of_big_entries_stop_at_the_byte_budget_and_their_cursors_lead_on(
        start_server: Callable[..., ServerProcess], redis_url: str, rdb: redis.Redis, room: str) -> None:
    everything = fill_big(rdb, room, 24, 60_000)
    size = entry_size(rdb, room)
    node = start_server(REDIS_URL=redis_url, HISTORY_PAGE_MAX_BYTES=str(5 * size + size // 2))
    async with httpx.AsyncClient(base_url=node.http, timeout=30) as http:
        back = await walk(http, room, "before", limit=1000)
        forward = await walk(http, room, "after", limit=1000)
        assert [len(page["messages"]) for page in back] == [5, 5, 5, 5, 4]
        assert [len(page["messages"]) for page in forward] == [5, 5, 5, 5, 4]
        assert [i for page in reversed(back) for i in ids(page)] == everything
        assert [i for page in forward for i in ids(page)] == everything
        assert back[0]["messages"][-1]["bd"]["extra"] == "x" * 60_000  # whole entries, never cut
    tiny = start_server(REDIS_URL=redis_url, HISTORY_PAGE_MAX_BYTES="1")
    async with httpx.AsyncClient(base_url=tiny.http, timeout=30) as http:
        one = await history(http, room, limit=1000, before=everything[3])  # the budget never empties a page
        assert (ids(one), one["next_before"], one["next_after"]) == ([everything[2]], everything[2], everything[2])


async def test_a_page_of_big_entries_is_bounded_by_the_default_budget_and_an_export_is_whole(
        http: httpx.AsyncClient, rdb: redis.Redis, room: str) -> None:
    everything = fill_big(rdb, room, 40, 60_000)
    response = await http.get(f"/api/chat/history/{room}", params={"limit": 1000})
    page = response.json()
    assert len(page["messages"]) == (1 << 20) // entry_size(rdb, room)  # HISTORY_PAGE_MAX_BYTES: 1 MiB
    assert ids(page) == everything[-len(page["messages"]):] and page["next_before"] == ids(page)[0]
    assert len(response.content) < 1.1 * (1 << 20)
    export = await http.get(f"/api/chat/history/{room}/export")
    assert [m["id"] for m in export.json()["messages"]] == everything
