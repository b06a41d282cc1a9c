"""A room of the relay, as one object: send exactly once, read every frame once, ask the bot.

Theory of operation. :func:`connect` opens the first connection and waits for its ``session.ready``;
then one task (the *pump*) owns the connection: it reads every frame, hands each to
:class:`~client.state.RoomState` (which drops what was seen already and holds a resume's replay
until its ``session.ready``), settles the operations waiting for it (a send waits for its broadcast,
a cancel for the generation's end, either for its refusal) and queues the rest for the reader.
When the connection drops for a reason worth a reconnect (anything but the closes
:mod:`protocol.close` marks "reconnect: no"), the pump reconnects with ``last_id`` and ``epoch``,
retrying with backoff while the server is away, and once the new ``session.ready`` has arrived it
sends again, with the same ``cid``, every message not yet seen stored: the server never stores one
``cid`` twice, so each message is stored exactly once.

Senders never read the socket: any number of them may run at once, with one reader iterating the
room. The frames are kept for the reader from :func:`connect` on, until read.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from client.answer import Answer
from client.errors import RelayError
from client.state import Frame, RoomState, event_of, stored_id
from protocol.close import CLOSES, Reconnect
from protocol.names import Event, is_valid_room

log = logging.getLogger("client")

PATH = "/v1/session/chat"
FIRST_DELAY_S = 0.05  # the first pause before reconnecting or re-sending; doubles up to MAX_DELAY_S
MAX_DELAY_S = 2.0
OPEN_TIMEOUT_S = 10.0
RETRIED_CODES = frozenset({"rate_limited", "unavailable"})  # not stored: sent again, same cid, after a pause
FINAL_CLOSES = frozenset(close.code for close in CLOSES if close.reconnect is Reconnect.NO)
TERMINAL_EVENTS = (Event.LLM_RESPONSE, Event.LLM_ERROR)
RETRIED_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})
TOKEN_EXPIRED = 4001

Token = str | Callable[[], str | Awaitable[str]]  # a room token, or a function giving one for each connection


def _new_cid() -> str:
    return "c-" + secrets.token_hex(8)


@dataclass(eq=False)
class _Pending:
    """A frame sent until its outcome arrives: ``settles`` picks the frame that is its result."""

    cid: str
    text: str
    settles: Callable[[Frame], bool]
    by_cid: bool  # settled by a frame carrying its cid (its broadcast); else looked for in every frame
    ignored_codes: frozenset[str]  # refusals that are not its outcome (a stored mention's ``busy``)
    future: asyncio.Future[Frame]
    sent_on: int = -1  # the connection it was last sent on
    sends: int = 0  # how many times it was sent
    refusals: int = 0  # how many times it was refused for a reason worth another try


class Room:
    """A connection to one room that survives the server going away. Use :func:`connect`."""

    def __init__(self, url: str, sid: str, *, role: str | None, token: Token | None,
                 last_id: str | None, epoch: str | None) -> None:
        if not is_valid_room(sid):
            raise ValueError(f"invalid room id {sid!r}: 1 to 64 characters among A-Z a-z 0-9 _ -")
        self.url, self.sid, self._role, self._token = url.rstrip("/"), sid, role, token
        self._state = RoomState(last_id=last_id, epoch=epoch if last_id is not None else None)
        self._pending: dict[str, _Pending] = {}
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._listeners: set[asyncio.Queue[Frame | None]] = set()  # None: the room ended
        self._ws: ClientConnection | None = None
        self._connection = 0  # how many connections reached session.ready
        self._ready = False
        self._pump_task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self._ended: RelayError | None = None

    # -- what the caller sees ---------------------------------------------------------------------

    @property
    def last_id(self) -> str | None:
        """The id of the newest stored message received: where a resume starts."""
        return self._state.last_id

    @property
    def epoch(self) -> str | None:
        return self._state.epoch

    @property
    def members(self) -> list[dict[str, Any]]:
        """The connections present in the room (``{"role", "conn"}``), this one included."""
        return [dict(member) for member in self._state.members]

    @property
    def generations(self) -> list[dict[str, Any]]:
        """The bot's answers under way in the room, ``[{"rid", "reply_to", "state", "position"}]``:
        ``session.ready``'s ``generations``, kept up to date by the bot's frames (``state`` ``running``
        at ``position`` 0, or ``queued``)."""
        return [dict(generation) for generation in self._state.generations]

    @property
    def answers(self) -> dict[str, Answer]:
        """The text so far of each running answer, by ``rid``: on joining (or resuming) mid-answer it
        starts from the answer's ``llm.snapshot``, then grows with its deltas; an answer leaves it when
        it ends (its ``llm.response`` has the whole text). Read it when a frame of the bot's arrives."""
        return dict(self._state.answers)

    @property
    def conn(self) -> str | None:
        """This connection's id in the room (``session.ready``'s ``hd.conn``; it changes on reconnect)."""
        return self._state.conn

    @property
    def role(self) -> str:
        """The role the server bound the connection to (``user`` when none)."""
        return self._state.role

    async def send(self, text: str, **extra_bd: Any) -> Frame:
        """Say ``text`` (with ``extra_bd`` in the body); return the stored envelope (``hd.id`` set) once
        its broadcast has come back. Raises :class:`RelayError` when the relay refuses it."""
        return await self._submit(Event.CHAT_MESSAGE, {"text": text, **extra_bd}, ignored_codes=frozenset({"busy"}))

    async def ask(self, prompt: str | None = None) -> Frame:
        """Ask the bot (``llm.invoke``; without ``prompt`` it answers the conversation so far) and return
        its stored ``llm.response``; :class:`RelayError` on ``busy`` or on the answer's ``llm.error``."""
        async with self._listening() as frames:
            question = await self._invoke(prompt)
            async for frame in self._answer_frames(frames, question):
                if event_of(frame) in TERMINAL_EVENTS:
                    return _outcome(frame)
        raise AssertionError("unreachable: an answer's frames end with its terminal frame")  # pragma: no cover

    async def ask_stream(self, prompt: str | None = None) -> AsyncIterator[str]:
        """As :meth:`ask`, yielding the answer's whole text so far each time it grows (deltas merged by
        ``seq``, snapshots applied); when the generation starts over (``hd.attempt``), the text starts
        over too. The last item is the stored answer's text."""
        async with self._listening() as frames:
            question = await self._invoke(prompt)
            answer = Answer()
            async for frame in self._answer_frames(frames, question):
                if event_of(frame) == Event.LLM_ERROR:
                    _outcome(frame)
                if answer.apply(frame):
                    yield answer.text
                if event_of(frame) in TERMINAL_EVENTS:
                    return

    async def cancel(self, rid: str) -> Frame:
        """Stop generation ``rid``; return the frame that ended it (its ``llm.response`` or ``llm.error``).
        :class:`RelayError` ``unknown_generation`` when it is not running."""
        def ends(frame: Frame) -> bool:
            return event_of(frame) in TERMINAL_EVENTS and frame["hd"].get("rid") == rid

        return await self._submit(Event.LLM_CANCEL, {"rid": rid}, settles=ends)

    async def regenerate(self, rid: str) -> Frame:
        """Ask again the question that the stored answer ``rid`` answered (``llm.regenerate``); return the
        new answer's stored ``llm.response`` (a new ``rid``, ``hd.regenerates`` = ``rid``).
        :class:`RelayError` ``unknown_generation`` (``rid`` is unknown or still running), ``busy``,
        ``quota_exceeded``, or the new answer's ``llm.error`` code."""
        def began(frame: Frame) -> bool:
            return frame["hd"].get("regenerates") == rid and str(event_of(frame)).startswith("llm.")

        async with self._listening() as frames:
            first = await self._submit(Event.LLM_REGENERATE, {"rid": rid}, settles=began)
            new_rid = first["hd"].get("rid")
            while event_of(first) not in TERMINAL_EVENTS or first["hd"].get("rid") != new_rid:
                frame = await frames.get()
                if frame is None:
                    assert self._ended is not None
                    raise self._ended
                first = frame
            return _outcome(first)

    def __aiter__(self) -> Room:
        return self

    async def __anext__(self) -> Frame:
        """The next frame of the room, in order, each stored message once: ``session.ready`` (on each
        (re)connection, before its replay), messages, presence, the bot's frames, refusals nobody
        waits for. Iteration ends when the room is closed, and raises :class:`RelayError` when it ends
        otherwise. One reader at a time: two would share the frames."""
        frame = await self._frames.get()
        if frame is not None:
            return frame
        self._frames.put_nowait(None)  # the end, for the next call too
        if self._ended is not None and self._ended.close_code != 1000:
            raise self._ended
        raise StopAsyncIteration

    # -- operations ---------------------------------------------------------------------------------

    async def _invoke(self, prompt: str | None) -> Frame:
        return await self._submit(Event.LLM_INVOKE, {} if prompt is None else {"prompt": prompt})

    async def _submit(self, event: str, bd: dict[str, Any], *, settles: Callable[[Frame], bool] | None = None,
                      ignored_codes: frozenset[str] = frozenset()) -> Frame:
        if self._ended is not None:
            raise self._ended
        cid = _new_cid()
        text = orjson.dumps({"hd": {"event": event, "cid": cid}, "bd": bd}).decode()
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        pending = _Pending(cid, text, settles or self._broadcast_of(cid), settles is None, ignored_codes, future)
        self._pending[cid] = pending
        try:
            if self._ready:
                await self._write(pending)
            return await future
        finally:
            del self._pending[cid]

    def _broadcast_of(self, cid: str) -> Callable[[Frame], bool]:
        """Whether a frame is the stored broadcast of this connection's message ``cid``."""
        return lambda frame: (stored_id(frame) is not None and frame["hd"].get("cid") == cid
                              and frame["hd"].get("role") == self._state.role)

    async def _write(self, pending: _Pending) -> None:
        """Send ``pending`` on the current connection, once per connection (a lost one: sent again later)."""
        if self._ws is None or pending.sent_on == self._connection or pending.future.done():
            return
        pending.sent_on = self._connection
        pending.sends += 1
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(pending.text)

    def _retry_later(self, pending: _Pending) -> None:
        pending.sent_on = -1
        pending.refusals += 1

        async def later() -> None:
            await asyncio.sleep(retry_delay_s(pending.refusals))
            if self._ready:
                await self._write(pending)

        timer = asyncio.get_running_loop().create_task(later())
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    @contextlib.asynccontextmanager
    async def _listening(self) -> AsyncIterator[asyncio.Queue[Frame | None]]:
        """Every frame delivered while the block runs (besides the reader's queue); None when the room ends."""
        frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._listeners.add(frames)
        try:
            yield frames
        finally:
            self._listeners.discard(frames)

    async def _answer_frames(self, frames: asyncio.Queue[Frame | None], question: Frame) -> AsyncIterator[Frame]:
        """The frames of the bot's answer to ``question`` (the stored ``llm.invoke``), up to its end."""
        question_id = stored_id(question)
        while True:
            frame = await frames.get()
            if frame is None:
                assert self._ended is not None
                raise self._ended
            if frame["hd"].get("reply_to") == question_id and str(event_of(frame)).startswith("llm."):
                yield frame
                if event_of(frame) in TERMINAL_EVENTS:
                    return

    # -- the pump -----------------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect and read up to ``session.ready`` (raises what the attempt raised)."""
        params = {"sid": self.sid, **({"role": self._role} if self._role else {}), **self._state.resume_params()}
        token = await self._credential()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await ws_connect(f"{self.url}{PATH}?{urlencode(params)}", additional_headers=headers,
                              open_timeout=OPEN_TIMEOUT_S, max_size=None, compression=None)
        self._state.connection_opened()
        try:
            while event_of(frame := _parse(await ws.recv())) != Event.SESSION_READY:
                self._state.hold(frame)  # the resume's replay
            self._ws, self._ready = ws, True
            self._connection += 1
            for delivered in self._state.ready(frame):
                self._deliver(delivered)
        except BaseException:
            await ws.close()
            raise

    async def _credential(self) -> str | None:
        if not callable(self._token):
            return self._token
        token = self._token()
        return await token if inspect.isawaitable(token) else token

    async def _resend(self) -> None:
        for pending in list(self._pending.values()):
            await self._write(pending)

    async def _pump(self) -> None:
        try:
            await self._run()
        except Exception as exc:  # a bug, or a frame that is not JSON: the room ends, it never hangs
            log.exception("room %s: the client failed", self.sid)
            self._end(RelayError("closed", f"the client failed: {exc!r}"))

    async def _run(self) -> None:
        failures = 0
        while True:
            assert self._ws is not None
            await self._resend()
            try:
                async for raw in self._ws:
                    self._receive(_parse(raw))
            except ConnectionClosed:
                pass
            close = self._ws.close_exc.rcvd if self._ws.close_exc else None
            self._ready = False
            if close is not None and close.code in FINAL_CLOSES:
                return self._end(RelayError("closed", f"the server closed the connection: {close.code} "
                                                      f"{close.reason}".strip(), close_code=close.code))
            if close is not None and close.code == TOKEN_EXPIRED and not callable(self._token):
                return self._end(RelayError("closed", "the token expired (4001): connect again with a new one, "
                                                      "or give connect() a function that returns one",
                                            close_code=close.code))
            log.info("room %s: connection lost (%s), reconnecting", self.sid, close.code if close else "no close")
            while True:
                await asyncio.sleep(retry_delay_s(failures))
                failures += 1
                try:
                    await self._open()
                    failures = 0
                    break
                except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                    refusal = refusal_of(exc)
                    if refusal is not None and not worth_retrying(exc):
                        return self._end(refusal)
                    log.debug("room %s: reconnect failed: %r", self.sid, exc)

    def _receive(self, frame: Frame) -> None:
        if event_of(frame) == Event.ERROR:
            cid = frame["bd"].get("cid")
            pending = self._pending.get(cid) if isinstance(cid, str) else None
            code = str(frame["bd"].get("code"))
            if pending is not None and code not in pending.ignored_codes and not pending.future.done():
                if worth_sending_again(code, pending.sends):
                    self._retry_later(pending)
                else:
                    pending.future.set_exception(RelayError(code, str(frame["bd"].get("message")), frame))
                return
        if not self._state.admit(frame):
            self._settle(frame)  # the original broadcast of a message sent again: its sender's answer
            return
        self._deliver(frame)

    def _deliver(self, frame: Frame) -> None:
        self._settle(frame)
        self._frames.put_nowait(frame)
        for listener in self._listeners:
            listener.put_nowait(frame)

    def _settle(self, frame: Frame) -> None:
        """Give ``frame`` to the operation it is the outcome of: the send whose cid it carries (a lookup,
        however many senders wait), or a cancel waiting for its generation's end."""
        cid = frame["hd"].get("cid")
        owner = self._pending.get(cid) if isinstance(cid, str) else None
        candidates = [owner] if owner is not None and owner.by_cid else []
        candidates += [pending for pending in self._pending.values() if not pending.by_cid]
        for pending in candidates:
            if not pending.future.done() and pending.settles(frame):
                pending.future.set_result(frame)

    def _end(self, error: RelayError) -> None:
        self._ended = error
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self._frames.put_nowait(None)
        for listener in self._listeners:
            listener.put_nowait(None)

    async def _start(self) -> None:
        try:
            await self._open()
        except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
            refusal = refusal_of(exc)
            if refusal is not None:
                raise refusal from None
            raise
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name=f"room {self.sid}")

    async def _stop(self) -> None:
        tasks = [task for task in (self._pump_task, *self._timers) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._ended is None:
            self._end(RelayError("closed", "the room was closed", close_code=1000))


@contextlib.asynccontextmanager
async def connect(url: str, sid: str, *, role: str | None = None, token: Token | None = None,
                  last_id: str | None = None, epoch: str | None = None) -> AsyncIterator[Room]:
    """The room ``sid`` on the relay at ``url`` (``ws://host:port``), joined as ``role`` (or with a room
    ``token``, sent as ``Authorization: Bearer``), resuming after ``last_id`` (of ``epoch``) if given.
    ``token`` may be a function (or coroutine function) returning one: it is called for each
    connection, so a connection closed because its token expired (4001) reconnects with a new one.

    Returns once the first ``session.ready`` has arrived; raises :class:`RelayError` when the handshake
    is refused (its code), ``OSError`` when the server cannot be reached. Then the room reconnects by
    itself until the block ends."""
    room = Room(url, sid, role=role, token=token, last_id=last_id, epoch=epoch)
    await room._start()
    try:
        yield room
    finally:
        await room._stop()


def _outcome(frame: Frame) -> Frame:
    """An answer's terminal frame: its ``llm.response``, or :class:`RelayError` for its ``llm.error``."""
    if event_of(frame) == Event.LLM_ERROR:
        raise RelayError(str(frame["bd"].get("code")), str(frame["bd"].get("message")), frame)
    return frame


def _parse(raw: str | bytes) -> Frame:
    frame = orjson.loads(raw)
    if not isinstance(frame, dict) or not isinstance(frame.get("hd"), dict):
        return {"hd": {}, "bd": frame}
    frame.setdefault("bd", {})
    return frame


def worth_sending_again(code: str, sends: int) -> bool:
    """Whether a refusal with ``code`` of a frame sent ``sends`` times is answered by sending it again
    later: "send it again" (``rate_limited``, ``unavailable``), and ``busy`` for a frame sent again after
    a reconnect (an ``llm.regenerate`` whose first sending is the answer that keeps the bot busy: its
    frames settle it meanwhile)."""
    return code in RETRIED_CODES or (code == "busy" and sends > 1)


def worth_retrying(exc: BaseException) -> bool:
    """Whether a failed connection attempt may succeed later: the server is away, busy or full."""
    return not isinstance(exc, InvalidStatus) or exc.response.status_code in RETRIED_HTTP_STATUSES


def refusal_of(exc: BaseException) -> RelayError | None:
    """The relay's refusal of a handshake (its code and message), if ``exc`` is one."""
    if not isinstance(exc, InvalidStatus):
        return None
    try:
        error = orjson.loads(exc.response.body or b"{}")["error"]
        return RelayError(str(error["code"]), str(error["message"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return RelayError("refused", f"the server refused the connection: HTTP {exc.response.status_code}")


def retry_delay_s(failures: int) -> float:
    """The pause before retry ``failures`` (0, 1, ...): doubling from FIRST_DELAY_S to MAX_DELAY_S, jittered."""
    return min(MAX_DELAY_S, FIRST_DELAY_S * 2.0 ** min(failures, 10)) * random.uniform(0.5, 1.0)
