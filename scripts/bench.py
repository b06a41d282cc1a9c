#!/usr/bin/env python
"""The chat relay's benchmark: our protocol, our server, one command.

Usage (from the project root; by default each run starts its own server, on the embedded store
unless --redis-url names a real Redis, and stops it at the end):

    python scripts/bench.py --mode relay --redis-url redis://127.0.0.1:6379/0 --rate 0      # saturation
    python scripts/bench.py --mode relay --redis-url redis://127.0.0.1:6379/0 --rate 3000   # 6,000 deliveries/s
    python scripts/bench.py --mode idle  --redis-url redis://127.0.0.1:6379/0 --connections 10000
    python scripts/bench.py --mode llm   --redis-url redis://127.0.0.1:6379/0 --rooms 100 --tokens-per-s 50
    python scripts/bench.py --mode history --redis-url redis://127.0.0.1:6379/0 --entries 1000000
    python scripts/bench.py --mode scale --redis-url redis://127.0.0.1:6379/0 --nodes 2       # 1 node, then 2
    python scripts/bench.py --mode scale --redis-url redis://127.0.0.1:6379/0 --workers 2     # then WORKERS=2
    python scripts/bench.py --mode scale --cluster 1,3     # a single Redis, then clusters of 1 and 3 masters
    python scripts/bench.py --mode bulk  --redis-url redis://127.0.0.1:6379/0                 # 10 readers, 600 x 60 KB

Modes:
  relay    rooms x members chatting at --rate messages/s in all (0 = as fast as possible, each member
           keeping --window messages in flight): deliveries/s, latency p50/p95/p99 (send time carried
           in bd.t, receipt at every other member), server / Redis / client CPU per delivery (from
           /proc; us per delivery = ms per 1,000 deliveries), then a check of every member's receipts
           against XRANGE of its room: nothing lost, duplicated or reordered.
  idle     --connections idle members: the server's RSS per connection, idle CPU, and a liveness check.
  llm      one '@llm' message per room at a time, for --duration: every llm.streaming delta at every
           member (contiguous hd.seq, llm.response text = the deltas joined), the gap between deltas
           beyond the scripted pace (what the relay adds), time to the first delta. --slow-readers N:
           the first N rooms get one more member that stops reading during the answers (its link
           first filled with stored messages): the llm.streaming frames it receives against the
           deltas they carry (merged), and that it is not closed.
  history  a stream of --entries entries (XADD in pipelines), then timed GET history pages of --page
           entries: the newest page, a page before= the middle, a page after= the middle.
  scale    relay at saturation on 1 node, then on --nodes nodes on their own ports, or (--workers N)
           on one port served by N worker processes (WORKERS=N) (real Redis only).
           With --cluster N[,N...]: the same relay load (--rate, 0 = saturation; --nodes/--workers for
           every configuration) on a single Redis (--redis-url: one nobody else uses, since its INFO
           cpu counts every client's work; else a private one), then on a private Redis Cluster of
           N masters (--cluster-replicas each; loopback, free ports, a temp dir, stopped at the end)
           for each N: deliveries/s and Redis CPU per delivery, in all and per shard (each master's
           INFO cpu over the window), Redis commands and socket reads per stored entry, one line
           per configuration.
  bulk     --readers clients paging (--page) in a loop through a room of --entries entries of
           --entry-bytes bytes each (default 10 readers, 600 entries of 60 KB), while a member of
           another room times the echo of one message every 1/--echo-rate s: echo p50/p99/max
           (targets: p99 < 100 ms, max < 250 ms) and pages/s.

Output: one JSON line per run on stdout (appended to --out too), a readable table on stderr. Exit
status 0 when every run did its job and its check passed, 1 otherwise, 2 for bad options or a
setup that cannot run. Targets are reported (pass/fail, and whether the run's setup is the one
the target is defined for); they do not change the exit status.

Started servers get STREAM_MAXLEN=0 (so the check sees every message), ROOM_TTL_SECONDS=3600,
LOG_LEVEL=warning and the open-files limit of this process (raised to its hard limit); --server-env
KEY=VALUE adds or overrides settings. With --url, the servers are yours: give --redis-url too for
the XRANGE check (else it reads the history API) and for Redis CPU. Rooms are named
<--room-prefix>r<n> (a fresh random prefix by default); their keys are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import redis
import uvloop
from benchkit.bulk import BulkParams, run_bulk
from benchkit.context import TARGET_SETUP, Context
from benchkit.history import HistoryParams, run_history
from benchkit.idle import IdleParams, run_idle
from benchkit.llm import LlmParams, run_llm
from benchkit.procs import Probe, ServerSet, SetupError, raise_fd_limit, redis_pid, running_nodes
from benchkit.relay import RelayParams, run_relay
from benchkit.shards import (
    RedisUnderTest,
    calls_per_entry,
    config_row,
    load_shares,
    merged,
    redis_under_test,
    room_shard,
    shard_figures,
)
from benchkit.stats import Report, Target, fmt
from benchkit.streams import HistoryReader, RedisReader, StreamReader
from benchkit.wsclient import CLIENTS

DEFAULTS: dict[str, dict[str, float]] = {  # per mode, for the options left unset
    "relay": {"rooms": 50, "members": 3, "duration": 10.0, "warmup": 2.0},
    "scale": {"rooms": 50, "members": 3, "duration": 10.0, "warmup": 2.0},
    "idle": {"members": 3, "duration": 5.0, "warmup": 0.0},
    "llm": {"rooms": 100, "members": 2, "duration": 10.0, "warmup": 0.0},
    "history": {"duration": 0.0, "warmup": 0.0, "entries": 1_000_000},
    "bulk": {"duration": 10.0, "warmup": 0.0, "entries": 600},
}
FD_HEADROOM = 1024
FLAT_LIMIT = 1.25  # scale --cluster: Redis CPU per delivery of a cluster, summed over its shards, vs a single Redis
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,40}")

Mode = Callable[[argparse.Namespace, Context], Coroutine[Any, Any, list[Report]]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(DEFAULTS), default="relay")
    where = ap.add_argument_group("servers")
    where.add_argument("--url", default="", help="comma-separated http://HOST:PORT of running servers (default: start)")
    where.add_argument("--server-pid", default="", help="with --url: comma-separated server pids (default: by port)")
    where.add_argument("--redis-url", default="", help="real Redis (default: the embedded store)")
    where.add_argument("--nodes", type=int, default=1, help="server processes to start (scale: the larger count)")
    where.add_argument("--workers", type=int, default=1,
                       help="scale: compare 1 process with one port served by this many (WORKERS)")
    where.add_argument("--cluster", default="", metavar="N[,N...]",
                       help="scale: compare a single Redis with private Redis Clusters of N masters")
    where.add_argument("--cluster-replicas", type=int, default=0, help="scale --cluster: replicas per master")
    where.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting for the started servers (repeatable)")
    load = ap.add_argument_group("load")
    load.add_argument("--rooms", type=int, help="rooms (default 50; llm: 100, one generation each)")
    load.add_argument("--members", type=int, help="members per room (default 3; llm: 2)")
    load.add_argument("--size", type=int, default=100, help="characters per text")
    load.add_argument("--rate", type=float, default=0.0, help="offered messages/s, all senders (0 = max)")
    load.add_argument("--window", type=int, default=16, help="messages in flight per member at --rate 0")
    load.add_argument("--duration", type=float, help="seconds measured (default 10; idle: 5)")
    load.add_argument("--warmup", type=float, help="relay: seconds of load before the measurement (default 2)")
    load.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to wait for the last receipts")
    load.add_argument("--client", choices=sorted(CLIENTS), default="lean", help="WebSocket client implementation")
    load.add_argument("--connect-concurrency", type=int, default=100)
    load.add_argument("--connections", type=int, default=10_000, help="idle: connections to open")
    load.add_argument("--tokens-per-s", type=float, default=50.0, help="llm: the scripted provider's pace")
    load.add_argument("--stagger", type=float, default=1.0,
                      help="llm: seconds over which the rooms' first questions are spread (0 = all at once)")
    load.add_argument("--first-delta-timeout", type=float, default=10.0, help="llm: seconds to wait for a delta")
    load.add_argument("--slow-readers", type=int, default=0,
                      help="llm: rooms (the first ones) with one more member that stops reading during the answers")
    load.add_argument("--entries", type=int, help="history, bulk: entries in the stream (1,000,000; bulk: 600)")
    load.add_argument("--entry-bytes", type=int, default=60_000, help="bulk: bytes of each entry's bd extra")
    load.add_argument("--readers", type=int, default=10, help="bulk: clients paging through the room")
    load.add_argument("--echo-rate", type=float, default=20.0, help="bulk: echo messages per second")
    load.add_argument("--page", type=int, default=1000, help="history, bulk: entries per page")
    load.add_argument("--samples", type=int, default=100, help="history: requests per page kind")
    load.add_argument("--reuse", action="store_true", help="history: keep a stream already filled (with --keep)")
    out = ap.add_argument_group("output")
    out.add_argument("--room-prefix", default="", help="room names start with it (default: bench-<random>-)")
    out.add_argument("--keep", action="store_true", help="leave the run's keys in Redis")
    out.add_argument("--out", default="", help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    for name, value in DEFAULTS[args.mode].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    _validate(ap, args)
    return args


def _validate(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.room_prefix and not _PREFIX.fullmatch(args.room_prefix):
        ap.error("--room-prefix: 1-40 characters of A-Z a-z 0-9 _ -")
    if args.url and (args.nodes != 1 or args.server_env):
        ap.error("--nodes and --server-env are for servers the harness starts, not with --url")
    if args.nodes < 1 or (args.nodes > 1 and not args.redis_url and not args.url):
        ap.error("--nodes > 1 needs --redis-url: nodes share rooms only through a real Redis")
    args.cluster = parse_cluster(ap, args.cluster)
    if (args.cluster or args.cluster_replicas) and args.mode != "scale":
        ap.error("--cluster and --cluster-replicas are for --mode scale")
    if args.cluster_replicas < 0:
        ap.error("--cluster-replicas must be 0 or more")
    if args.mode in ("history", "scale", "bulk") and not args.redis_url and not args.cluster:
        ap.error(f"--mode {args.mode} needs --redis-url")
    if args.mode == "scale" and args.url:
        ap.error("--mode scale starts its own servers: no --url")
    if args.mode == "scale" and not args.cluster and (args.nodes < 2) == (args.workers < 2):
        ap.error("--mode scale: --nodes 2 or more, or --workers 2 or more (not both), or --cluster N")
    if args.workers < 1 or (args.workers != 1 and args.mode != "scale"):
        ap.error("--workers (at least 1) is for --mode scale (else set --server-env WORKERS=N)")
    for name in ("rooms", "members", "window", "size", "connections", "entries", "page", "samples", "entry_bytes",
                 "readers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name} must be at least 1")
    if args.members is not None and args.members < 2 and args.mode in ("relay", "scale"):
        ap.error("--members must be at least 2: a delivery is a receipt at another member")
    if args.slow_readers and (args.mode != "llm" or args.slow_readers < 0 or args.slow_readers > args.rooms
                              or args.client != "lean"):
        ap.error("--slow-readers is for --mode llm with the lean client, from 0 to --rooms")
    if args.echo_rate <= 0:
        ap.error("--echo-rate must be positive")
    if any("=" not in item for item in args.server_env):
        ap.error("--server-env takes KEY=VALUE")


def parse_cluster(ap: argparse.ArgumentParser, text: str) -> list[int]:
    """``--cluster 1,3``: the masters of each cluster to compare with the single Redis."""
    try:
        masters = [int(item) for item in text.split(",")] if text else []
    except ValueError:
        ap.error("--cluster takes masters per cluster, comma-separated: --cluster 1,3")
    if any(n < 1 for n in masters):
        ap.error("--cluster: every cluster has at least 1 master")
    return masters


# ------------------------------------------------------------------------------------- modes
async def relay_mode(args: argparse.Namespace, ctx: Context) -> list[Report]:
    return [await run_relay(ctx, relay_params(args))]


def relay_params(args: argparse.Namespace) -> RelayParams:
    return RelayParams(rooms=args.rooms, members=args.members, size=args.size, rate=args.rate, window=args.window,
                       duration_s=args.duration, warmup_s=args.warmup, drain_s=args.drain_timeout)


async def idle_mode(args: argparse.Namespace, ctx: Context) -> list[Report]:
    return [await run_idle(ctx, IdleParams(connections=args.connections, members=args.members,
                                           duration_s=args.duration))]


async def llm_mode(args: argparse.Namespace, ctx: Context) -> list[Report]:
    return [await run_llm(ctx, LlmParams(rooms=args.rooms, members=args.members, duration_s=args.duration,
                                         tokens_per_s=args.tokens_per_s, stagger_s=args.stagger,
                                         first_delta_timeout_s=args.first_delta_timeout,
                                         drain_s=args.drain_timeout, slow_readers=args.slow_readers))]


async def history_mode(args: argparse.Namespace, ctx: Context) -> list[Report]:
    return [await run_history(ctx, HistoryParams(entries=args.entries, page=args.page, samples=args.samples,
                                                 size=args.size, reuse=args.reuse))]


async def bulk_mode(args: argparse.Namespace, ctx: Context) -> list[Report]:
    return [await run_bulk(ctx, BulkParams(entries=args.entries, entry_bytes=args.entry_bytes, readers=args.readers,
                                           page=args.page, duration_s=args.duration, echo_rate=args.echo_rate))]


MODES: dict[str, Mode] = {"relay": relay_mode, "idle": idle_mode, "llm": llm_mode, "history": history_mode,
                          "bulk": bulk_mode}


def scale(args: argparse.Namespace) -> list[Report]:
    """Relay at saturation on one node, then on ``--nodes`` nodes (ports of their own) or on one port
    served by ``--workers`` processes: does the second process add throughput?"""
    args.rate = 0.0
    by_workers = args.workers > 1
    count = args.workers if by_workers else args.nodes
    wide = f"{count} workers" if by_workers else f"{count} nodes"
    reports = []
    for nodes, workers, prefix in ((1, 1, "n1-"), (1, count, f"w{count}-") if by_workers else (count, 1, f"n{count}-")):
        with context(args, nodes, prefix, workers) as ctx:
            reports.append(uvloop.run(relay_mode(args, ctx))[0])
    one, many = (r.figures.get("deliveries_per_s") for r in reports)
    key = f"deliveries_per_s_{count}" + ("_workers" if by_workers else "")
    summary = Report("scale", {"nodes": f"1 vs {wide}", "store": args.redis_url},
                     figures={"deliveries_per_s_1": one, key: many,
                              "ratio": round(many / one, 3) if one and many else None},
                     check={"ok": all(r.ok for r in reports)})
    summary.rows = [("deliveries/s", f"{fmt(one)} on 1 node, {fmt(many)} on {wide}")]
    base = bool(reports[0].targets) and reports[0].targets[0].setup_matches  # the relay's target setup
    summary.targets = [Target(f"{wide.replace(' ', '_')}_move_more_than_1", summary.figures["ratio"], ">", 1.0,
                              f"{TARGET_SETUP}, --rate 0, vs 2 processes on a 2-core machine", base and count == 2)]
    return [*reports, summary]


def scale_cluster(args: argparse.Namespace) -> list[Report]:
    """The same relay load on a single Redis, then on a Redis Cluster of each ``--cluster`` size: does
    Redis CPU per delivery stay flat (in all, and each shard for its own rooms) as shards are added?"""
    reports: list[Report] = []
    configs: list[dict[str, Any]] = []
    for masters in [0, *args.cluster]:
        report, config = configuration(args, masters)
        single = configs[0]["redis_cpu_us_per_delivery"] if configs else None
        total = config["redis_cpu_us_per_delivery"]
        config["vs_single"] = round(total / single, 3) if single and total else None
        reports.append(report)
        configs.append(config)
    summary = Report("scale", {"redis": "single vs cluster of " + ", ".join(map(str, args.cluster)) + " masters",
                               "replicas": args.cluster_replicas, "nodes": args.nodes, "workers": args.workers,
                               "rate": args.rate},
                     figures={"configurations": configs}, check={"ok": all(r.ok for r in reports)})
    summary.rows = [config_row(c["name"], c) for c in configs]
    base = args.rate == 0 and bool(reports[0].targets) and reports[0].targets[0].setup_matches
    summary.targets = [Target(f"redis_cpu_per_delivery_cluster_of_{c['masters']}_vs_single", c["vs_single"], "<=",
                              FLAT_LIMIT, f"{TARGET_SETUP}, --rate 0", base) for c in configs[1:]]
    return [*reports, summary]


def configuration(args: argparse.Namespace, masters: int) -> tuple[Report, dict[str, Any]]:
    """The relay run on one Redis under test (``masters`` 0: the single Redis) and its figures for the
    scale table: deliveries/s, Redis CPU per delivery in all and per shard, commands and reads per entry."""
    with redis_under_test(args.redis_url or None, masters, args.cluster_replicas) as under, \
            context(args, args.nodes, f"c{masters}-", args.workers, under) as ctx:
        calls_before, io_before = under.commands(), under.io()
        report = uvloop.run(relay_mode(args, ctx))[0]
        calls_after, io_after = under.commands(), under.io()
        assert isinstance(ctx.reader, RedisReader)
        lengths = ctx.reader.lengths(ctx.rooms_used)
    shares, entries = load_shares(lengths, under.shards), sum(lengths.values())
    rooms = [sum(1 for room in lengths if room_shard(room, under.shards) == k) for k in range(len(under.shards))]
    figures = report.figures
    shards = shard_figures(figures.get("redis_shards_cpu_s") or [0.0] * len(rooms), figures.get("window_s") or 0.0,
                           figures.get("deliveries") or 0, shares, rooms)
    for shard, share, calls, io in zip(shards, shares, zip(calls_before, calls_after, strict=True),
                                       zip(io_before, io_after, strict=True), strict=True):
        shard["redis_calls_per_entry"] = calls_per_entry(*calls, round(share * entries))
        shard["redis_io_per_entry"] = calls_per_entry(*io, round(share * entries))
    config = {"name": under.label, "masters": masters, "replicas": args.cluster_replicas if masters else 0,
              **{key: figures.get(key) for key in ("deliveries_per_s", "redis_cpu_us_per_delivery",
                                                   "server_cpu_us_per_delivery", "latency_ms_p99")},
              "shards": shards,
              "redis_calls_per_entry": calls_per_entry(merged(calls_before), merged(calls_after), entries),
              "redis_io_per_entry": calls_per_entry(merged(io_before), merged(io_after), entries)}
    return report, config


# ------------------------------------------------------------------------------------- setup
@contextlib.contextmanager
def context(args: argparse.Namespace, nodes: int, prefix_suffix: str = "", workers: int = 1,
            under: RedisUnderTest | None = None) -> Iterator[Context]:
    """The servers (started, or found at --url) and the probes of one run; ``under``: the Redis under
    test of ``--mode scale --cluster`` (its URL replaces --redis-url, its masters' CPU is read)."""
    redis_url = under.url if under is not None else args.redis_url
    servers = None
    if args.url:
        found = running_nodes(args.url.split(","), [int(p) for p in args.server_pid.split(",") if p])
    else:
        env = dict(item.split("=", 1) for item in args.server_env)
        if args.mode == "llm":
            env = {"LLM_PROVIDER": "scripted", "LLM_SCRIPTED_DELAY_MS": str(round(1000 / args.tokens_per_s)),
                   "LLM_ROOM_GENERATIONS_PER_HOUR": "0", **env}  # (each room asks again at once: no cost guard)
            if args.slow_readers:  # the messages that fill the slow readers' links
                fill = LlmParams().slow_fill_chars
                env = {"MAX_TEXT_CHARS": str(fill), "MAX_MESSAGE_BYTES": str(fill + 1000), **env}
        servers = ServerSet(nodes, redis_url or None, env, workers)
    reader: StreamReader | None = None
    ctx: Context | None = None
    try:
        found = servers.start() if servers is not None else found
        cluster = under is not None and under.cluster
        reader = RedisReader(redis_url, cluster) if redis_url else HistoryReader(found[0].http)
        probe = Probe(tuple(pid for node in found for pid in node.pids),
                      redis_pid(redis_url) if redis_url and not cluster else None,
                      under.cpu_s if under is not None else None)
        ctx = Context(found, probe, reader, CLIENTS[args.client], args.room_prefix + prefix_suffix,
                      redis_url or None, connect_concurrency=args.connect_concurrency)
        yield ctx
    finally:
        if ctx is not None and isinstance(reader, RedisReader) and not args.keep:
            reader.delete_rooms(sorted(ctx.rooms_used))
        if reader is not None:
            reader.close()
        if servers is not None:
            servers.stop()


def run(args: argparse.Namespace) -> list[Report]:
    raise_fd_limit(args.connections + FD_HEADROOM if args.mode == "idle" else FD_HEADROOM)
    if not args.room_prefix:
        args.room_prefix = f"bench-{secrets.token_hex(3)}-"
    if args.mode == "scale":
        return scale_cluster(args) if args.cluster else scale(args)
    with context(args, args.nodes) as ctx:
        return uvloop.run(MODES[args.mode](args, ctx))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        reports = run(args)
    except (SetupError, OSError, redis.RedisError) as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        line = report.json_line()
        print(line, flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(line + "\n")
        report.print_table()
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
