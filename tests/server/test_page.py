"""The chat page at ``/`` in a real browser: headless Chromium (the system's, see
``tests/support/tools.py``) driven by Playwright. Chatting, other members' messages, the bot's
answer streaming in, presence, Stop, Regenerate, resuming after the server went away, tokens; and the issue's
scenario, two pages as A and B in one room.

The page's hooks: ``data-testid`` on the input, the send button and the message list; each
message's ``data-role``; ``data-final="true"`` on the bot's answer once its ``llm.response`` came.
Every wait is one of Playwright's retrying assertions (``expect``), never a sleep.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Error, Locator, Page, async_playwright, expect

from tests.support.client import Client
from tests.support.server_process import ServerProcess
from tests.support.tools import chromium

WAIT_TIMEOUT_MS = 15_000
RECONNECT_TIMEOUT_MS = 40_000  # the page retries after 0.5, 1, 2, 4, 8 s... while the server restarts
MESSAGES = '[data-testid="messages"]'
INPUT = '[data-testid="message-input"]'
SEND = '[data-testid="send"]'
STATUS = '[data-testid="status"]'
PRESENCE = '[data-testid="presence"] li'
BOT = f'{MESSAGES} li[data-role="llm"]'

pytestmark = pytest.mark.clients  # Chromium: scripts/test.sh clients

expect.set_options(timeout=WAIT_TIMEOUT_MS)

NewPage = Callable[[str], Awaitable[Page]]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium()  # fails with the command that installs it
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        await browser.close()


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[NewPage]:
    """Opens the page at a URL in a fresh browser context (its own window); at the end, none of the
    pages opened may have thrown an uncaught error."""
    contexts: list[BrowserContext] = []
    errors: list[Error] = []

    async def open_page(url: str) -> Page:
        context = await browser.new_context()
        contexts.append(context)
        context.set_default_timeout(WAIT_TIMEOUT_MS)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(error))
        await page.goto(url)
        return page

    yield open_page
    for context in contexts:
        await context.close()
    assert not errors, errors


def shown(page: Page, role: str, text: str) -> Locator:
    """The messages from ``role`` whose text is exactly ``text``."""
    return page.locator(f'{MESSAGES} li[data-role="{role}"] .text').filter(
        has_text=re.compile(f"^{re.escape(text)}$"))


async def connected(page: Page, timeout_ms: float = WAIT_TIMEOUT_MS) -> None:
    await expect(page.locator(STATUS)).to_have_attribute("data-state", "open", timeout=timeout_ms)


async def say(page: Page, text: str) -> None:
    await page.fill(INPUT, text)
    await page.click(SEND)


async def until(client: Client, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while not done(frame := await client.recv()):
        pass
    return frame


async def test_two_pages_as_a_and_b_chat_and_both_see_the_bot_s_answer(server: ServerProcess, room: str,
                                                                      new_page: NewPage) -> None:
    a = await new_page(f"{server.http}/?sid={room}&role=A")
    await connected(a)
    b = await new_page(f"{server.http}/?sid={room}&role=B")
    await connected(b)
    await expect(a.locator(PRESENCE)).to_have_text(["A (you)", "B"])

    await say(a, "hello B, from A's page")
    await expect(shown(b, "A", "hello B, from A's page")).to_have_count(1)

    await say(b, "@llm what is a stream")
    await expect(shown(a, "B", "@llm what is a stream")).to_have_count(1)
    answers = [page.locator(f'{BOT}[data-final="true"] .text') for page in (a, b)]
    for answer in answers:
        await expect(answer).to_have_count(1)
        await expect(answer).to_have_text(re.compile(r"^You said: B: @llm what is a stream\."))
    assert await answers[0].text_content() == await answers[1].text_content()


async def test_chat_with_another_member_and_the_bot(server: ServerProcess, room: str, new_page: NewPage) -> None:
    page = await new_page(f"{server.http}/?sid={room}&role=A")
    await connected(page)
    await expect(page.locator(STATUS)).to_have_text("connected")
    await expect(page.locator(PRESENCE)).to_have_text(["A (you)"])
    await expect(page.locator("#join")).to_be_hidden()

    async with await Client.open(server.ws(room, role="B")) as b:
        await expect(page.locator(PRESENCE)).to_have_text(["A (you)", "B"])

        await say(page, "hello from the page")
        await expect(shown(page, "A", "hello from the page")).to_have_count(1)
        await expect(page.locator(INPUT)).to_have_value("")
        heard = await b.recv()
        assert (heard["hd"]["role"], heard["bd"]["text"]) == ("A", "hello from the page")

        await b.chat("hi page, B here")
        await expect(shown(page, "B", "hi page, B here")).to_have_count(1)
        await b.recv()

        # Record every state the bot's message goes through in the list, from now on.
        await page.evaluate("""([messages, bot]) => {
            window.botStates = [];
            new MutationObserver(() => {
                for (const item of document.querySelectorAll(bot)) {
                    window.botStates.push([item.dataset.final, item.querySelector('.text').textContent]);
                }
            }).observe(document.querySelector(messages), {subtree: true, childList: true,
                                                          characterData: true, attributes: true});
        }""", [MESSAGES, BOT])
        await say(page, "@llm what is a stream")
        bot = page.locator(BOT)
        await expect(bot).to_have_attribute("data-state", "done")
        await expect(bot).to_have_attribute("data-final", "true")
        response = await until(b, lambda frame: frame["hd"]["event"] == "llm.response")
        final = await bot.locator(".text").text_content()
        assert final is not None
        assert final == response["bd"]["text"] and final.startswith("You said: A: @llm what is a stream.")
        partial = [text for is_final, text in await page.evaluate("window.botStates") if is_final == "false"]
        assert any(0 < len(text) < len(final) and final.startswith(text) for text in partial)  # it streamed in
        await expect(shown(page, "A", "@llm what is a stream")).to_have_count(1)

    await expect(page.locator(PRESENCE)).to_have_text(["A (you)"])


async def test_the_page_resumes_after_its_server_went_away(start_server: Callable[..., ServerProcess],
                                                          redis_url: str, server: ServerProcess, room: str,
                                                          new_page: NewPage) -> None:
    node = start_server(REDIS_URL=redis_url)
    async with httpx.AsyncClient(base_url=server.http, timeout=30) as other_node:
        async def publish(text: str) -> None:
            answer = await other_node.post(f"/api/chat/{room}/messages",
                                           json={"hd": {"event": "chat.message", "role": "A"}, "bd": {"text": text}})
            assert answer.status_code == 201

        page = await new_page(f"{node.http}/?sid={room}&role=B")
        await connected(page)
        await publish("before the drop")
        await expect(shown(page, "A", "before the drop")).to_have_count(1)

        node.stop()
        await expect(page.locator(STATUS)).to_have_attribute("data-state", "disconnected")
        await publish("while you were away")  # stored while the page has no connection
        await say(page, "typed while offline")  # sent once the page is back

        node.start()
        await connected(page, RECONNECT_TIMEOUT_MS)
        await expect(shown(page, "A", "while you were away")).to_have_count(1)  # replayed: only a resume has it
        await expect(shown(page, "B", "typed while offline")).to_have_count(1)
        await expect(shown(page, "A", "before the drop")).to_have_count(1)  # and nothing twice

        history = (await other_node.get(f"/api/chat/history/{room}")).json()
    assert [m["bd"]["text"] for m in history["messages"]] == ["before the drop", "while you were away",
                                                              "typed while offline"]


async def test_stop_cancels_the_bot_s_answer(start_server: Callable[..., ServerProcess], redis_url: str, room: str,
                                             new_page: NewPage) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_SCRIPTED_DELAY_MS="200")  # a #long answer takes ~20 s
    page = await new_page(f"{node.http}/?sid={room}")
    await connected(page)
    await say(page, "@llm #long story please")
    bot = page.locator(BOT)
    await expect(bot.locator(".text")).to_have_text(re.compile(r"\S"))  # it has begun
    await expect(bot).to_have_attribute("data-final", "false")
    await bot.get_by_role("button", name="Stop").click()
    await expect(bot).to_have_attribute("data-state", "cancelled")
    await expect(bot).to_have_attribute("data-final", "true")
    await expect(bot.get_by_role("button", name="Stop")).to_have_count(0)
    await expect(shown(page, "user", "@llm #long story please")).to_have_count(1)


async def test_regenerate_under_an_answer_asks_again_and_shows_a_new_answer_labelled_as_such(
        server: ServerProcess, room: str, new_page: NewPage) -> None:
    page = await new_page(f"{server.http}/?sid={room}&role=A")
    await connected(page)
    await say(page, "@llm what is a stream?")
    first = page.locator(BOT).first
    await expect(first).to_have_attribute("data-final", "true")
    rid = await first.get_attribute("data-rid")
    await first.get_by_role("button", name="Regenerate").click()
    await expect(page.locator(BOT)).to_have_count(2)
    again = page.locator(BOT).nth(1)
    await expect(again).to_have_attribute("data-regenerates", str(rid))
    await expect(again.locator(".regenerates")).to_have_text(re.compile("^Regenerated"))
    await expect(again).to_have_attribute("data-final", "true")
    assert await again.get_attribute("data-rid") != rid
    await expect(again.locator(".text")).to_have_text(re.compile(r"^You said: A: @llm what is a stream\?"))
    await expect(first.get_by_role("button", name="Regenerate")).to_have_count(1)  # both answers stay
    await expect(shown(page, "A", "@llm what is a stream?")).to_have_count(1)  # nothing else was stored


async def test_with_auth_on_the_page_connects_with_the_token_in_its_address(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, new_page: NewPage) -> None:
    admin_key = "admin-key-for-the-page-tests-0123456789"
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET="s3cret-for-the-page-tests-0123456789abc",
                        ADMIN_KEY=admin_key)
    async with httpx.AsyncClient(base_url=node.http, timeout=30) as http:
        created = await http.post("/v1/session", json={"sid": room}, headers={"Authorization": f"Bearer {admin_key}"})
    tokens = created.json()["tokens"]
    page = await new_page(f"{node.http}/?sid={room}&token={tokens['A']}")  # no role: the token's
    await connected(page)
    await expect(page.locator(PRESENCE)).to_have_text(["A (you)"])
    async with await Client.open(node.ws(room, token=tokens["B"])) as b:
        await say(page, "signed in as A")
        heard = await b.recv()
        assert (heard["hd"]["role"], heard["bd"]["text"]) == ("A", "signed in as A")
        await b.chat("and B with its token")
        await expect(shown(page, "B", "and B with its token")).to_have_count(1)
    await expect(shown(page, "A", "signed in as A")).to_have_count(1)


async def test_when_its_token_expires_the_page_says_a_new_token_is_needed(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, new_page: NewPage) -> None:
    admin_key = "admin-key-for-the-page-tests-0123456789"
    node = start_server(REDIS_URL=redis_url, AUTH_SECRET="s3cret-for-the-page-tests-0123456789abc",
                        ADMIN_KEY=admin_key)
    async with httpx.AsyncClient(base_url=node.http, timeout=30) as http:
        created = await http.post("/v1/session", json={"sid": room, "ttl_s": 2},
                                  headers={"Authorization": f"Bearer {admin_key}"})
    page = await new_page(f"{node.http}/?sid={room}&token={created.json()['tokens']['A']}")
    await connected(page)
    status = page.locator(STATUS)
    await expect(status).to_have_text(re.compile("token has expired"), timeout=10_000)  # closed with 4001
    await expect(status).to_have_attribute("data-state", "disconnected")


async def test_a_page_opened_mid_answer_shows_the_answer_so_far_at_once(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, new_page: NewPage) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_SCRIPTED_DELAY_MS="200")  # a #long answer takes ~20 s
    async with await Client.open(node.ws(room, role="A")) as a:
        await a.chat("@llm #long story please")
        early = await until(a, lambda frame: frame["hd"]["event"] == "llm.streaming" and frame["hd"]["seq"] >= 3)
        page = await new_page(f"{node.http}/?sid={room}&role=B")
        await connected(page)
        bot = page.locator(BOT)
        # Its first words came before the page was opened: only the llm.snapshot can have shown them.
        await expect(bot.locator(".text")).to_have_text(re.compile(r"^You said: A: @llm #long story please\."))
        await expect(bot).to_have_attribute("data-final", "false")
        await a.send({"event": "llm.cancel"}, {"rid": early["hd"]["rid"]})
        response = await until(a, lambda frame: frame["hd"]["event"] == "llm.response")
        await expect(bot).to_have_attribute("data-final", "true")
        assert await bot.locator(".text").text_content() == response["bd"]["text"]


async def test_a_question_waiting_its_turn_shows_queued_under_it_and_its_answer_comes_next(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, new_page: NewPage) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_SCRIPTED_DELAY_MS="100")  # a #long answer takes ~10 s
    page_a = await new_page(f"{node.http}/?sid={room}&role=A")
    page_b = await new_page(f"{node.http}/?sid={room}&role=B")
    await connected(page_a)
    await connected(page_b)
    await say(page_a, "@llm #long story please")
    await expect(page_b.locator(BOT).locator(".text")).to_have_text(re.compile(r"\S"))  # it has begun
    await say(page_b, "@llm and then mine")
    for page in (page_a, page_b):
        question = page.locator(f'{MESSAGES} li[data-role="B"]')
        await expect(question.get_by_test_id("queued")).to_have_text(re.compile(r"^queued \(1st\)"))
    opened_late = await new_page(f"{node.http}/?sid={room}")  # from session.ready's generations
    await connected(opened_late)
    await expect(opened_late.get_by_test_id("queued")).to_have_text(re.compile(r"^queued \(1st\)"))
    await page_a.locator(BOT).first.get_by_role("button", name="Stop").click()
    for page in (page_a, page_b, opened_late):
        await expect(page.locator(BOT)).to_have_count(2)
        await expect(page.locator(BOT).nth(1)).to_have_attribute("data-final", "true")
        await expect(page.locator(BOT).nth(1).locator(".text")).to_have_text(re.compile(r"^You said: .*and then mine"))
        await expect(page.get_by_test_id("queued")).to_have_count(0)


async def test_cancelling_a_waiting_question_from_the_page_takes_it_off_the_queue(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, new_page: NewPage) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_SCRIPTED_DELAY_MS="100")
    page = await new_page(f"{node.http}/?sid={room}&role=A")
    await connected(page)
    await say(page, "@llm #long story please")
    await expect(page.locator(BOT).locator(".text")).to_have_text(re.compile(r"\S"))
    await say(page, "@llm never mind")
    label = page.get_by_test_id("queued")
    await expect(label).to_have_text(re.compile(r"^queued \(1st\)"))
    await label.get_by_role("button", name="Cancel").click()
    await expect(label).to_have_count(0)
    await expect(page.locator(f"{MESSAGES} li.notice")).to_have_text(re.compile("taken off the queue by A"))
    await page.locator(BOT).first.get_by_role("button", name="Stop").click()
    await expect(page.locator(BOT).first).to_have_attribute("data-final", "true")
    await expect(page.locator(BOT)).to_have_count(1)  # the cancelled question is never answered


async def test_with_llm_cancel_asker_only_the_asker_s_page_offers_stop(
        start_server: Callable[..., ServerProcess], redis_url: str, room: str, new_page: NewPage) -> None:
    node = start_server(REDIS_URL=redis_url, LLM_SCRIPTED_DELAY_MS="100", LLM_CANCEL="asker")
    page_a = await new_page(f"{node.http}/?sid={room}&role=A")
    page_b = await new_page(f"{node.http}/?sid={room}&role=B")
    await connected(page_a)
    await connected(page_b)
    await say(page_a, "@llm #long story please")
    await expect(page_b.locator(BOT).locator(".text")).to_have_text(re.compile(r"\S"))
    await expect(page_b.locator(BOT).get_by_role("button", name="Stop")).to_have_count(0)
    await page_a.locator(BOT).get_by_role("button", name="Stop").click()
    await expect(page_b.locator(BOT)).to_have_attribute("data-state", "cancelled")
