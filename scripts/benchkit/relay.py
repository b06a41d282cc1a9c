"""Relay mode: rooms x members chatting, at a fixed offered rate or as fast as the server goes.

Theory of operation. Every member connects first; then all of them send for ``warmup_s`` +
``duration_s`` and stop. Member k of a room sends ``chat.message`` frames whose ``bd`` carries
``t`` (the client's monotonic clock, in ns, just before the send) and ``k``: a receipt with another
``k`` is a delivery, timed against ``t`` (one process, one clock); one's own ``k`` is the echo.

- ``rate`` > 0: open loop. Each member sends every ``members x rooms / rate`` seconds from a random
  phase, whatever the server's answers; latency then includes any queueing the server causes.
- ``rate`` = 0: closed loop. Each member keeps ``window`` messages in flight: its own echo (or an
  ``error`` frame) frees a slot and the next message goes at once. Latency is then mostly the time
  a message waits behind the others in flight.

Deliveries, latencies and CPU are counted only in the measurement window (after the warm-up);
CPU is read from ``/proc`` at the window's edges. After the sends stop, the members wait until
they hold every accepted message of their room (or ``drain_s`` passes), and each member's received
ids are checked against the room's stream (:mod:`benchkit.streams`).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from benchkit.context import TARGET_SETUP, Context, gather_limited, per_s, wait_until
from benchkit.procs import CpuSample
from benchkit.stats import Report, Target, cpu_figures, errors_row, fmt, fmt_cpu, latency_ms
from benchkit.streams import Check
from benchkit.wsclient import Connection, close_all

CHAT = "chat.message"
ERROR = "error"
ROLES = ("A", "B")  # member 0 is A, member 1 is B, the others send no role ("user")
TARGET_DELIVERIES_PER_S = 50_000
TARGET_SERVER_US_PER_DELIVERY = 20.0
TARGET_P99_MS = 5.0
TARGET_OFFERED_DELIVERIES_PER_S = 6_000


@dataclass(frozen=True, slots=True)
class RelayParams:
    rooms: int = 50
    members: int = 3
    size: int = 100  # characters of bd.text
    rate: float = 0.0  # offered messages/s, all senders together; 0 = as fast as possible
    window: int = 16  # messages in flight per member when rate = 0
    duration_s: float = 10.0
    warmup_s: float = 2.0
    drain_s: float = 30.0


@dataclass
class Meter:
    """The run's counters; only the measurement window counts deliveries and latencies."""

    measuring: bool = False
    sending: bool = False
    deliveries: int = 0
    sent: int = 0  # messages sent in the window
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    closed: int = 0  # connections closed before the end
    samples: list[str] = field(default_factory=list)  # a few error frames and close reasons

    def note(self, what: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(what[:300])


class Room:
    __slots__ = ("index", "members", "name", "refused", "sent")

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.members: list[Member] = []
        self.sent = 0
        self.refused = 0


class Member:
    """One connection: sends its messages and books what it receives (the hot path)."""

    __slots__ = ("chats", "conn", "hd", "ids", "inflight", "k", "meter", "next_at", "room", "seq", "text", "window")

    def __init__(self, room: Room, k: int, meter: Meter, text: str, window: int) -> None:
        self.room = room
        self.k = k
        self.meter = meter
        self.text = text
        self.window = window  # 0: open loop (rate mode)
        self.hd: dict[str, str] = {"event": CHAT, "role": ROLES[k]} if k < len(ROLES) else {"event": CHAT}
        self.conn: Connection | None = None
        self.ids: list[str] = []  # ids of stored frames received, in order
        self.chats = 0  # chat.message frames received (own echoes included)
        self.seq = 0
        self.inflight = 0
        self.next_at = 0.0

    def send(self) -> None:
        assert self.conn is not None
        self.seq += 1
        self.inflight += 1
        self.room.sent += 1
        if self.meter.measuring:
            self.meter.sent += 1
        bd = {"text": self.text, "t": time.monotonic_ns(), "k": self.k}
        self.conn.send(orjson.dumps({"hd": {**self.hd, "cid": str(self.seq)}, "bd": bd}))

    def tick(self, period_s: float) -> None:
        """Open loop: send one message and book the next one."""
        if self.meter.sending:
            self.send()
            self.next_at += period_s
            asyncio.get_running_loop().call_at(self.next_at, self.tick, period_s)

    def on_text(self, data: bytes | str) -> None:
        frame = orjson.loads(data)
        hd = frame.get("hd") or {}
        entry_id = hd.get("id")
        if entry_id is not None:
            self.ids.append(entry_id)
        event = hd.get("event")
        if event == CHAT:
            self.chats += 1
            bd = frame.get("bd") or {}
            if bd.get("k") == self.k:
                self._answered()
            elif self.meter.measuring and isinstance(t := bd.get("t"), int):
                self.meter.deliveries += 1
                self.meter.latencies_ns.append(time.monotonic_ns() - t)
        elif event == ERROR:
            self.meter.errors += 1
            self.meter.note(f"error frame: {frame.get('bd')}")
            self.room.refused += 1
            self._answered()
        # anything else (session.ready, presence.*, llm.*) is not part of this load

    def _answered(self) -> None:
        self.inflight -= 1
        if self.window and self.meter.sending and self.inflight < self.window:
            self.send()

    def on_close(self, reason: str) -> None:
        if self.meter.sending or self.chats < self.room.sent - self.room.refused:
            self.meter.closed += 1
            self.meter.note(f"{self.room.name}/{self.k} closed: {reason}")


async def run_relay(ctx: Context, params: RelayParams) -> Report:
    report = Report("relay", {**asdict(params), "nodes": len(ctx.nodes), "store": ctx.store})
    meter = Meter()
    rooms = [Room(n, ctx.room(n)) for n in range(params.rooms)]
    text = "x" * params.size
    members = [Member(room, k, meter, text, 0 if params.rate else params.window)
               for room in rooms for k in range(params.members)]
    try:
        await _connect(ctx, members, params.members)
        used = await _load(ctx, members, params, meter)
        # every member holds every accepted message of its room, or drain_s has passed
        await wait_until(lambda: all(m.chats >= r.sent - r.refused for r in rooms for m in r.members), params.drain_s)
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    finally:
        close_all(member.conn for member in members)
    check = verify(ctx, rooms)
    _fill(report, params, ctx, meter, used, check)
    return report


async def _connect(ctx: Context, members: list[Member], per_room: int) -> None:
    async def connect(member: Member) -> None:
        role = ROLES[member.k] if member.k < len(ROLES) else None
        url = ctx.node_for(member.room.index, member.k, per_room).chat_url(member.room.name, role)
        member.conn = await ctx.connect(url, member.on_text, member.on_close, ctx.connect_timeout_s)
        member.room.members.append(member)

    await gather_limited(map(connect, members), ctx.connect_concurrency)
    await asyncio.sleep(0.2)


async def _load(ctx: Context, members: list[Member], params: RelayParams, meter: Meter) -> CpuSample:
    """Send for the warm-up and the window; the CPU used in the window."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    meter.sending = True
    if params.rate:
        period_s = len(members) / params.rate
        for member in members:
            member.next_at = start + random.random() * period_s
            loop.call_at(member.next_at, member.tick, period_s)
    else:
        for member in members:
            for _ in range(params.window):
                member.send()
    await asyncio.sleep(max(0.0, start + params.warmup_s - loop.time()))
    before = ctx.probe.cpu()
    meter.measuring = True
    await asyncio.sleep(params.duration_s)
    meter.measuring = meter.sending = False
    return ctx.probe.cpu() - before


def verify(ctx: Context, rooms: list[Room]) -> Check:
    check = Check()
    for room in rooms:
        check.add_room(room.name, ctx.reader.entries(room.name), [m.ids for m in room.members],
                       room.sent - room.refused)
    return check


def _fill(report: Report, params: RelayParams, ctx: Context, meter: Meter, used: CpuSample, check: Check) -> None:
    window_s = used.wall_s
    offered = params.rate * (params.members - 1) if params.rate else None
    figures: dict[str, Any] = {
        "window_s": round(window_s, 3), "sent": meter.sent, "sent_per_s": per_s(meter.sent, window_s),
        "offered_deliveries_per_s": offered, "deliveries": meter.deliveries,
        "deliveries_per_s": per_s(meter.deliveries, window_s),
        **latency_ms(meter.latencies_ns), **cpu_figures(used, meter.deliveries, "delivery"),
        "errors": meter.errors, "closed": meter.closed, "samples": meter.samples,
    }
    if used.shards_s:  # each master's CPU in the window (--mode scale --cluster)
        figures["redis_shards_cpu_s"] = [round(seconds, 6) for seconds in used.shards_s]
    report.figures = figures
    report.check = check.as_json()
    report.rows = [
        ("load", f"{params.rooms} rooms x {params.members} members, {params.size}-char texts, "
                 + (f"{fmt(params.rate)} msgs/s offered ({fmt(offered)} deliveries/s)" if params.rate
                    else f"as fast as possible (window {params.window})")
                 + f", {len(ctx.nodes)} node(s), {ctx.store}"),
        ("window", f"{window_s:.1f} s after {params.warmup_s:g} s of warm-up"),
        ("deliveries/s", f"{fmt(figures['deliveries_per_s'])}  ({fmt(meter.deliveries)} deliveries, "
                         f"{fmt(figures['sent_per_s'])} msgs/s sent)"),
        ("latency p50/p95/p99/max", " / ".join(fmt(figures[f"latency_ms_{q}"]) for q in ("p50", "p95", "p99", "max"))
         + " ms"),
        ("server CPU", fmt_cpu(figures, "server", "delivery")),
        ("redis CPU", fmt_cpu(figures, "redis", "delivery")),
        ("client CPU", fmt_cpu(figures, "client", "delivery")),
        errors_row(meter.errors, meter.closed, meter.samples),
        ("check (XRANGE)" if ctx.redis_url else "check (history API)", check.summary()),
    ]
    base = (params.rooms, params.members, params.size, len(ctx.nodes)) == (50, 3, 100, 1) and ctx.redis_url is not None
    if params.rate:
        at = offered is not None and abs(offered - TARGET_OFFERED_DELIVERIES_PER_S) < 1
        report.targets = [Target("p99_ms_at_6000_deliveries_per_s", figures["latency_ms_p99"], "<=", TARGET_P99_MS,
                                 f"{TARGET_SETUP}, --rate 3000", base and at)]
    else:
        report.targets = [
            Target("saturation_deliveries_per_s", figures["deliveries_per_s"], ">=", TARGET_DELIVERIES_PER_S,
                   f"{TARGET_SETUP}, --rate 0", base),
            Target("saturation_server_cpu_us_per_delivery", figures["server_cpu_us_per_delivery"], "<=",
                   TARGET_SERVER_US_PER_DELIVERY, f"{TARGET_SETUP}, --rate 0", base),
        ]
