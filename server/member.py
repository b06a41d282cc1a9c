"""A member: one WebSocket connection in one room, and its outbound side.

Theory of operation. Fan-out never awaits a client: :meth:`Member.push` appends a ready-made
text frame to the member's bounded queue and returns at once. What is queued during one pass of
the event loop is written at the end of it, all in one go: directly to the connection's transport
when the server allows it (:mod:`server.outlet`), else by the member's writer task through the
ASGI ``send`` callable. When the client reads slowly (its transport stops taking bytes), a writer
task waits for that member alone. A member whose queue passes ``queue_max`` frames is a slow
consumer: its queue is dropped and the connection is closed with 1013 and reason ``slow
consumer``, so it can resume from its last stream id instead of holding memory for everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from protocol.close import NORMAL, SLOW_CONSUMER
from server.outlet import DirectOutlet, Gone, outlet_for

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

WS_1000_NORMAL = NORMAL.code  # the close codes and reasons are protocol.close's table
CLOSE_TIMEOUT_S = 5.0


class Member:
    __slots__ = ("_closing", "_drained", "_flush_due", "_held", "_idle", "_loop", "_outlet", "_queue", "_queue_max",
                 "_send", "_writer", "conn", "inflight", "role", "room")

    def __init__(self, send: Send, room: str, role: str | None, queue_max: int) -> None:
        self._send = send
        self.room = room
        self.role = role  # the role the connection is bound to (?role=A), if any
        self.conn = secrets.token_hex(4)  # the connection's id in the room's roster
        self._queue: deque[str] = deque()
        self._held: deque[str] | None = None
        self._drained: asyncio.Event | None = None  # made while a history replay waits for the queue
        self._queue_max = queue_max
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self._outlet: DirectOutlet | None = None
        self._flush_due = False  # a flush is scheduled for the end of this loop pass
        self._idle: asyncio.Event | None = None  # wakes the writer task that sends through ASGI
        self._writer: asyncio.Task[None] | None = None
        self._closing: tuple[int, str] | None = None
        self.inflight = 0  # this member's appends not yet answered by Redis

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def start(self) -> None:
        """Start writing; call once the WebSocket is accepted."""
        self._loop = asyncio.get_running_loop()
        self._outlet = outlet_for(self._send)
        if self._outlet is None or self._closing is not None:
            self._start_writer()
        elif self._queue:
            self._wake()

    def push(self, frame: str) -> None:
        """Queue one text frame for this member. Never blocks."""
        if self._closing is not None:
            return
        queue = self._queue if self._held is None else self._held
        if len(queue) >= self._queue_max:
            log.warning("room %s: slow consumer disconnected (%d frames queued)", self.room, len(queue))
            self._queue.clear()
            self._held = None
            self.close(SLOW_CONSUMER.code, SLOW_CONSUMER.reason)
            return
        queue.append(frame)
        if self._held is None:
            self._wake()

    def hold(self) -> None:
        """Set live frames aside until :meth:`release`."""
        self._held = deque()

    async def push_history(self, frames: list[str]) -> None:
        """Queue frames ahead of the held ones; waits while the queue is more than half full."""
        while self._closing is None and len(self._queue) > self._queue_max // 2:
            self._drained = asyncio.Event()
            await self._drained.wait()
        if self._closing is None:
            self._queue.extend(frames)
            self._wake()

    def release(self) -> None:
        """Queue the frames held since :meth:`hold`, after everything queued so far."""
        held, self._held = self._held, None
        if held and self._closing is None:
            self._queue.extend(held)
            self._wake()

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued (none, for a slow consumer) have been sent."""
        if self._closing is None:
            self._closing = (code, reason)
            if self._writer is None and self._loop is not None:
                self._start_writer()
            self._wake()
            if self._drained is not None:
                self._drained.set()

    async def wait_closed(self) -> None:
        if self._writer is not None:
            writer = self._writer
            await asyncio.wait([writer], timeout=CLOSE_TIMEOUT_S)
            writer.cancel()

    def _wake(self) -> None:
        if self._writer is not None:
            if self._idle is not None:
                self._idle.set()
        elif self._outlet is not None and not self._flush_due:
            assert self._loop is not None
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write everything queued straight to the transport (the direct outlet's path)."""
        self._flush_due = False
        queue, outlet = self._queue, self._outlet
        if self._writer is not None or not queue or outlet is None:
            return
        try:
            if not outlet.write(queue):
                self._start_writer()  # the client reads slowly: wait for it in a task of its own
                return
        except Gone:
            pass  # the receive loop sees the disconnect and ends the session
        except Exception:
            log.exception("room %s: write failed", self.room)
        queue.clear()
        if self._drained is not None:
            self._drained.set()

    def _start_writer(self) -> None:
        assert self._loop is not None
        self._writer = self._loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        queue, send, outlet = self._queue, self._send, self._outlet
        try:
            while True:
                if outlet is None:
                    while queue:
                        await send({"type": "websocket.send", "text": queue.popleft()})
                else:
                    while queue:
                        await outlet.writable()
                        if outlet.write(queue):
                            queue.clear()
                if self._drained is not None:
                    self._drained.set()
                if self._closing is not None:
                    code, reason = self._closing
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
                if outlet is not None:
                    self._writer = None  # writable again: back to direct writes
                    return
                if self._idle is None:
                    self._idle = asyncio.Event()
                self._idle.clear()
                await self._idle.wait()
        except (OSError, RuntimeError, Gone) as exc:  # the client went away mid-send
            log.debug("room %s: writer stopped: %r", self.room, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("room %s: writer failed", self.room)
