"""Headless Chromium for the tests, driven over the Chrome DevTools Protocol (CDP).

:class:`Browser` starts ``chromium --headless`` with ``--remote-debugging-port=0`` and reads the
port it picked from ``DevToolsActivePort`` in its profile directory. :meth:`Browser.new_page`
opens a tab and connects to its DevTools WebSocket: a :class:`Page` sends commands and waits for
their answers (and for events it asked about). The page is driven as a user would: keys go
to the focused element through ``Input.insertText``, clicks are mouse events at an element's
centre. :meth:`Page.wait_for` waits for a condition inside the page, re-checked on every DOM
change, so tests wait for what they need to see and never for a while.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.support.tools import chromium

START_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 15.0


class Browser:
    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="chat-relay-chromium-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Browser:
        log = (self.profile / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT)
        active_port = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not active_port.exists() or not active_port.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start: {self.log()}")
            time.sleep(0.05)
        self.port = int(active_port.read_text().split()[0])
        return self

    def log(self) -> str:
        return (self.profile / "chromium.log").read_text(errors="replace")[-4000:]

    async def new_page(self) -> Page:
        def open_tab() -> dict[str, Any]:
            request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
            with urllib.request.urlopen(request, timeout=10) as response:
                return dict(json.load(response))

        target = await asyncio.to_thread(open_tab)
        page = Page(await connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        page.start()
        await page.command("Page.enable")
        await page.command("Runtime.enable")
        return page

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.profile, ignore_errors=True)


class PageError(AssertionError):
    """A command the page refused, or a script that threw."""


class Page:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.console: list[str] = []  # what the page logged, errors included

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                answer = self._answers.pop(message["id"], None)
                if answer is not None and not answer.done():
                    answer.set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                self.console.append(f"uncaught: {params['exceptionDetails']}")
            for waiter in self._events.pop(method, []):
                if not waiter.done():
                    waiter.set_result(params)

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        answer = self._answers[number] = asyncio.get_running_loop().create_future()
        await self._ws.send(json.dumps({"id": number, "method": method, "params": params}))
        message = await asyncio.wait_for(answer, WAIT_TIMEOUT_S)
        if "error" in message:
            raise PageError(f"{method}: {message['error']}")
        result: dict[str, Any] = message["result"]
        return result

    def event(self, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event; ask for it before causing the event."""
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._events.setdefault(method, []).append(waiter)
        return waiter

    async def goto(self, url: str) -> None:
        loaded = self.event("Page.loadEventFired")
        await self.command("Page.navigate", url=url)
        await asyncio.wait_for(loaded, WAIT_TIMEOUT_S)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = await self.command("Runtime.evaluate", expression=expression, awaitPromise=True,
                                    returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def wait_for(self, predicate: str, timeout_s: float = WAIT_TIMEOUT_S) -> Any:
        """The first truthy value of the JavaScript expression ``predicate``, checked now and after
        every change to the document; fails after ``timeout_s``."""
        return await self.evaluate(f"""new Promise((resolve, reject) => {{
            const done = () => {{ observer.disconnect(); clearTimeout(timer); }};
            const check = () => {{
                let value;
                try {{ value = ({predicate}); }} catch (error) {{ done(); reject(error); return; }}
                if (value) {{ done(); resolve(value); }}
            }};
            const observer = new MutationObserver(check);
            observer.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
            const timer = setTimeout(() => {{
                observer.disconnect();
                reject(new Error("timed out waiting for: " + {json.dumps(predicate)}));
            }}, {int(timeout_s * 1000)});
            check();
        }})""")

    async def type(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.command("Input.insertText", text=text)

    async def click(self, selector: str) -> None:
        box = await self.evaluate(f"""(() => {{
            const rect = document.querySelector({json.dumps(selector)}).getBoundingClientRect();
            return {{x: rect.x + rect.width / 2, y: rect.y + rect.height / 2}};
        }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            await self.command("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                               clickCount=1)

    async def close(self) -> None:
        await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
