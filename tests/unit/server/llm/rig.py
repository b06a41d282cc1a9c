"""A worker, a front and everything around them on the in-memory fakes: no socket, no Redis.

- :class:`FakeProvider` plays scripted answers: each ``stream()`` call takes the next script, a list of
  steps yielded in order (a ``str`` delta, an :class:`Outcome`), raised (a :class:`ProviderError`) or
  waited for (an :class:`asyncio.Event`: the test decides when the model goes on).
- :func:`instant`: a ``sleep`` for tests where the worker retries (its final write).
- :class:`Rig` builds the real :class:`Appender` and :class:`Ephemeral` (no feed: a separate worker
  process) on a :class:`FakeStore`; a node ``n2`` follows every room, so ``store.bus.published`` holds,
  in order, what every other node hears: the frames and the announcements of appended entries.
- :func:`settle` runs loop passes (``sleep(0)``, no timed sleep) until a condition holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from protocol.codec import stored_body
from protocol.names import LLM_ROLE
from server.appender import Appender
from server.ephemeral import Ephemeral
from server.llm.provider import ChatMessage, Event, Outcome, ProviderError
from server.llm.quota import CostGuard
from server.llm.worker import Generation, Worker
from server.settings import LLMSettings
from server.store.ports import NodeBus, Request, Retention
from tests.unit.fakes import FakeBus, FakeStore, FakeSubscription

Step = str | Outcome | ProviderError | asyncio.Event
DEFAULT_ANSWER: list[Step] = ["Hello", " there", Outcome("stop", "fake-1", None)]
OTHER_NODE = "n2"  # follows every room the rig uses: hears what other nodes hear


class FakeProvider:
    """Scripted answers, one per ``stream()`` call (:data:`DEFAULT_ANSWER` when none is left)."""

    def __init__(self) -> None:
        self.scripts: deque[list[Step]] = deque()
        self.asked: list[list[ChatMessage]] = []  # the messages of every stream() call
        self.ended: list[str] = []  # how each stream ended: "done", "raised", "stopped" (closed or cancelled)
        self.closed = False

    def script(self, *steps: Step) -> None:
        self.scripts.append(list(steps))

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[Event, None]:
        self.asked.append(list(messages))
        return self._play(self.scripts.popleft() if self.scripts else list(DEFAULT_ANSWER))

    async def _play(self, steps: list[Step]) -> AsyncGenerator[Event, None]:
        try:
            for step in steps:
                if isinstance(step, asyncio.Event):
                    await step.wait()
                elif isinstance(step, ProviderError):
                    raise step
                else:
                    yield step
        except ProviderError:
            self.ended.append("raised")
            raise
        except (GeneratorExit, asyncio.CancelledError):
            self.ended.append("stopped")
            raise
        self.ended.append("done")

    async def aclose(self) -> None:
        self.closed = True


class GatedBus:
    """The node bus, whose publishes wait at ``gate`` while it is set to an unset event (a slow Redis)."""

    def __init__(self, bus: FakeBus) -> None:
        self.bus = bus
        self.gate: asyncio.Event | None = None

    async def follow(self, rooms: Sequence[str], node: str, ttl_s: int) -> list[str]:
        return await self.bus.follow(rooms, node, ttl_s)

    async def unfollow(self, rooms: Sequence[str], node: str) -> None:
        await self.bus.unfollow(rooms, node)

    async def publish(self, messages: Mapping[str, Sequence[bytes]], node: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await self.bus.publish(messages, node)

    def subscription(self, node: str) -> FakeSubscription:
        return self.bus.subscription(node)


class Ticks:
    """An injected ``sleep``: each call records its duration and waits until the test calls :meth:`tick`."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._ticks: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._ticks.get()

    def tick(self) -> None:
        self._ticks.put_nowait(None)


async def instant(seconds: float) -> None:
    """An injected ``sleep`` that only yields: retries and backoffs go on at once."""
    await asyncio.sleep(0)


async def settle(done: Callable[[], bool], passes: int = 200) -> None:
    """Run loop passes until ``done()`` (fails after ``passes``: something is stuck)."""
    for _ in range(passes):
        if done():
            return
        await asyncio.sleep(0)
    assert done(), "the condition did not come true"


def chat_body(room: str, text: str, role: str = "A", event: str = "chat.message") -> bytes:
    bd = {"prompt": text} if event == "llm.invoke" else {"text": text}
    return stored_body({"event": event, "role": role, "sid": room, "ts": "2025-01-01T00:00:00.000Z"}, bd)


@dataclass
class Heard:
    """What another node heard: a frame (``after`` the entry it follows) or an entry's announcement."""

    kind: str  # "frame" or "entry"
    id: str  # the frame's "after" id, or the entry's id
    frame: dict[str, Any] = field(default_factory=dict)

    @property
    def event(self) -> str:
        return str(self.frame["hd"]["event"]) if self.frame else "entry"


