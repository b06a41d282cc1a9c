"""Idle mode: how much memory an open, silent connection costs the server.

One room with two members exchanges a message first, so that the server's lazy imports and
first-use allocations are behind it; its RSS is then the baseline. Then ``connections`` members
join rooms of ``members``, nobody sends, and after a second the RSS again: the difference per
connection is the figure. The server's CPU over ``duration_s`` of silence follows, and a liveness
check: in a few rooms one member speaks and every member must hear it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass

import orjson

from benchkit.context import Context, gather_limited, per_s, wait_until
from benchkit.stats import Report, Target, fmt
from benchkit.wsclient import Connection, close_all

SETTLE_S = 1.0
LIVENESS_ROOMS = 20
LIVENESS_TIMEOUT_S = 10.0
TARGET_CONNECTIONS = 10_000
TARGET_RSS_KIB = 30.0


@dataclass(frozen=True, slots=True)
class IdleParams:
    connections: int = TARGET_CONNECTIONS
    members: int = 3  # per room
    duration_s: float = 5.0  # of silence, for the idle CPU


class Listener:
    __slots__ = ("closed", "conn", "received")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.received = 0  # chat.message frames
        self.closed: str | None = None

    def on_text(self, data: bytes | str) -> None:
        if orjson.loads(data).get("hd", {}).get("event") == "chat.message":
            self.received += 1

    def on_close(self, reason: str) -> None:
        self.closed = reason


async def run_idle(ctx: Context, params: IdleParams) -> Report:
    report = Report("idle", {**asdict(params), "nodes": len(ctx.nodes), "store": ctx.store})
    room_count = math.ceil(params.connections / params.members)
    rooms = [[Listener() for _ in range(min(params.members, params.connections - n * params.members))]
             for n in range(room_count)]
    warm = [Listener(), Listener()]
    opened: list[Listener] = []

    async def join(listener: Listener, room: int, member: int) -> None:
        name = ctx.room("warm" if room < 0 else room)
        url = ctx.node_for(max(room, 0), member, params.members).chat_url(name)
        listener.conn = await ctx.connect(url, listener.on_text, listener.on_close, ctx.connect_timeout_s)
        opened.append(listener)

    try:
        await gather_limited([join(w, -1, k) for k, w in enumerate(warm)], 2)
        if not await _liveness([warm]):
            raise RuntimeError("the warm-up message did not arrive")
        rss0 = ctx.probe.server_rss_kib()
        started = time.monotonic()
        await gather_limited((join(m, n, k) for n, room in enumerate(rooms) for k, m in enumerate(room)),
                             ctx.connect_concurrency)
        connect_s = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        rss1 = ctx.probe.server_rss_kib()
        before = ctx.probe.cpu()
        await asyncio.sleep(params.duration_s)
        used = ctx.probe.cpu() - before
        step = max(1, room_count // LIVENESS_ROOMS)
        alive = await _liveness(rooms[::step][:LIVENESS_ROOMS])
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    finally:
        close_all(listener.conn for listener in opened)
    members = [m for room in rooms for m in room]
    closed = sum(1 for m in members if m.closed is not None)
    held = len(members) - closed
    per_conn = (rss1 - rss0) / params.connections if rss0 is not None and rss1 is not None else None
    report.figures = {"connections": params.connections, "held": held, "closed": closed,
                      "connect_s": round(connect_s, 3), "connects_per_s": per_s(params.connections, connect_s),
                      "server_rss_kib_before": rss0, "server_rss_kib_after": rss1,
                      "server_rss_kib_per_connection": round(per_conn, 2) if per_conn is not None else None,
                      "liveness_rooms_ok": alive, "idle_s": round(used.wall_s, 3),
                      "idle_server_cpu_util": _util(used.server_s, used.wall_s),
                      "idle_redis_cpu_util": _util(used.redis_s, used.wall_s)}
    report.check = {"ok": closed == 0 and alive == min(LIVENESS_ROOMS, len(rooms[::step])), "closed": closed,
                    "liveness_rooms_ok": alive, "liveness_rooms": min(LIVENESS_ROOMS, len(rooms[::step])),
                    "close_reasons": sorted({m.closed for m in members if m.closed})[:5]}
    report.rows = [
        ("connections", f"{fmt(held)} held of {fmt(params.connections)} in {fmt(room_count)} rooms, "
                        f"{len(ctx.nodes)} node(s), {ctx.store}"),
        ("connect", f"{connect_s:.1f} s ({fmt(report.figures['connects_per_s'], 0)}/s)"),
        ("server RSS", f"{fmt(rss0)} KiB -> {fmt(rss1)} KiB: {fmt(per_conn)} KiB per connection"),
        ("idle CPU", f"server {_pct(report.figures['idle_server_cpu_util'])}, "
                     f"redis {_pct(report.figures['idle_redis_cpu_util'])} over {used.wall_s:.1f} s"),
        ("liveness", f"{alive} of {report.check['liveness_rooms']} rooms heard a message at every member"),
    ]
    setup = params.connections == TARGET_CONNECTIONS and len(ctx.nodes) == 1
    report.targets = [
        Target("idle_connections_held", held, ">=", TARGET_CONNECTIONS, "10,000 idle connections on 1 node", setup),
        Target("idle_rss_kib_per_connection", report.figures["server_rss_kib_per_connection"], "<=", TARGET_RSS_KIB,
               "10,000 idle connections on 1 node", setup),
    ]
    return report


async def _liveness(rooms: list[list[Listener]]) -> int:
    """In each room the first member says something; how many rooms heard it at every member."""
    counts = [[m.received for m in room] for room in rooms]
    for room in rooms:
        if room[0].conn is not None:
            room[0].conn.send(orjson.dumps({"hd": {"event": "chat.message"}, "bd": {"text": "still there?"}}))

    def heard() -> int:
        return sum(all(m.received > c for m, c in zip(room, before, strict=True))
                   for room, before in zip(rooms, counts, strict=True))

    await wait_until(lambda: heard() == len(rooms), LIVENESS_TIMEOUT_S, 0.05)
    return heard()


def _util(cpu_s: float | None, wall_s: float) -> float | None:
    return round(cpu_s / wall_s, 4) if cpu_s is not None and wall_s > 0 else None


def _pct(util: float | None) -> str:
    return "-" if util is None else f"{util * 100:.1f}%"
