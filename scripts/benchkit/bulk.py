"""Bulk mode: does paging through a room of big entries stall the other rooms?

One room is filled straight into Redis with ``--entries`` entries whose ``bd`` carries an extra of
``--entry-bytes`` characters (60 KB by default: an attachment's text, a tool's output). Then, for
``--duration`` seconds, ``--readers`` clients (threads of a separate process, so their parsing does not
slow this one) page through it in a loop over the history API (``limit=--page``, from the newest page,
following ``next_before`` to the oldest, then again), while one member of another room sends a
``chat.message`` every ``1/--echo-rate`` seconds and times its echo (send to receipt of its own
broadcast). Reported: the echo's p50/p99/max, pages and bytes read per second; the target is an echo
p99 under 100 ms and a maximum under 250 ms with ten readers on 600 entries of 60 KB.
"""

from __future__ import annotations

import asyncio
import http.client
import multiprocessing
import threading
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

KEY_TTL_S = 3600  # in case the run dies before deleting it
TARGET = (600, 60_000, 10)  # entries, entry bytes, readers
TARGET_P99_MS = 100.0
TARGET_MAX_MS = 250.0


@dataclass(frozen=True, slots=True)
class BulkParams:
    entries: int = 600
    entry_bytes: int = 60_000
    readers: int = 10
    page: int = 1000
    duration_s: float = 10.0
    echo_rate: float = 20.0  # echo messages per second, one at a time


def fill(client: redis.Redis, room: str, params: BulkParams) -> None:
    key = stream_key(room)
    client.delete(key)
    base = int(time.time() * 1000) - params.entries - 60_000  # in the past: ids stay below any new append
    extra = "x" * params.entry_bytes
    pipe = client.pipeline(transaction=False)
    for n in range(params.entries):
        role = "AB"[n % 2]
        hd = {"event": "chat.message", "role": role, "sid": room, "ts": format_ts(base + n), "cid": f"b{n}"}
        pipe.xadd(key, {"participant": role, "body": stored_body(hd, {"text": f"entry {n}", "extra": extra})},
                  id=f"{base + n}-0")
        if n % 50 == 49:
            pipe.execute()
    pipe.execute()
    client.expire(key, KEY_TTL_S)


def read_pages(http_url: str, room: str, page: int, duration_s: float, readers: int,
               out: multiprocessing.Queue[dict[str, Any]]) -> None:
    """In the readers' process: ``readers`` threads paging through ``room`` until ``duration_s`` passed."""
    deadline = time.monotonic() + duration_s
    totals: list[dict[str, Any]] = []

    def reader() -> None:
        parts = urlsplit(http_url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=120)
        pages = entries = size = errors = 0
        largest = 0
        before = ""
        try:
            while time.monotonic() < deadline:
                conn.request("GET", f"/api/chat/history/{room}?limit={page}" + (f"&before={before}" if before else ""))
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    errors += 1
                    before = ""
                    continue
                pages += 1
                size += len(body)
                largest = max(largest, len(body))
                entries += body.count(b'"participant":')
                tail = body[body.rfind(b'"next_before":'):]
                cursor = orjson.loads(b"{" + tail) if tail else {}
                before = cursor.get("next_before") or ""
        except Exception as exc:  # reported, not raised: the run goes on without this reader
            totals.append({"pages": pages, "entries": entries, "bytes": size, "largest": largest,
                           "errors": errors + 1, "error": f"{type(exc).__name__}: {exc}"})
            return
        finally:
            conn.close()
        totals.append({"pages": pages, "entries": entries, "bytes": size, "largest": largest, "errors": errors})

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put({"readers": totals})


