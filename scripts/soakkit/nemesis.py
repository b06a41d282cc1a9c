"""The faults, done in turn (a shuffled round of each, again and again) with a pause between them.

Each fault heals what it did before it returns (a killed process is started again, a frozen Redis
thawed, writes allowed again), also when the run is cancelled in the middle of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from soakkit.client import CarefulClient
from soakkit.procs import Child, Redis

PAUSE_S = (1.0, 3.0)
DOWN_S = 1.0  # how long a killed process stays down
REFUSE_S = 3.0
MID_ANSWER_WAIT_S = 10.0


@dataclass
class Target:
    redis: Redis
    nodes: Sequence[Child]
    workers: Sequence[Child]
    clients: Sequence[CarefulClient]
    redis_timeout_s: float
    streaming: asyncio.Event  # set by the clients at every llm.streaming frame


Fault = Callable[[Target, random.Random], Awaitable[None]]


async def kill_node(target: Target, rng: random.Random) -> None:
    """SIGKILL a relay node; start it again on its port a moment later."""
    node = rng.choice(target.nodes)
    await asyncio.to_thread(node.kill)
    try:
        await asyncio.sleep(DOWN_S)
    finally:
        await asyncio.to_thread(node.start)


async def restart_redis(target: Target, rng: random.Random) -> None:
    """SIGKILL Redis; start it again a moment later (it replays its append-only file)."""
    await asyncio.to_thread(target.redis.kill)
    try:
        await asyncio.sleep(DOWN_S)
    finally:
        await asyncio.to_thread(target.redis.start)


async def freeze_redis(target: Target, rng: random.Random) -> None:
    """SIGSTOP Redis for a second longer than the relay's reply timeout (``REDIS_TIMEOUT_S``)."""
    target.redis.freeze()
    try:
        await asyncio.sleep(target.redis_timeout_s + 1.0)
    finally:
        target.redis.thaw()


async def refuse_writes(target: Target, rng: random.Random) -> None:
    """Redis refuses every write (NOREPLICAS) for a few seconds."""
    await asyncio.to_thread(target.redis.refuse_writes, True)
    try:
        await asyncio.sleep(REFUSE_S)
    finally:
        await asyncio.to_thread(target.redis.refuse_writes, False)


async def kill_llm_workers(target: Target, rng: random.Random) -> None:
    """Once an answer is streaming (or after a while), SIGKILL every LLM worker process: the answer's
    worker dies mid-answer; start them again a moment later."""
    target.streaming.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(target.streaming.wait(), MID_ANSWER_WAIT_S)
    for worker in target.workers:
        await asyncio.to_thread(worker.kill)
    try:
        await asyncio.sleep(DOWN_S / 2)
    finally:
        for worker in target.workers:
            await asyncio.to_thread(worker.start)


async def drop_clients(target: Target, rng: random.Random) -> None:
    """Cut a third of the clients' sockets, as a lost network does."""
    for client in rng.sample(list(target.clients), max(1, len(target.clients) // 3)):
        client.drop()


FAULTS: dict[str, Fault] = {
    "kill_node": kill_node,
    "restart_redis": restart_redis,
    "freeze_redis": freeze_redis,
    "refuse_writes": refuse_writes,
    "kill_llm_workers": kill_llm_workers,
    "drop_clients": drop_clients,
}


async def run(target: Target, rng: random.Random, until: float, done: Counter[str],
              timeline: list[tuple[float, float, str]]) -> None:
    """Do the faults in shuffled rounds until the loop's time reaches ``until``; count them in ``done``
    and note each in ``timeline`` (start and end on the loop's clock, name)."""
    loop = asyncio.get_running_loop()
    while True:
        names = list(FAULTS)
        rng.shuffle(names)
        for name in names:
            await asyncio.sleep(rng.uniform(*PAUSE_S))
            if loop.time() >= until:
                return
            began = loop.time()
            await FAULTS[name](target, rng)
            done[name] += 1
            timeline.append((began, loop.time(), name))
