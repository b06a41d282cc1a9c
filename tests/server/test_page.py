"""The chat page at ``/`` in a real browser (headless Chromium): chatting, other members'
messages, the bot's answer streaming in, presence, and resuming after the server went away."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.browser import Browser, Page
from tests.support.client import Client
from tests.support.server_process import ServerProcess

RECONNECT_TIMEOUT_S = 40.0  # the page retries after 0.5, 1, 2, 4, 8 s... while the server restarts
MESSAGES = '[data-testid="messages"]'
STATUS = '[data-testid="status"]'


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    browser = Browser().start()
    yield browser
    browser.stop()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    page = await browser.new_page()
    yield page
    assert not [line for line in page.console if line.startswith("uncaught")], page.console
    await page.close()


def shown(role: str, text: str) -> str:
    """A page expression: how many messages from ``role`` with ``text`` the list shows."""
    return (f"[...document.querySelectorAll('{MESSAGES} li[data-role={json.dumps(role)}] .text')]"
            f".filter((p) => p.textContent === {json.dumps(text)}).length")


def connected() -> str:
    return f"document.querySelector('{STATUS}').dataset.state === 'open'"


def present() -> str:
    return "[...document.querySelectorAll('[data-testid=\"presence\"] li')].map((li) => li.textContent).sort()"


async def say(page: Page, text: str) -> None:
    await page.type('[data-testid="message-input"]', text)
    await page.click('[data-testid="send"]')


async def until(client: Client, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while not done(frame := await client.recv()):
        pass
    return frame


async def test_chat_with_another_member_and_the_bot(server: ServerProcess, room: str, page: Page) -> None:
    await page.goto(f"{server.http}/?sid={room}&role=A")
    await page.wait_for(connected())
    assert await page.evaluate(present()) == ["A (you)"]
    assert await page.evaluate(f"document.querySelector('{STATUS}').textContent") == "connected"
    assert await page.evaluate("getComputedStyle(document.querySelector('#join')).display") == "none"

    async with await Client.open(server.ws(room, role="B")) as b:
        assert await page.wait_for(f"JSON.stringify({present()}) === '[\"A (you)\",\"B\"]'")

        await say(page, "hello from the page")
        assert await page.wait_for(shown("A", "hello from the page")) == 1
        assert await page.evaluate("document.querySelector('[data-testid=\"message-input\"]').value") == ""
        heard = await b.recv()
        assert (heard["hd"]["role"], heard["bd"]["text"]) == ("A", "hello from the page")

        await b.chat("hi page, B here")
        assert await page.wait_for(shown("B", "hi page, B here")) == 1
        await b.recv()

        # Record every state the bot's message goes through in the list, from now on.
        await page.evaluate(f"""(() => {{
            window.botStates = [];
            new MutationObserver(() => {{
                for (const item of document.querySelectorAll('{MESSAGES} li[data-rid]')) {{
                    window.botStates.push([item.dataset.state, item.querySelector('.text').textContent]);
                }}
            }}).observe(document.querySelector('{MESSAGES}'), {{subtree: true, childList: true,
                                                              characterData: true, attributes: true}});
        }})()""")
        await say(page, "@llm what is a stream")
        await page.wait_for(f"document.querySelector('{MESSAGES} li[data-rid]')?.dataset.state === 'done'")
        response = await until(b, lambda frame: frame["hd"]["event"] == "llm.response")
        final = await page.evaluate(f"document.querySelector('{MESSAGES} li[data-rid] .text').textContent")
        assert final == response["bd"]["text"] and final.startswith("You said: A: @llm what is a stream.")
        partial = [text for state, text in await page.evaluate("window.botStates") if state == "streaming"]
        assert any(0 < len(text) < len(final) and final.startswith(text) for text in partial)  # it streamed in
        assert await page.evaluate(shown("A", "@llm what is a stream")) == 1

    assert await page.wait_for(f"JSON.stringify({present()}) === '[\"A (you)\"]'")


async def test_the_page_resumes_after_its_server_went_away(start_server: Callable[..., ServerProcess],
                                                          redis_url: str, server: ServerProcess, room: str,
                                                          page: Page) -> None:
    node = start_server(REDIS_URL=redis_url)
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as other_node:
        async def publish(text: str) -> None:
            answer = await other_node.post(f"/api/chat/{room}/messages",
                                           json={"hd": {"event": "chat.message", "role": "A"}, "bd": {"text": text}})
            assert answer.status_code == 201

        await page.goto(f"{node.http}/?sid={room}&role=B")
        await page.wait_for(connected())
        await publish("before the drop")
        await page.wait_for(shown("A", "before the drop"))

        node.stop()
        await page.wait_for(f"document.querySelector('{STATUS}').dataset.state === 'disconnected'")
        await publish("while you were away")  # stored while the page has no connection
        await say(page, "typed while offline")  # sent once the page is back

        node.start()
        await page.wait_for(connected(), RECONNECT_TIMEOUT_S)
        assert await page.wait_for(shown("A", "while you were away")) == 1  # replayed: only a resume has it
        assert await page.wait_for(shown("B", "typed while offline")) == 1
        assert await page.evaluate(shown("A", "before the drop")) == 1  # and nothing twice

        history = (await other_node.get(f"/api/chat/history/{room}")).json()
    assert [m["bd"]["text"] for m in history["messages"]] == ["before the drop", "while you were away",
                                                              "typed while offline"]


async def test_stop_cancels_the_bot_s_answer(start_server: Callable[..., ServerProcess], redis_url: str, room: str,
                                             page: Page) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_SCRIPTED_DELAY_MS="200")  # a #long answer takes ~20 s
    await page.goto(f"{node.http}/?sid={room}")
    await page.wait_for(connected())
    await say(page, "@llm #long story please")
    await page.wait_for(f"document.querySelector('{MESSAGES} li[data-rid] .text')?.textContent")
    await page.click(f"{MESSAGES} li[data-rid] button")
    await page.wait_for(f"document.querySelector('{MESSAGES} li[data-rid]').dataset.state === 'cancelled'")
    assert await page.evaluate(f"document.querySelector('{MESSAGES} li[data-rid] button')") is None
    assert await page.evaluate(shown("user", "@llm #long story please")) == 1


async def test_with_auth_on_the_page_connects_with_the_token_in_its_address(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, page: Page) -> None:
    admin_key = "admin-key-for-the-page-tests-0123456789"
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET="s3cret-for-the-page-tests-0123456789abc",
                        ADMIN_KEY=admin_key)
    async with httpx.AsyncClient(base_url=node.http, timeout=30) as http:
        created = await http.post("/v1/session", json={"sid": room}, headers={"Authorization": f"Bearer {admin_key}"})
    tokens = created.json()["tokens"]
    await page.goto(f"{node.http}/?sid={room}&token={tokens['A']}")  # no role: the token's
    await page.wait_for(connected())
    assert await page.evaluate(present()) == ["A (you)"]
    async with await Client.open(node.ws(room, token=tokens["B"])) as b:
        await say(page, "signed in as A")
        heard = await b.recv()
        assert (heard["hd"]["role"], heard["bd"]["text"]) == ("A", "signed in as A")
        await b.chat("and B with its token")
        assert await page.wait_for(shown("B", "and B with its token")) == 1
    assert await page.evaluate(shown("A", "signed in as A")) == 1
