"""The Redis under test of ``--mode scale --cluster``: a single Redis or a private Redis Cluster, its
masters (the shards), each master's CPU, and which shard holds each room.

A shard's CPU is ``used_cpu_sys + used_cpu_user`` of its master's ``INFO cpu`` (the redis-server
process's rusage: every thread, to the microsecond), read at the start and at the end of the relay's
measurement window. Rooms spread over the shards by slot (every key of a room hashes to the slot of
``chat:session:<room>``), so each shard carries its rooms' share of the load, taken as its share of
the entries stored (XLEN of the rooms' streams). What must stay flat as shards are added: Redis CPU per
delivery summed over the shards (against the single Redis's), and each shard's CPU per delivery of
its own rooms (each shard does for its rooms what the single Redis did for all).

The clusters are the tests' (``tests/support/redis_cluster.py``): loopback, free ports, a temp dir per
node, nothing persisted, stopped at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.crc import key_slot

from benchkit.procs import ROOT, SetupError
from benchkit.stats import fmt
from server.store.keys import stream_key

SLOTS = 16384
ALL_SLOTS = ((0, SLOTS - 1),)

Slots = tuple[tuple[int, int], ...]  # ranges of slots, first and last included


@dataclass(frozen=True, slots=True)
class Shard:
    """A master of the Redis under test and the slots it serves (a single Redis serves them all)."""

    port: int
    slots: Slots = ALL_SLOTS


def shard_index(slot: int, shards: Sequence[Shard]) -> int:
    """The index in ``shards`` of the one that serves ``slot``."""
    for n, shard in enumerate(shards):
        if any(first <= slot <= last for first, last in shard.slots):
            return n
    raise ValueError(f"slot {slot} is served by none of the shards")


def room_shard(room: str, shards: Sequence[Shard]) -> int:
    return shard_index(key_slot(stream_key(room).encode()), shards)


def info_cpu_s(info: Mapping[str, Any]) -> float:
    """CPU seconds a redis-server has used, from its ``INFO cpu``."""
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_calls(info: Mapping[str, Any]) -> dict[str, int]:
    """Calls of each command so far, from ``INFO commandstats`` (``evalsha``: {calls: 12, ...})."""
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


def io_counts(info: Mapping[str, Any]) -> dict[str, int]:
    """Reads and writes of client sockets so far (each read: one wake-up that found a request), from
    ``INFO stats``."""
    return {"reads": int(info["total_reads_processed"]), "writes": int(info["total_writes_processed"])}


def merged(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Several masters' calls of each command, added up."""
    total: dict[str, int] = {}
    for shard in counts:
        for name, count in shard.items():
            total[name] = total.get(name, 0) + count
    return total


def calls_per_entry(before: Mapping[str, int], after: Mapping[str, int], entries: int) -> dict[str, float]:
    """Each command's calls between two readings per entry stored meanwhile, most called first, and
    their sum (``all``); empty when nothing was stored."""
    if not entries:
        return {}
    calls = {name: count - before.get(name, 0) for name, count in after.items()}
    ranked = sorted(((name, count) for name, count in calls.items() if count > 0), key=lambda item: -item[1])
    return {"all": round(sum(calls.values()) / entries, 3)} | {name: round(count / entries, 3)
                                                                 for name, count in ranked}


def load_shares(lengths: Mapping[str, int], shards: Sequence[Shard]) -> list[float]:
    """Each shard's share of the entries stored in the rooms ``lengths`` counts (0 when none are)."""
    stored = [0] * len(shards)
    for room, entries in lengths.items():
        stored[room_shard(room, shards)] += entries
    total = sum(stored)
    return [count / total if total else 0.0 for count in stored]


def shard_figures(cpu_s: Sequence[float], window_s: float, deliveries: int, shares: Sequence[float],
                  rooms: Sequence[int]) -> list[dict[str, Any]]:
    """Per shard: its rooms, its share of the load, its CPU per delivery (of all the deliveries: these
    add up to the total) and per delivery of its own rooms (share x deliveries), and its utilisation."""
    figures = []
    for seconds, share, count in zip(cpu_s, shares, rooms, strict=True):
        own = deliveries * share
        figures.append({
            "rooms": count, "load_share": round(share, 4),
            "cpu_us_per_delivery": round(seconds / deliveries * 1e6, 2) if deliveries else None,
            "cpu_us_per_own_delivery": round(seconds / own * 1e6, 2) if own else None,
            "cpu_util": round(seconds / window_s, 4) if window_s else None,
        })
    return figures


