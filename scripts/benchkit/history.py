"""History mode: how long a page of history takes on a long stream.

The room's stream is filled straight into Redis, in pipelines of XADDs, with entries shaped as the
server stores them (``protocol.stored_body``) and ids ``<base + n>-0``, so every page's expected ids
are known exactly. Then three kinds of ``GET /api/chat/history/{room}?limit=<page>`` are timed in
turn over one keep-alive connection, from the request to the last byte of the answer: the newest
page, the page before the middle entry, the page after it. Each answer is checked (status, count,
ids) outside the timing.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis

from benchkit.context import Context
from benchkit.stats import Report, Target, fmt, latency_ms
from protocol import format_ts, stored_body
from server.store.keys import stream_key

PIPELINE = 10_000
KEY_TTL_S = 3600  # in case the run dies before deleting it
TARGET_ENTRIES = 1_000_000
TARGET_PAGE = 1000
TARGET_PAGE_MS = 20.0


@dataclass(frozen=True, slots=True)
class HistoryParams:
    entries: int = TARGET_ENTRIES
    page: int = TARGET_PAGE
    samples: int = 100  # timed requests per page kind
    size: int = 100  # characters per text
    reuse: bool = False  # keep a stream this mode filled before, when it is whole


def fill(client: redis.Redis, room: str, params: HistoryParams) -> tuple[int, float]:
    """Fill ``room``'s stream (or find it filled); its first id's milliseconds and the seconds it took."""
    key = stream_key(room)
    if params.reuse and (base := _filled_base(client, key, params.entries)) is not None:
        return base, 0.0
    started = time.monotonic()
    client.delete(key)
    base = int(time.time() * 1000) - params.entries - 60_000  # in the past: ids stay below any new append
    text = "h" * params.size
    for start in range(0, params.entries, PIPELINE):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + PIPELINE, params.entries)):
            role = "AB"[n % 2]
            hd = {"event": "chat.message", "role": role, "sid": room, "ts": format_ts(base + n), "cid": f"h{n}"}
            pipe.xadd(key, {"participant": role, "body": stored_body(hd, {"text": text})}, id=f"{base + n}-0")
        pipe.execute()
    client.expire(key, KEY_TTL_S)
    return base, time.monotonic() - started


def _filled_base(client: redis.Redis, key: str, entries: int) -> int | None:
    first: list[tuple[bytes, Any]] = client.xrange(key, count=1)  # type: ignore[assignment]
    if not first or client.xlen(key) != entries:
        return None
    base = int(first[0][0].split(b"-")[0])
    last: list[tuple[bytes, Any]] = client.xrevrange(key, count=1)  # type: ignore[assignment]
    return base if last[0][0] == f"{base + entries - 1}-0".encode() else None


def page_kinds(room: str, base: int, params: HistoryParams) -> dict[str, tuple[str, list[str]]]:
    """Per kind, the request path and the ids its page must hold, oldest first."""
    mid, size, n = params.entries // 2, params.page, params.entries

    def ids(first: int, last: int) -> list[str]:  # entries first..last-1
        return [f"{base + i}-0" for i in range(max(first, 0), min(last, n))]

    path = f"/api/chat/history/{room}?limit={size}"
    return {"newest": (path, ids(n - size, n)),
            "before_middle": (f"{path}&before={base + mid}-0", ids(mid - size, mid)),
            "after_middle": (f"{path}&after={base + mid}-0", ids(mid + 1, mid + 1 + size))}


async def run_history(ctx: Context, params: HistoryParams) -> Report:
    report = Report("history", {**asdict(params), "nodes": len(ctx.nodes), "store": ctx.store})
    assert ctx.redis_url is not None, "history mode fills the stream in Redis"
    client = redis.Redis.from_url(ctx.redis_url)
    parts = urlsplit(ctx.nodes[0].http)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        room = ctx.room("hist")
        base, fill_s = fill(client, room, params)
        kinds = page_kinds(room, base, params)
        for path, _ in kinds.values():
            _get(conn, path)  # warm-up, untimed
        timings: dict[str, list[int]] = {kind: [] for kind in kinds}
        wrong: dict[str, int] = {kind: 0 for kind in kinds}
        sizes: dict[str, int] = {}
        before = ctx.probe.cpu()
        for _ in range(params.samples):
            for kind, (path, expected) in kinds.items():
                started = time.perf_counter_ns()
                body = _get(conn, path)
                timings[kind].append(time.perf_counter_ns() - started)
                sizes[kind] = len(body)
                wrong[kind] += [m["id"] for m in orjson.loads(body)["messages"]] != expected
        used = ctx.probe.cpu() - before
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    finally:
        conn.close()
        client.close()
    requests = params.samples * len(kinds)
    everything = [t for kind in kinds for t in timings[kind]]
    figures: dict[str, Any] = {"fill_s": round(fill_s, 3), "filled": fill_s > 0, **latency_ms(everything, "page_ms")}
    for kind in kinds:
        figures.update(latency_ms(timings[kind], f"{kind}_ms"))
        figures[f"{kind}_bytes"] = sizes[kind]
    figures["server_cpu_ms_per_page"] = round(used.server_s / requests * 1e3, 3) if used.server_s is not None else None
    figures["redis_cpu_ms_per_page"] = round(used.redis_s / requests * 1e3, 3) if used.redis_s is not None else None
    report.figures = figures
    report.check = {"ok": not any(wrong.values()), "requests": requests, "wrong_pages": wrong}
    report.rows = [
        ("stream", f"{fmt(params.entries)} entries, " + (f"filled in {fill_s:.1f} s" if fill_s else "reused")
         + f"; pages of {params.page}, {params.samples} requests per kind"),
        *((kind, f"p50 {fmt(figures[f'{kind}_ms_p50'])} ms, p99 {fmt(figures[f'{kind}_ms_p99'])} ms, "
                 f"max {fmt(figures[f'{kind}_ms_max'])} ms, {fmt(sizes[kind])} bytes") for kind in kinds),
        ("all pages", f"p50 {fmt(figures['page_ms_p50'])} ms, p99 {fmt(figures['page_ms_p99'])} ms"),
        ("CPU per page", f"server {fmt(figures['server_cpu_ms_per_page'])} ms, "
                         f"redis {fmt(figures['redis_cpu_ms_per_page'])} ms"),
        ("check", "ok: every page held exactly the expected ids" if report.check["ok"] else f"WRONG pages: {wrong}"),
    ]
    report.targets = [Target("history_page_ms_p99", figures["page_ms_p99"], "<=", TARGET_PAGE_MS,
                             "pages of 1,000 from a 1,000,000-entry stream",
                             (params.entries, params.page) == (TARGET_ENTRIES, TARGET_PAGE))]
    return report


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return body