class Rig:
    """A worker (and the parts it needs) on fakes. Use as ``async with Rig() as rig``."""

    def __init__(self, concurrency: int = 10, settings: LLMSettings | None = None,
                 sleep: Callable[[float], Awaitable[object]] | None = None, guard: bool = False) -> None:
        self.store = FakeStore()
        self.guard = CostGuard(self.store.usage, (settings or LLMSettings()).budgets,
                               lambda: self.store.clock.now_ms / 1000) if guard else None
        self.queue = self.store.requests("default")
        self.bus = GatedBus(self.store.bus)
        self.appended: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = []
        self.appender = Appender(self.store.log, Retention(), "worker-node",
                                 lambda room, before, items: self.appended.append((room, before, items)))
        bus: NodeBus = self.bus
        self.ephemeral = Ephemeral(bus, "worker-node", None)
        self.provider = FakeProvider()
        self.settings = settings or LLMSettings(history_turns=10, system_prompt="Be brief.")
        self.worker = Worker("w1", self.store.locks, self.queue, self.store.log, self.appender, self.ephemeral,
                             self.provider, self.settings, concurrency, sleep or Ticks(), guard=self.guard)
        self._tasks: list[asyncio.Task[Any]] = []
        self._rids = 0

    async def __aenter__(self) -> Rig:
        self.spawn(self.appender.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in [*self._tasks, *self.worker._tasks]:
            task.cancel()
        for task in [*self._tasks, *self.worker._tasks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.append(task)
        return task

    async def ask(self, room: str = "r", text: str = "@llm hi", consumer: str = "w1", lock: bool = True) -> Request:
        """A question stored in ``room``, its lock taken and its request queued and read by ``consumer``."""
        await self.store.bus.follow([room], OTHER_NODE, 3600)
        reply_to = self.store.log.add(room, chat_body(room, text))
        request = await self.queue_request(room, reply_to.decode(), lock)
        [read] = await self.queue.read(consumer, 1, 0)
        assert read.rid == request.rid
        return read

    async def ask_about(self, entry_id: bytes, room: str = "r", consumer: str = "w1") -> Request:
        """A request answering the stored entry ``entry_id``, its lock taken, read by ``consumer``."""
        request = await self.queue_request(room, entry_id.decode())
        [read] = await self.queue.read(consumer, 1, 0)
        assert read.rid == request.rid
        return read

    async def queue_request(self, room: str, reply_to: str, lock: bool = True, regenerates: str = "") -> Request:
        self._rids += 1
        request = Request(room=room, rid=f"g-{self._rids}", reply_to=reply_to, asker="A", regenerates=regenerates)
        if lock:
            assert await self.store.locks.lock(room, request.rid, self.settings.queue_lease_ms)
        await self.queue.add(request)
        return request

    def start(self, request: Request) -> tuple[Generation, asyncio.Task[None]]:
        """Start serving ``request`` as the read loop would: its generation and its task."""
        before = set(self.worker._tasks)
        self.worker._start([request])
        [task] = set(self.worker._tasks) - before
        return self.worker._running[request.rid], task

    async def serve(self, request: Request) -> Generation:
        """Serve ``request`` to the end."""
        generation, task = self.start(request)
        await task
        return generation

    def heard(self, room: str = "r") -> list[Heard]:
        """What the other node heard from ``room``, in order."""
        heard = []
        for node, data in self.store.bus.published:
            if node != OTHER_NODE:
                continue
            sent_room, _, rest = data.partition(b" ")
            if sent_room.decode() != room:
                continue
            first, _, frame = rest.partition(b" ")
            heard.append(Heard("frame", first.decode(), orjson.loads(frame)) if frame
                         else Heard("entry", first.decode()))
        return heard

    def frames(self, room: str = "r") -> list[dict[str, Any]]:
        """What the members hear of the bot but its answers: its unstored frames (deltas), then its stored
        ``llm.error`` entries (a generation's last word)."""
        return ([heard.frame for heard in self.heard(room) if heard.kind == "frame"]
                + [body for _, body in self._bots(room) if body["hd"]["event"] == "llm.error"])

    def answers(self, room: str = "r") -> list[tuple[str, dict[str, Any]]]:
        """The bot's stored answers (``llm.response``) in ``room``: ``(id, body)``."""
        return [(entry_id, body) for entry_id, body in self._bots(room) if body["hd"]["event"] == "llm.response"]

    def _bots(self, room: str) -> list[tuple[str, dict[str, Any]]]:
        return [(entry_id.decode(), orjson.loads(fields[b"body"]))
                for entry_id, fields in self.store.log.streams.get(room, [])
                if fields[b"participant"] == LLM_ROLE.encode()]
