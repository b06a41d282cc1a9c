"""A member: one WebSocket connection in one room, and its outbound side.

Theory of operation. Fan-out never awaits a client: :meth:`Member.push` appends a ready-made
text frame to the member's bounded queue and returns at once. Each member has one writer task
that drains its queue into the ASGI ``send`` callable; when the client reads slowly, only its
own writer waits. A member whose queue passes ``queue_max`` frames is a slow consumer: its queue
is dropped and the connection is closed with 1013 and reason ``slow consumer``, so it can resume
from its last stream id instead of holding memory for everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

WS_1000_NORMAL = 1000
WS_1008_POLICY_VIOLATION = 1008
WS_1011_INTERNAL_ERROR = 1011
WS_1013_TRY_AGAIN_LATER = 1013
CLOSE_TIMEOUT_S = 5.0


class Member:
    __slots__ = ("_closing", "_drained", "_held", "_idle", "_queue", "_queue_max", "_send", "_writer", "conn",
                 "inflight", "role", "room")

    def __init__(self, send: Send, room: str, role: str | None, queue_max: int) -> None:
        self._send = send
        self.room = room
        self.role = role  # the role the connection is bound to (?role=A), if any
        self.conn = secrets.token_hex(4)  # the connection's id in the room's roster
        self._queue: deque[str] = deque()
        self._held: deque[str] | None = None
        self._drained: asyncio.Event | None = None  # made while a history replay waits for the queue
        self._queue_max = queue_max
        self._idle = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing: tuple[int, str] | None = None
        self.inflight = 0  # this member's appends not yet answered by Redis

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def start(self) -> None:
        """Start the writer; call once the WebSocket is accepted."""
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def push(self, frame: str) -> None:
        """Queue one text frame for this member. Never blocks."""
        if self._closing is not None:
            return
        queue = self._queue if self._held is None else self._held
        if len(queue) >= self._queue_max:
            log.warning("room %s: slow consumer disconnected (%d frames queued)", self.room, len(queue))
            self._queue.clear()
            self._held = None
            self.close(WS_1013_TRY_AGAIN_LATER, "slow consumer")
            return
        queue.append(frame)
        self._idle.set()

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
            self._idle.set()

    def release(self) -> None:
        """Queue the frames held since :meth:`hold`, after everything queued so far."""
        held, self._held = self._held, None
        if held and self._closing is None:
            self._queue.extend(held)
            self._idle.set()

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued (none, for a slow consumer) have been sent."""
        if self._closing is None:
            self._closing = (code, reason)
            self._idle.set()
            if self._drained is not None:
                self._drained.set()

    async def wait_closed(self) -> None:
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=CLOSE_TIMEOUT_S)
            self._writer.cancel()

    async def _write_loop(self) -> None:
        queue, send = self._queue, self._send
        try:
            while True:
                while queue:
                    await send({"type": "websocket.send", "text": queue.popleft()})
                if self._drained is not None:
                    self._drained.set()
                if self._closing is not None:
                    code, reason = self._closing
                    await send({"type": "websocket.close", "code": code, "reason": reason})
                    return
                self._idle.clear()
                await self._idle.wait()
        except (OSError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("room %s: writer stopped: %r", self.room, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("room %s: writer failed", self.room)