def config_row(label: str, figures: Mapping[str, Any]) -> tuple[str, str]:
    """One configuration's line of the scale table: deliveries/s, Redis CPU per delivery in all (and
    against the single Redis), and each shard's part when there are several."""
    total, ratio = figures.get("redis_cpu_us_per_delivery"), figures.get("vs_single")
    text = (f"{fmt(figures.get('deliveries_per_s'))} deliveries/s, Redis {fmt(total, 1)} us/delivery"
            + (f" (x{fmt(ratio)} single)" if ratio is not None else "")
            + f", server {fmt(figures.get('server_cpu_us_per_delivery'), 1)} us/delivery"
            + f", p99 {fmt(figures.get('latency_ms_p99'))} ms"
            + f", per entry {fmt((figures.get('redis_calls_per_entry') or {}).get('all'))} Redis commands"
            + f" and {fmt((figures.get('redis_io_per_entry') or {}).get('reads'))} reads")
    shards = figures.get("shards") or []
    if len(shards) > 1:
        text += ("; shards " + " + ".join(fmt(s["cpu_us_per_delivery"], 1) for s in shards)
                 + " us/delivery, " + " / ".join(fmt(s["cpu_us_per_own_delivery"], 1) for s in shards)
                 + " per delivery of their own rooms (rooms " + "/".join(str(s["rooms"]) for s in shards)
                 + ", load " + "/".join(f"{s['load_share'] * 100:.0f}" for s in shards) + " %)")
    return label, text


@dataclass
class RedisUnderTest:
    """The Redis a configuration runs against: its URL, its masters, a client on each."""

    url: str
    cluster: bool
    shards: list[Shard]
    replicas: int = 0
    _clients: list[redis.Redis] = field(default_factory=list)

    def __post_init__(self) -> None:
        host = urlsplit(self.url).hostname or "127.0.0.1"
        self._clients = [redis.Redis.from_url(self.url)] if not self.cluster else [
            redis.Redis(host=host, port=shard.port) for shard in self.shards]

    @property
    def label(self) -> str:
        if not self.cluster:
            return "single Redis"
        masters = len(self.shards)
        return (f"cluster, {masters} master{'s' if masters > 1 else ''}"
                + (f" + {self.replicas} replica{'s' if self.replicas > 1 else ''} each" if self.replicas else ""))

    def commands(self) -> list[dict[str, int]]:
        """Each master's calls of each command so far."""
        return [command_calls(client.info("commandstats")) for client in self._clients]

    def io(self) -> list[dict[str, int]]:
        """Each master's socket reads and writes so far."""
        return [io_counts(client.info("stats")) for client in self._clients]

    def cpu_s(self) -> tuple[float, ...]:
        """Each master's CPU seconds so far."""
        return tuple(info_cpu_s(client.info("cpu")) for client in self._clients)

    def close(self) -> None:
        for client in self._clients:
            client.close()


@contextlib.contextmanager
def redis_under_test(url: str | None, masters: int, replicas: int) -> Iterator[RedisUnderTest]:
    """``masters`` 0: the single Redis at ``url`` (a private one, started here, when None); else a
    private cluster of ``masters`` masters with ``replicas`` replicas each. What was started is stopped."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the tests' Redis processes (tests/support)
    from tests.support.redis_cluster import RedisCluster
    from tests.support.redis_server import RedisServer

    with contextlib.ExitStack() as started:
        try:
            if masters == 0 and url:
                under = RedisUnderTest(url, False, [Shard(urlsplit(url).port or 6379)])
            elif masters == 0:
                single = RedisServer()
                started.callback(shutil.rmtree, single.dir, ignore_errors=True)
                started.callback(single.stop)
                single.start()
                under = RedisUnderTest(single.url, False, [Shard(single.port)])
            else:
                cluster = RedisCluster(masters, replicas)
                cluster.start()  # (stops what it started when it fails)
                started.callback(cluster.stop)
                shards = [Shard(port, tuple(ranges)) for port, ranges in cluster.masters()]
                under = RedisUnderTest(cluster.url, True, shards, replicas)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            raise SetupError(f"the Redis under test did not start: {exc}") from exc
        started.callback(under.close)
        yield under
