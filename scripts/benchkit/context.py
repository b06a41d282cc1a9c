"""What every mode runs against: the nodes, the probes, the stream reader and the client kind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from benchkit.procs import Node, Probe
from benchkit.streams import StreamReader
from benchkit.wsclient import Connect

T = TypeVar("T")

#: The setup the project's targets are defined for (README "Performance", docs/benchmarks.md).
TARGET_SETUP = "50 rooms x 3 members, 100-character texts, loopback, real Redis, 1 node"


@dataclass
class Context:
    nodes: list[Node]
    probe: Probe
    reader: StreamReader
    connect: Connect
    prefix: str  # room names start with it
    redis_url: str | None  # None: the embedded store (or unknown, for a server found by --url)
    connect_timeout_s: float = 30.0
    connect_concurrency: int = 100
    rooms_used: set[str] = field(default_factory=set)

    @property
    def store(self) -> str:
        return self.redis_url or "embedded"

    def room(self, suffix: int | str) -> str:
        """A room of this run; its keys are deleted at the end (unless --keep)."""
        name = f"{self.prefix}r{suffix}"
        self.rooms_used.add(name)
        return name

    def node_for(self, room_index: int, member: int, members: int) -> Node:
        """Members are dealt round-robin over the nodes, so a room's members span them."""
        return self.nodes[(room_index * members + member) % len(self.nodes)]


async def gather_limited(jobs: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Await ``jobs`` with at most ``limit`` at a time; on the first failure the rest are cancelled."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        try:
            async with semaphore:
                return await job
        finally:
            if isinstance(job, Coroutine):
                job.close()  # cancelled before it started: no "never awaited" warning

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def wait_until(done: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout_s`` has passed (False). Polling, not an
    event: the conditions are sums over thousands of members, cheaper to test now and then."""
    deadline = time.monotonic() + timeout_s
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)


def per_s(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None