class Echo:
    """One member timing the echo of its own messages, one in flight at a time."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.samples: list[int] = []
        self.arrived = asyncio.Event()
        self.closed = ""

    def on_text(self, text: bytes | str) -> None:
        frame = orjson.loads(text)
        hd = frame.get("hd", {})
        if hd.get("event") == "chat.message" and hd.get("cid") in self.sent:
            self.samples.append(time.perf_counter_ns() - self.sent.pop(hd["cid"]))
            self.arrived.set()

    def on_close(self, why: str) -> None:
        self.closed = why
        self.arrived.set()


async def run_bulk(ctx: Context, params: BulkParams) -> Report:
    report = Report("bulk", {**asdict(params), "nodes": len(ctx.nodes), "store": ctx.store})
    assert ctx.redis_url is not None, "bulk mode fills the stream in Redis"
    client = redis.Redis.from_url(ctx.redis_url)
    big, other = ctx.room("bulk"), ctx.room("echo")
    node = ctx.nodes[0]
    echo = Echo()
    conn = None
    lost = 0
    try:
        fill(client, big, params)
        conn = await ctx.connect(node.chat_url(other, "A"), echo.on_text, echo.on_close, ctx.connect_timeout_s)
        queue: multiprocessing.Queue[dict[str, Any]] = multiprocessing.get_context("spawn").Queue()
        readers = multiprocessing.get_context("spawn").Process(
            target=read_pages, args=(node.http, big, params.page, params.duration_s, params.readers, queue))
        readers.start()
        started = time.monotonic()
        before = ctx.probe.cpu()
        n = 0
        while time.monotonic() - started < params.duration_s and not echo.closed:
            cid = f"e{n}"
            n += 1
            echo.arrived.clear()
            echo.sent[cid] = time.perf_counter_ns()
            conn.send(orjson.dumps({"hd": {"event": "chat.message", "role": "A", "cid": cid}, "bd": {"text": "ping"}}))
            try:
                await asyncio.wait_for(echo.arrived.wait(), 30.0)
            except TimeoutError:
                lost += 1
                echo.sent.pop(cid, None)
            await asyncio.sleep(1 / params.echo_rate)
        used = ctx.probe.cpu() - before
        result = await asyncio.get_running_loop().run_in_executor(None, queue.get, True, params.duration_s + 180)
        await asyncio.get_running_loop().run_in_executor(None, readers.join, 30)
        wall = time.monotonic() - started
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    finally:
        if conn is not None:
            conn.close()
        client.close()
    totals = result["readers"]
    pages = sum(t["pages"] for t in totals)
    errors = sum(t["errors"] for t in totals)
    figures: dict[str, Any] = {**latency_ms(echo.samples, "echo_ms"), "echoes": len(echo.samples), "echo_lost": lost,
                               "pages": pages, "pages_per_s": round(pages / wall, 2),
                               "entries_per_s": round(sum(t["entries"] for t in totals) / wall, 1),
                               "mb_per_s": round(sum(t["bytes"] for t in totals) / wall / 1e6, 2),
                               "largest_page_bytes": max((t["largest"] for t in totals), default=0),
                               "reader_errors": errors,
                               "server_cpu_util": round(used.server_s / used.wall_s, 3)
                               if used.server_s is not None and used.wall_s else None}
    report.figures = figures
    report.check = {"ok": bool(echo.samples) and lost == 0 and pages > 0 and errors == 0 and not echo.closed,
                    "echo_closed": echo.closed, "reader_errors": [t["error"] for t in totals if "error" in t][:3]}
    report.rows = [
        ("load", f"{params.readers} readers paging (limit {params.page}) through {params.entries} entries of "
                 f"{fmt(params.entry_bytes)} bytes; one echo every {1000 / params.echo_rate:.0f} ms in another room"),
        ("echo", f"p50 {fmt(figures['echo_ms_p50'])} ms, p99 {fmt(figures['echo_ms_p99'])} ms, "
                 f"max {fmt(figures['echo_ms_max'])} ms ({len(echo.samples)} echoes, {lost} lost)"),
        ("pages", f"{fmt(figures['pages_per_s'])}/s, {fmt(figures['entries_per_s'])} entries/s, "
                  f"{fmt(figures['mb_per_s'])} MB/s, largest {fmt(figures['largest_page_bytes'])} bytes"),
        ("check", "ok" if report.check["ok"] else f"NOT OK: {report.check}"),
    ]
    matches = (params.entries, params.entry_bytes, params.readers) == TARGET
    setup = "10 readers, 600 entries of 60 KB, real Redis, 1 node, 2 cores"
    report.targets = [Target("bulk_echo_ms_p99", figures["echo_ms_p99"], "<=", TARGET_P99_MS, setup, matches),
                      Target("bulk_echo_ms_max", figures["echo_ms_max"], "<=", TARGET_MAX_MS, setup, matches)]
    return report
