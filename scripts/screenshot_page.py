"""The README's picture of the chat page: ``docs/page.png``.

    .venv/bin/python scripts/screenshot_page.py                # writes docs/page.png
    .venv/bin/python scripts/screenshot_page.py --out /tmp/page.png

It starts the demo's server in this process (``demo_room.serving``: the embedded store and the
offline scripted bot), opens the page as A and as B in headless Chromium (the system's, driven by
Playwright: ``CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH), types the demo's
conversation into the pages, and saves A's view once the bot's answer is final.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

from demo_room import SCRIPT, serving
from playwright.async_api import Browser, Page, ViewportSize, async_playwright, expect

ROOT = Path(__file__).resolve().parents[1]
ROOM = "room001"
VIEWPORT = ViewportSize(width=1000, height=700)
TIMEOUT_MS = 30_000


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise SystemExit("Chromium is not installed: run scripts/install_client_tools.sh")
    return found


async def main(out: Path) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    async with serving(None) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        http = "http" + base.removeprefix("ws")
        pages = {role: await open_page(browser, f"{http}/?sid={ROOM}&role={role}") for role in ("A", "B")}
        a = pages["A"]
        await expect(a.locator('[data-testid="presence"] li')).to_have_count(2)
        for role, text in SCRIPT:
            await pages[role].fill('[data-testid="message-input"]', text)
            await pages[role].click('[data-testid="send"]')
            await expect(a.locator(f'[data-testid="messages"] li[data-role="{role}"]').last).to_contain_text(text)
            if "@llm" in text:
                await expect(a.locator('li[data-role="llm"][data-final="true"]')).to_have_count(1)
        await a.locator('[data-testid="message-input"]').blur()
        out.parent.mkdir(parents=True, exist_ok=True)
        await a.screenshot(path=str(out))
        await browser.close()
    print(f"wrote {out}")


async def open_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(url)
    await expect(page.locator('[data-testid="status"]')).to_have_attribute("data-state", "open")
    return page


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Screenshot the chat page with a conversation in it.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "page.png", help="the PNG to write")
    options = parser.parse_args(sys.argv[1:])
    asyncio.run(main(options.out))
