"""A careful client, as README "Resume" and "Exactly-once sending" ask clients to be, recording what it
receives for the checker.

- Every message it sends carries a ``cid``; it is *acknowledged* when its broadcast (with that ``cid``)
  comes back. Until then it is re-sent with the same ``cid``: after every (re)connection's
  ``session.ready``, and a moment after an ``unavailable`` refusal.
- After any disconnect it reconnects, to any node, with ``last_id`` (the newest entry it received in
  order) and ``epoch``, backing off while no node answers.
- A re-sent ``cid`` may come back twice, the second time to this sender alone and out of the stream's
  order: such frames never move the cursor (the in-order delivery does).
- An ``llm.invoke`` refused ``busy`` is forgotten (the checker allows for it): with ``LLM_TURNS=queue`` it
  is stored, unanswered (the room's queue was full); with ``refuse`` it is not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from soakkit.check import ClientRecord, Stored, id_key

STORED_EVENTS = {"chat.message", "llm.invoke", "llm.response", "llm.error"}
BACKOFF_S = (0.1, 2.0)
RESEND_AFTER_S = 0.5
CONNECT_TIMEOUT_S = 5.0


def stored_of(hd: dict[str, Any]) -> Stored:
    return Stored(id=hd["id"], role=hd["role"], event=hd["event"], cid=hd.get("cid"), reply_to=hd.get("reply_to"),
                  rid=hd.get("rid"))


class CarefulClient:
    def __init__(self, room: str, role: str, pick_node: Callable[[], str], rng: random.Random,
                 streaming: asyncio.Event) -> None:
        self.record = ClientRecord(room=room, role=role)
        self._streaming = streaming  # set at every llm.streaming frame
        self._pick_node = pick_node
        self._rng = rng
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._cursor: str | None = None  # the newest entry received in order
        self._newest: str | None = None  # the newest entry received at all
        self._epoch: str | None = None
        self._outbox: dict[str, bytes] = {}  # cid -> frame, until acknowledged
        self._sequence = 0
        self._began = asyncio.get_running_loop().time()

    # -- what the harness asks of it --------------------------------------------------------------------

    @property
    def unacknowledged(self) -> int:
        return len(self._outbox)

    def received_up_to(self, entry_id: str | None) -> bool:
        return entry_id is None or (self._newest is not None and id_key(self._newest) >= id_key(entry_id))

    async def say(self, text: str) -> None:
        await self._send("chat.message", {"text": text})

    async def ask(self, prompt: str) -> None:
        await self._send("llm.invoke", {"prompt": prompt})

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def drop(self) -> None:
        """Cut the TCP connection without a closing handshake, as a lost network does."""
        if self._ws is not None:
            self._ws.transport.abort()

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop``: reconnect (resuming) after every disconnect."""
        backoff = BACKOFF_S[0]
        while not stop.is_set():
            try:
                async with connect(self._url(), open_timeout=CONNECT_TIMEOUT_S, max_size=None,
                                   ping_interval=None) as ws:
                    backoff = BACKOFF_S[0]
                    self._ws = ws
                    self.record.llm_events.append(("reset", "", ""))
                    await self._session(ws)
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                pass
            finally:
                if self._ready.is_set():
                    self.record.disconnects += 1
                self._ws = None
                self._ready.clear()
            if not stop.is_set():
                await asyncio.sleep(backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, BACKOFF_S[1])

    # -- inside ----------------------------------------------------------------------------------------

    def _url(self) -> str:
        query = {"sid": self.record.room, "role": self.record.role}
        cursor = self._cursor or (self.record.start if self.record.joined else None)
        if self.record.joined:
            query["last_id"] = cursor or "0"
            if self._epoch:
                query["epoch"] = self._epoch
        return f"{self._pick_node()}/v1/session/chat?{urlencode(query)}"

    async def _send(self, event: str, bd: dict[str, Any]) -> None:
        self._sequence += 1
        cid = f"{self.record.role}-{self._sequence}"
        self._outbox[cid] = orjson.dumps({"hd": {"event": event, "cid": cid}, "bd": bd})
        await self._transmit(cid)

    async def _transmit(self, cid: str) -> None:
        frame = self._outbox.get(cid)
        ws = self._ws
        if frame is None or ws is None or not self._ready.is_set():
            return  # sent after the next session.ready
        self.record.sent[cid] += 1
        self.record.first_sent_s.setdefault(cid, asyncio.get_running_loop().time() - self._began)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame.decode())

    async def _session(self, ws: ClientConnection) -> None:
        async for text in ws:
            frame = orjson.loads(text)
            hd, bd = frame["hd"], frame.get("bd", {})
            event = hd.get("event")
            if event == "session.ready":
                await self._on_ready(bd)
            elif event in STORED_EVENTS and "id" in hd:
                self._on_stored(hd)
            elif event == "error":
                self._on_error(bd)
            elif event == "llm.streaming":
                self._streaming.set()
                self.record.llm_events.append(("delta", hd["rid"], hd["reply_to"]))

    async def _on_ready(self, bd: dict[str, Any]) -> None:
        self.record.connects += 1
        if not self.record.joined:
            self.record.joined, self.record.start = True, bd.get("last_id")
        elif bd.get("recovered") is False:
            self.record.not_recovered += 1
        self._epoch = bd.get("epoch") or self._epoch
        self._ready.set()
        for cid in list(self._outbox):
            await self._transmit(cid)

    def _on_stored(self, hd: dict[str, Any]) -> None:
        got = stored_of(hd)
        self.record.received.append(got)
        if self._newest is None or id_key(got.id) > id_key(self._newest):
            self._newest = got.id
        own = got.role == self.record.role and got.cid is not None and got.cid in self.record.sent
        if own and got.cid is not None:
            self.record.acked.setdefault(got.cid, got.id)
            self._outbox.pop(got.cid, None)
        echo = own and got.cid is not None and self.record.sent[got.cid] > 1  # a resend's: maybe out of order
        if not echo and (self._cursor is None or id_key(got.id) > id_key(self._cursor)):
            self._cursor = got.id
        if got.event in ("llm.response", "llm.error") and got.rid is not None and got.reply_to is not None:
            self.record.llm_events.append(("end", got.rid, got.reply_to))

    def _on_error(self, bd: dict[str, Any]) -> None:
        code, cid = bd.get("code", ""), bd.get("cid")
        self.record.errors[code] += 1
        if cid is not None and code == "busy":  # (with LLM_TURNS=queue it comes after the question is stored)
            self.record.refused_busy.add(cid)
        if cid is None or cid not in self._outbox:
            return
        if code == "busy":
            del self._outbox[cid]
        elif code == "unavailable":
            asyncio.get_running_loop().call_later(RESEND_AFTER_S, self._resend_soon, cid)

    def _resend_soon(self, cid: str) -> None:
        if cid in self._outbox:
            task = asyncio.get_running_loop().create_task(self._transmit(cid))
            task.add_done_callback(lambda t: t.exception())
