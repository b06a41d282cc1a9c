"""The page, its files and ``/openapi.json`` are served; the OpenAPI document is valid, names
every route the server has, and describes what the routes really answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from server.docs_routes import openapi_document
from tests.support.schemas import ROOT, check_server_frame
from tests.support.server_process import ServerProcess

SECRET = "s3cret-for-the-docs-tests-0123456789abcdef"
ADMIN = "admin-key-for-the-docs-tests-0123456789"


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as client:
        yield client


async def test_the_server_serves_the_bundled_document(http: httpx.AsyncClient) -> None:
    response = await http.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()


async def test_the_page_and_its_files_are_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/", params={"sid": "room001", "role": "A"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for hook in ("message-input", "send", "messages", "presence", "status"):
        assert f'data-testid="{hook}"' in page.text
    for path, media in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = await http.get(path)
        assert response.status_code == 200 and media in response.headers["content-type"]
        assert path in page.text
    assert (await http.get("/static/nothing.js")).status_code == 404


async def test_the_javascript_client_is_served_for_the_page_to_import(http: httpx.AsyncClient) -> None:
    module = await http.get("/client/chat-relay.js")
    assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
    assert module.content == (ROOT / "client" / "js" / "chat-relay.js").read_bytes()
    assert 'from "/client/chat-relay.js"' in (await http.get("/static/app.js")).text
    assert '<script type="module" src="/static/app.js">' in (await http.get("/")).text


class Described:
    """Checks an HTTP response against what the OpenAPI document says the route answers."""

    def __init__(self) -> None:
        self.document = openapi_document()
        self.registry: Registry[Any] = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(
            self.document))

    def check(self, template: str, response: httpx.Response) -> None:
        method, status = response.request.method.lower(), str(response.status_code)
        where = f"{method.upper()} {template} {status}"
        responses = f"#/paths/{escape(template)}/{method}/responses"
        assert status in self.node(responses), f"{where}: not documented"
        pointer = self.follow(f"{responses}/{status}")
        content = self.node(pointer).get("content", {})
        media = response.headers.get("content-type", "").split(";")[0]
        if not content:
            assert response.content == b"", where
            return
        assert media in content, f"{where}: {media} is not documented"
        if media == "application/json":
            schema = {"$ref": f"urn:openapi{pointer}/content/{escape(media)}/schema"}
            validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(
                response.json())]
            assert not errors, f"{where}: {errors}"

    def node(self, pointer: str) -> Any:
        node: Any = self.document
        for part in pointer.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def follow(self, pointer: str) -> str:
        """``pointer``, or where the references starting there lead."""
        while "$ref" in (node := self.node(pointer)):
            pointer = node["$ref"]
        return pointer


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


async def test_the_routes_answer_as_the_document_says(http: httpx.AsyncClient, room: str) -> None:
    described = Described()
    messages, history = "/api/chat/{sid}/messages", "/api/chat/history/{sid}"
    envelope = {"hd": {"event": "chat.message", "role": "A", "cid": "d-1"}, "bd": {"text": "documented"}}
    calls: list[tuple[str, httpx.Response]] = [
        ("/healthz", await http.get("/healthz")),
        ("/readyz", await http.get("/readyz")),
        (history, await http.get(f"/api/chat/history/{room}")),  # 404: nothing yet
        (messages, published := await http.post(f"/api/chat/{room}/messages", json=envelope)),
        (messages, await http.post(f"/api/chat/{room}/messages", json=envelope)),  # a resend
        (messages, await http.post(f"/api/chat/{room}/messages", json={"hd": {"event": "chat.message"}, "bd": {}})),
        (messages, await http.post(f"/api/chat/{room}/messages", content=b"x" * 70_000)),
        (history, await http.get(f"/api/chat/history/{room}", params={"limit": "1"})),
        (history, await http.get(f"/api/chat/history/{room}", params={"after": "0", "participant": "A"})),
        (history, await http.get(f"/api/chat/history/{room}", params={"limit": "many"})),
        (history + "/export", await http.get(f"/api/chat/history/{room}/export")),
        (history + "/export", await http.get(f"/api/chat/history/{room}/export", params={"format": "markdown"})),
        (history + "/export", await http.get(f"/api/chat/history/{room}/export", params={"format": "pdf"})),
        ("/metrics", await http.get("/metrics")),
        ("/v1/session", await http.post("/v1/session")),
        ("/v1/session", await http.post("/v1/session", json={"sid": room + "-x", "ttl_s": 60})),
        ("/v1/session", await http.post("/v1/session", json={"ttl_s": 0})),
        ("/openapi.json", await http.get("/openapi.json")),
        ("/", await http.get("/")),
        ("/client/chat-relay.js", await http.get("/client/chat-relay.js")),
        (history, await http.delete(f"/api/chat/history/{room}")),
        (history, await http.delete(f"/api/chat/history/{room}")),
    ]
    assert [r.status_code for _, r in calls] == [200, 200, 404, 201, 201, 400, 413, 200, 200, 400, 200, 200, 400,
                                                 200, 201, 201, 400, 200, 200, 200, 204, 404]
    for template, response in calls:
        described.check(template, response)
    check_server_frame(published.json())  # what members receive, as the AsyncAPI document says


async def test_with_auth_on_the_routes_answer_as_the_document_says(start_server: Callable[..., ServerProcess],
                                                                    redis_url: str, room: str) -> None:
    secured = start_server(REDIS_URL=redis_url, AUTH_SECRET=SECRET, ADMIN_KEY=ADMIN)
    described, admin = Described(), {"Authorization": f"Bearer {ADMIN}"}
    history, messages = "/api/chat/history/{sid}", "/api/chat/{sid}/messages"
    async with httpx.AsyncClient(base_url=secured.http, timeout=30) as http:
        created = await http.post("/v1/session", json={"sid": room}, headers=admin)
        other = await http.post("/v1/session", json={"sid": room + "-other"}, headers=admin)
        token = {"Authorization": f"Bearer {created.json()['tokens']['A']}"}
        envelope = {"hd": {"event": "chat.message"}, "bd": {"text": "with a token"}}
        calls: list[tuple[str, httpx.Response]] = [
            ("/v1/session", created),
            ("/v1/session", await http.post("/v1/session")),
            (messages, await http.post(f"/api/chat/{room}/messages", json=envelope)),
            (messages, published := await http.post(f"/api/chat/{room}/messages", json=envelope, headers=token)),
            (history, await http.get(f"/api/chat/history/{room}", headers={
                "Authorization": f"Bearer {other.json()['tokens']['B']}"})),
            (history, await http.get(f"/api/chat/history/{room}", headers=token)),
            (history, await http.delete(f"/api/chat/history/{room}", headers=token)),
            (history, await http.delete(f"/api/chat/history/{room}", headers=admin)),
            ("/metrics", await http.get("/metrics", headers=admin)),  # no METRICS_TOKEN: closed
        ]
    assert [r.status_code for _, r in calls] == [201, 401, 401, 201, 403, 200, 403, 204, 401]
    assert set(created.json()["tokens"]) == {"A", "B"} and created.json()["expires_at"]
    assert published.json()["hd"]["role"] == "A"  # the token's role
    for template, response in calls:
        described.check(template, response)
