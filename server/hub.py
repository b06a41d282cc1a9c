"""Which members are in which room on this process, and fan-out to them.

- :class:`Fanout` holds the rooms' members and pushes frames to them: entries arrive from the room
  feed in stream order; each entry's frame is built once and the same text is pushed to every member
  of its room (the sender included). Unstored frames come ready-made; ``llm.streaming`` ones are
  pushed as deltas (:class:`~protocol.deltas.DeltaFrame`), which a backed-up member merges.
- :class:`Hub` is how members join and leave: joining the first member of a room makes the feed
  follow it; the last member leaving stops that.
"""

from __future__ import annotations

import asyncio
import logging

from protocol.codec import LLM_STREAMING_PREFIX, frame_with_id
from protocol.deltas import DeltaFrame
from server.feed import Item, RoomFeed
from server.member import Member
from server.metrics import COUNTS

log = logging.getLogger(__name__)


class Room:
    __slots__ = ("members", "name", "ready", "refs")

    def __init__(self, name: str, ready: asyncio.Task[None]) -> None:
        self.name = name
        self.members: set[Member] = set()
        self.ready = ready  # done once the feed follows the room
        self.refs = 0  # members joined or joining


class Fanout:
    """The rooms with members on this process (the room feed's sink)."""

    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}

    def members(self, room_name: str) -> list[Member]:
        room = self.rooms.get(room_name)
        return [] if room is None else list(room.members)

    def all_members(self) -> list[Member]:
        return [member for room in self.rooms.values() for member in room.members]

    def counts(self) -> tuple[int, int]:
        """(connections, rooms) on this process."""
        return sum(len(room.members) for room in self.rooms.values()), len(self.rooms)

    def backed_up(self) -> int:
        """How many members here have frames waiting for them to read."""
        return sum(member.backed_up for room in self.rooms.values() for member in room.members)

    def deliver(self, room_name: str, items: list[Item]) -> None:
        room = self.rooms.get(room_name)
        if room is None or not room.members:
            return
        members = tuple(room.members)
        for entry_id, body in items:
            try:
                frame = frame_with_id(body, entry_id.decode())
            except ValueError:
                log.warning("room %s: entry %s has a body that is not JSON; skipped", room_name, entry_id)
                continue
            for member in members:
                member.push(frame)
            COUNTS.delivered(body, len(members))

    def deliver_frame(self, room_name: str, frame: str, skip: object) -> None:
        room = self.rooms.get(room_name)
        if room is None:
            return
        members = [member for member in room.members if member is not skip]
        if frame.startswith(LLM_STREAMING_PREFIX):  # a delta: merged for a member that does not keep up
            delta = DeltaFrame(frame)
            for member in members:
                member.push_delta(delta)
        else:
            for member in members:
                member.push(frame)
        COUNTS.delivered(frame, len(members))


class Hub:
    def __init__(self, fanout: Fanout, feed: RoomFeed) -> None:
        self._rooms = fanout.rooms
        self._feed = feed

    async def join(self, member: Member) -> bytes:
        """Add ``member`` to its room; from then on it receives every new entry of the room.

        Returns the id of the last entry delivered in the room before the member joined: it
        receives every later one. Raises (and leaves the hub unchanged) when the room cannot be
        followed, e.g. when Redis is unreachable.
        """
        room = self._rooms.get(member.room)
        if room is None or _failed(room.ready):
            room = Room(member.room, asyncio.ensure_future(self._feed.follow(member.room)))
            self._rooms[member.room] = room
        room.refs += 1
        try:
            await asyncio.shield(room.ready)
        except BaseException:
            self._release(room)
            raise
        room.members.add(member)
        return self._feed.cursor(member.room) or b"0-0"

    def leave(self, member: Member) -> None:
        room = self._rooms.get(member.room)
        if room is not None and member in room.members:
            room.members.discard(member)
            self._release(room)

    def _release(self, room: Room) -> None:
        room.refs -= 1
        if room.refs == 0 and self._rooms.get(room.name) is room:
            del self._rooms[room.name]
            self._feed.unfollow(room.name)


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
