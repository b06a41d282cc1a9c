"""What the unit tests of the relay core share: a sleep the test wakes, a recording feed sink, real
members on a recording outlet, nodes (a feed on the fake store) and a clean-up of the tasks a test
leaves behind. No sockets, no Redis: the store is :mod:`tests.unit.fakes`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import orjson

from server.feed import CursorState, Restorer, RoomFeed, Sink
from server.member import Member
from server.outlet import DirectOutlet
from server.store.ports import NewEntry, Retention
from server.supervise import Supervisor
from tests.unit.fakes import FakeStore

QUEUE_MAX = 1000


class FakeSleep:
    """An injected ``asyncio.sleep``: each call is recorded and waits until the test wakes it."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        sleeper = (seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        try:
            await sleeper[1]
        finally:
            self._sleepers.remove(sleeper)

    def sleeping(self) -> list[float]:
        """The durations of the sleeps waiting now."""
        return [seconds for seconds, _ in self._sleepers]

    def wake(self, seconds: float | None = None) -> int:
        """End the waiting sleeps (of ``seconds`` only, when given); how many were woken."""
        woken = 0
        for slept, future in list(self._sleepers):
            if (seconds is None or slept == seconds) and not future.done():
                future.set_result(None)
                woken += 1
        return woken


class RecordingSink:
    """The feed's sink: what was delivered, in order: entry ids and frame texts, per room."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, str]] = []  # (room, entry id or frame)
        self.skips: list[object] = []  # the skip of each frame, in order
        self.calls: list[list[str]] = []  # the entry ids of each deliver() call
        self.states: list[CursorState | None] = []  # the cursor's state at each delivery (with ``feed``)
        self.feed: RoomFeed | None = None

    def deliver(self, room: str, items: list[tuple[bytes, bytes]]) -> None:
        self.calls.append([entry_id.decode() for entry_id, _ in items])
        for entry_id, _ in items:
            self.delivered.append((room, entry_id.decode()))
            self._state(room)

    def deliver_frame(self, room: str, frame: str, skip: object) -> None:
        self.delivered.append((room, frame))
        self.skips.append(skip)
        self._state(room)

    def _state(self, room: str) -> None:
        if self.feed is not None:
            self.states.append(self.feed.state(room))

    def seen(self, room: str = "r") -> list[str]:
        return [what for delivered_room, what in self.delivered if delivered_room == room]


class RecordingRestorer:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def restore(self, rooms: Sequence[str]) -> None:
        self.calls.append(list(rooms))


class Node:
    """One relay node's feed on a (shared) fake store, with a recording sink and a fake sleep."""

    def __init__(self, store: FakeStore, node_id: str = "n1", node_ttl_s: int = 30, sink: Sink | None = None,
                 restorer: Restorer | None = None) -> None:
        self.store = store
        self.id = node_id
        self.sink = RecordingSink()
        self.restorer = RecordingRestorer()
        self.sleep = FakeSleep()
        self.supervisor = Supervisor(self.sleep)  # its backoffs wait on the same fake sleep
        self.feed = RoomFeed(store.log, store.bus, sink or self.sink, restorer or self.restorer, node_id, node_ttl_s,
                             sleep=self.sleep, supervisor=self.supervisor)
        self.sink.feed = self.feed
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run the feed's loop until it listens (subscribed, beaten, ready)."""
        self.task = asyncio.get_running_loop().create_task(self.feed.run())
        await until(lambda: self.feed._ready.is_set())

    def announce(self, room: str, entry_id: bytes) -> None:
        """Another node's announcement of ``entry_id`` reaches this node's channel."""
        self.store.bus.send(self.id, room.encode() + b" " + entry_id)

    @property
    def channel(self) -> Any:
        return self.store.bus.channels[self.id][-1]


async def started_node(store: FakeStore | None = None, node_id: str = "n1", rooms: Iterable[str] = ("r",),
                       node_ttl_s: int = 30) -> Node:
    node = Node(store or FakeStore(), node_id, node_ttl_s)
    await node.start()
    for room in rooms:
        await node.feed.follow(room)
    return node


async def other_node_appends(store: FakeStore, room: str, *bodies: bytes, node: str = "n2") -> list[bytes]:
    """Another node appends ``bodies`` in one batch (announced to the room's other followers)."""
    result = await store.log.append_batch([NewEntry(room, "B", body) for body in bodies], Retention(), node)
    return [entry_id for entry_id in result.ids if isinstance(entry_id, bytes)]


async def passes(count: int = 10) -> None:
    """Let the loop run ``count`` passes (ready tasks advance one step each)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], most: int = 200) -> None:
    """Run loop passes until ``predicate`` holds (fails the test after ``most`` of them)."""
    for _ in range(most):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition was not reached")


@contextlib.asynccontextmanager
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Cancel the tasks a test started and left running (feed loops, readers, flushers)."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() - before if task is not current and not task.done()]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


# -- members -----------------------------------------------------------------------------------

class RecordingOutlet(DirectOutlet):
    """A transport that takes every write and records the frames."""

    def __init__(self) -> None:  # no uvicorn protocol behind it
        self.frames: list[str] = []

    def write(self, frames: Iterable[str]) -> bool:
        self.frames.extend(str(frame) for frame in frames)  # a delta is a str subclass, which orjson does not read
        return True

    async def writable(self) -> None:
        return None

    def events(self) -> list[str]:
        return [orjson.loads(frame)["hd"]["event"] for frame in self.frames]

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(frame) for frame in self.frames]


async def noop_send(message: dict[str, Any]) -> None:
    return None


def member(room: str = "r", role: str | None = None, queue_max: int = QUEUE_MAX,
           start: bool = True) -> tuple[Member, RecordingOutlet]:
    """A real member whose frames are written, at the end of each loop pass, to a recording outlet."""
    outlet = RecordingOutlet()
    made = Member(noop_send, room, role, queue_max, outlet_for=lambda _send: outlet)
    if start:
        made.start()
    return made, outlet


def body(text: str, event: str = "chat.message", role: str = "A") -> bytes:
    """A stored entry's body, as the dispatcher writes it."""
    return orjson.dumps({"hd": {"event": event, "role": role, "sid": "r", "ts": "2025-01-01T00:00:00.000Z"},
                         "bd": {"text": text}})
