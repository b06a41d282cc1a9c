"""One soak: start the processes, run the clients and the nemesis for a while, heal, drain, check.

Phases: **chaos** (clients talk and ask, the nemesis does its faults), **heal** (the last fault is
undone: every process is up and Redis takes writes), **drain** (no new messages: the clients re-send
what is unacknowledged and catch up, the bot finishes), **check** (the streams read back and compared
with every client's record).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from benchkit.procs import free_port

from server.store.keys import llm_lock_key, llm_waiting_key, stream_key
from soakkit import nemesis
from soakkit.check import Report, Stored, check
from soakkit.client import CarefulClient
from soakkit.procs import Child, Redis

ROLES = ("A", "B")
SEND_EVERY_S = (0.1, 0.5)
ASK_SHARE = 0.08
LONG_SHARE = 0.5
DRAIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Plan:
    duration_s: float = 60.0
    nodes: int = 2
    workers: int = 2
    rooms: int = 4
    seed: int = 1
    redis_timeout_s: float = 2.0
    reclaim_after_s: float = 3.0
    workdir: Path | None = None


@dataclass
class Outcome:
    report: Report
    faults: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, float, str]] = field(default_factory=list)  # (from s, to s, fault)
    drained: bool = True
    drain_s: float = 0.0
    workdir: Path = Path()

    def as_dict(self) -> dict[str, object]:
        report = self.report
        return {"ok": report.ok and self.drained, "drained": self.drained, "drain_s": round(self.drain_s, 1),
                "faults": dict(self.faults),
                "timeline": [f"{a:.1f}-{b:.1f} s {name}" for a, b, name in self.timeline],
                "violations": report.counts(),
                "figures": {k: getattr(report, k) for k in ("rooms", "clients", "stored", "sent", "acked", "resends",
                                                            "questions", "answered", "errored", "connects",
                                                            "disconnects")},
                "errors": report.errors,
                "examples": {name: getattr(report, name)[:5] for name in report.VIOLATIONS if getattr(report, name)},
                "workdir": str(self.workdir)}


def _env(redis: Redis, plan: Plan) -> dict[str, str]:
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "REDIS_", "AUTH_"))}
    return {**env, "REDIS_URL": redis.url, "HOST": "127.0.0.1", "LOG_LEVEL": "warning", "LLM_PROVIDER": "scripted",
            "LLM_WORKERS": "0", "LLM_TRIGGER": "explicit", "LLM_SCRIPTED_DELAY_MS": "40",
            "LLM_RECLAIM_AFTER_S": str(plan.reclaim_after_s), "REDIS_TIMEOUT_S": str(plan.redis_timeout_s),
            "NODE_TTL_S": "6", "STREAM_MAXLEN": "0", "RATE_LIMIT_PER_SEC": "0",
            "LLM_ROOM_GENERATIONS_PER_HOUR": "0"}  # (every stored question must be answered: no cost guard)


async def soak(plan: Plan) -> Outcome:
    workdir = plan.workdir or Path(tempfile.mkdtemp(prefix="chat-relay-soak-"))
    rng = random.Random(plan.seed)
    redis = Redis(workdir)
    redis.start()
    env = _env(redis, plan)
    nodes = [Child(f"node{i}", "server", env, workdir / f"node{i}.log", port=free_port()) for i in range(plan.nodes)]
    workers = [Child(f"worker{i}", "server.llm_worker", env, workdir / f"worker{i}.log")
               for i in range(plan.workers)]
    try:
        for child in [*nodes, *workers]:
            await asyncio.to_thread(child.start)
        return await _run(plan, rng, redis, nodes, workers, workdir)
    finally:
        for child in [*nodes, *workers]:
            await asyncio.to_thread(child.stop)
        redis.stop()


async def _run(plan: Plan, rng: random.Random, redis: Redis, nodes: list[Child], workers: list[Child],
               workdir: Path) -> Outcome:
    rooms = [f"soak-{plan.seed}-{i}" for i in range(plan.rooms)]
    streaming = asyncio.Event()
    clients = [CarefulClient(room, role, lambda: rng.choice(nodes).ws, random.Random(rng.random()), streaming)
               for room in rooms for role in ROLES]
    stop, quiet = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    running = [loop.create_task(client.run(stop)) for client in clients]
    talking = [loop.create_task(_talk(client, quiet, random.Random(rng.random()))) for client in clients]
    faults: Counter[str] = Counter()
    timeline: list[tuple[float, float, str]] = []
    began = loop.time()
    target = nemesis.Target(redis, nodes, workers, clients, plan.redis_timeout_s, streaming)
    try:
        await nemesis.run(target, rng, loop.time() + plan.duration_s, faults, timeline)
        quiet.set()
        await asyncio.gather(*talking)
        drain_began = time.monotonic()
        drained = await _drain(redis, rooms, clients)
        drain_s = time.monotonic() - drain_began
    finally:
        quiet.set()
        stop.set()
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        await asyncio.gather(*running, *talking, return_exceptions=True)
    streams = await asyncio.to_thread(_read_back, redis, rooms)
    report = check([c.record for c in clients], streams)
    relative = [(a - began, b - began, name) for a, b, name in timeline]
    return Outcome(report, faults, relative, drained, drain_s, workdir)


async def _talk(client: CarefulClient, quiet: asyncio.Event, rng: random.Random) -> None:
    n = 0
    while not quiet.is_set():
        await asyncio.sleep(rng.uniform(*SEND_EVERY_S))
        n += 1
        if rng.random() < ASK_SHARE:
            await client.ask(f"question {n}" + (" #long" if rng.random() < LONG_SHARE else ""))
        else:
            await client.say(f"message {n} from {client.record.role}")


async def _drain(redis: Redis, rooms: list[str], clients: list[CarefulClient]) -> bool:
    """Wait until every message is acknowledged, no room has a question open (answered, or waiting its
    turn) and every client has received its room's newest entry."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        if not any(c.unacknowledged for c in clients):
            tails, busy = await asyncio.to_thread(_tails, redis, rooms)
            if not busy and all(c.received_up_to(tails[c.record.room]) for c in clients):
                return True
        await asyncio.sleep(0.2)
    return False


def _tails(redis: Redis, rooms: list[str]) -> tuple[dict[str, str | None], bool]:
    with redis.client() as rdb:
        tails: dict[str, str | None] = {}
        for room in rooms:
            newest = rdb.xrevrange(stream_key(room), count=1)
            tails[room] = newest[0][0] if newest else None
        busy = any(rdb.exists(llm_lock_key(room), llm_waiting_key(room)) for room in rooms)  # answering, or waiting
    return tails, busy


def _read_back(redis: Redis, rooms: list[str]) -> dict[str, list[Stored]]:
    streams: dict[str, list[Stored]] = {}
    with redis.client() as rdb:
        for room in rooms:
            entries = []
            for entry_id, fields in rdb.xrange(stream_key(room)):
                hd = orjson.loads(fields["body"])["hd"]
                entries.append(Stored(id=entry_id, role=fields["participant"], event=hd["event"], cid=hd.get("cid"),
                                      reply_to=hd.get("reply_to"), rid=hd.get("rid")))
            streams[room] = entries
    return streams
