"""Frames that are broadcast but not stored: presence changes and generation deltas.

A frame goes to the room's members on this process through the room feed (which holds it until
the entry it follows has been delivered here) and to the room's other nodes over their channels,
in one round trip per batch: the frames sent during one event-loop pass travel together, in
order. :meth:`Ephemeral.send` returns once the other nodes have been told, so a caller that then
appends an entry (a generation's final answer) knows every node hears the frames first.

A process that follows no room (a separate LLM worker) has no feed: it only tells the nodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from server.batching import Batcher
from server.feed import RoomFeed
from server.store.ports import NodeBus, StoreRefused, StoreUnavailable

log = logging.getLogger(__name__)

class Ephemeral:
    def __init__(self, bus: NodeBus, node_id: str, feed: RoomFeed | None) -> None:
        self._bus = bus
        self._node = node_id if feed is not None else ""
        self._feed = feed
        self._batches: Batcher[tuple[str, bytes]] = Batcher(self._publish)  # (room, b"<after id> <frame>")

    @property
    def node(self) -> str:
        """The id this process's frames are sent from ("" for a process that follows no room)."""
        return self._node

    def local(self, room: str, after: bytes, frame: str) -> None:
        """Hand ``frame`` to this process's members of ``room`` only (the other nodes were told by a step
        of its own: a generation's fenced frames)."""
        if self._feed is not None:
            self._feed.frame(room, after, frame, None)

    async def send(self, room: str, after: bytes, frame: str, skip: object = None) -> None:
        """Broadcast ``frame`` to ``room`` (except the member ``skip`` on this process) once the
        entries up to ``after`` are delivered. Raises when Redis is unreachable."""
        await self.post(room, after, frame, skip)

    def post(self, room: str, after: bytes, frame: str, skip: object = None) -> asyncio.Future[None]:
        """:meth:`send` without waiting: the future is done once the other nodes have been told
        (futures are done in the order they were posted; frames posted in one batch share one)."""
        if self._feed is not None:
            self._feed.frame(room, after, frame, skip)
        return self._batches.post((room, after + b" " + frame.encode()))

    async def _publish(self, batch: list[tuple[str, bytes]]) -> None:
        by_room: dict[str, list[bytes]] = defaultdict(list)
        for room, message in batch:
            by_room[room].append(message)
        try:
            await self._bus.publish(by_room, self._node)
        except (StoreUnavailable, StoreRefused, asyncio.CancelledError):
            raise  # the caller is told
        except Exception:
            log.exception("ephemeral frames for %d rooms not sent", len(by_room))
            raise
