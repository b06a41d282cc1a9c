"""scripts/bench.py as its users run it: a real process that starts real servers, on the test Redis.

Brief, tiny loads: these check that the harness works and that its check would see a fault, not
how fast anything is (timing belongs in the benchmark's output, not in assertions).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench.py"
TIMEOUT_S = 100.0
BRIEF = ("--duration", "1", "--warmup", "0.5", "--drain-timeout", "10")


def run_bench(*args: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """The finished process and its JSON lines (stdout holds nothing else)."""
    result = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    return result, [orjson.loads(line) for line in result.stdout.splitlines()]


def assert_nothing_lost_duplicated_or_reordered(check: dict[str, Any]) -> None:
    assert check["ok"] is True, check
    assert (check["lost"], check["duplicated"], check["reordered"], check["unknown"], check["unstored"]) == (0,) * 5
    assert check["stored"] == check["accepted"] > 0


@pytest.mark.parametrize("load", [
    pytest.param(("--rate", "200"), id="fixed-rate"),
    pytest.param(("--rate", "0", "--window", "4"), id="saturation"),
    pytest.param(("--rate", "0", "--window", "2", "--client", "websockets"), id="websockets-client"),
    pytest.param(("--rate", "0", "--window", "2", "--nodes", "2"), id="two-nodes"),
])
def test_relay_run_delivers_every_message_to_every_member_once_and_in_stream_order(
    redis_url: str, room: str, rdb: redis.Redis, load: tuple[str, ...]
) -> None:
    result, [record] = run_bench("--mode", "relay", "--redis-url", redis_url, "--rooms", "3", "--members", "3",
                                 *BRIEF, *load, "--room-prefix", f"{room}-")

    assert result.returncode == 0, result.stderr
    assert record["mode"] == "relay" and record["ok"] is True
    assert_nothing_lost_duplicated_or_reordered(record["check"])
    assert record["check"]["members"] == 9
    figures = record["figures"]
    assert figures["deliveries"] > 0 and figures["deliveries_per_s"] > 0
    assert (figures["errors"], figures["closed"]) == (0, 0)
    assert figures["latency_ms_p50"] is not None and figures["server_cpu_util"] is not None
    assert {t["name"] for t in record["targets"]} and not any(t["setup_matches"] for t in record["targets"])
    assert "check (XRANGE)" in result.stderr
    assert rdb.keys(f"chat:*:{room}-*") == []  # the run deleted its rooms' keys


def test_relay_on_the_embedded_store_is_checked_through_the_history_api() -> None:
    result, [record] = run_bench("--mode", "relay", "--rooms", "2", "--members", "2", "--rate", "100", *BRIEF)

    assert result.returncode == 0, result.stderr
    assert record["params"]["store"] == "embedded"
    assert_nothing_lost_duplicated_or_reordered(record["check"])
    assert "check (history API)" in result.stderr


def test_keep_leaves_the_streams_and_they_hold_what_the_members_received(
    redis_url: str, room: str, rdb: redis.Redis
) -> None:
    result, [record] = run_bench("--mode", "relay", "--redis-url", redis_url, "--rooms", "2", "--members", "2",
                                 "--rate", "100", *BRIEF, "--room-prefix", f"{room}-", "--keep")

    assert result.returncode == 0, result.stderr
    streams = [rdb.xlen(f"chat:session:{room}-r{n}") for n in range(2)]
    assert sum(streams) == record["check"]["stored"] > 0


def test_history_run_times_pages_that_hold_exactly_the_expected_entries(
    redis_url: str, room: str, rdb: redis.Redis
) -> None:
    result, [record] = run_bench("--mode", "history", "--redis-url", redis_url, "--entries", "5000",
                                 "--samples", "3", "--room-prefix", f"{room}-")

    assert result.returncode == 0, result.stderr
    assert record["mode"] == "history" and record["ok"] is True
    assert record["check"] == {"ok": True, "requests": 9,
                               "wrong_pages": {"newest": 0, "before_middle": 0, "after_middle": 0}}
    assert record["figures"]["filled"] is True
    assert all(record["figures"][f"{kind}_bytes"] > 0 for kind in ("newest", "before_middle", "after_middle"))
    assert rdb.keys(f"chat:*:{room}-*") == []


def test_bulk_run_times_echoes_while_readers_page_through_big_entries(
    redis_url: str, room: str, rdb: redis.Redis
) -> None:
    result, [record] = run_bench("--mode", "bulk", "--redis-url", redis_url, "--entries", "30", "--entry-bytes",
                                 "20000", "--readers", "2", "--duration", "1", "--room-prefix", f"{room}-")

    assert result.returncode == 0, result.stderr
    assert record["mode"] == "bulk" and record["ok"] is True
    figures = record["figures"]
    assert figures["echoes"] > 0 and figures["echo_lost"] == 0 and figures["pages"] > 0
    assert figures["reader_errors"] == 0 and figures["echo_ms_max"] >= figures["echo_ms_p99"] >= figures["echo_ms_p50"]
    assert [t["name"] for t in record["targets"]] == ["bulk_echo_ms_p99", "bulk_echo_ms_max"]
    assert not any(t["setup_matches"] for t in record["targets"])  # a brief run: not the target's setup
    assert rdb.keys(f"chat:*:{room}-*") == []


def scale_run(redis_url: str, room: str, *args: str) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A brief ``--mode scale`` run: what it printed, its two relay records (each checked: nothing lost,
    duplicated or reordered) and its summary."""
    result, [first, second, summary] = run_bench("--mode", "scale", "--redis-url", redis_url, *args, "--window", "2",
                                                 *BRIEF, "--room-prefix", f"{room}-")
    assert result.returncode == 0, result.stderr
    for record in (first, second):
        assert record["mode"] == "relay"
        assert_nothing_lost_duplicated_or_reordered(record["check"])
    return result.stderr, first, second, summary


def test_scale_run_compares_one_process_with_one_port_served_by_two_workers(
    redis_url: str, room: str, rdb: redis.Redis
) -> None:
    _, one, two, summary = scale_run(redis_url, room, "--workers", "2", "--rooms", "3", "--members", "3")

    assert summary["mode"] == "scale" and summary["params"]["nodes"] == "1 vs 2 workers"
    figures = summary["figures"]
    assert (figures["deliveries_per_s_1"], figures["deliveries_per_s_2_workers"]) == (
        one["figures"]["deliveries_per_s"], two["figures"]["deliveries_per_s"])
    assert rdb.keys(f"chat:*:{room}-*") == []


def test_llm_run_with_a_slow_reader_shows_its_merged_frames_and_that_it_was_not_closed(
        redis_url: str, room: str, rdb: redis.Redis) -> None:
    result, [record] = run_bench("--mode", "llm", "--redis-url", redis_url, "--rooms", "2", "--slow-readers", "1",
                                 "--duration", "2", "--drain-timeout", "20", "--room-prefix", f"{room}-")

    assert result.returncode == 0, result.stderr
    check = record["check"]
    assert record["ok"] is True and check["ok"] is True and check["faults"] == 0
    assert (check["lost"], check["duplicated"], check["reordered"], check["unknown"], check["unstored"]) == (0,) * 5
    figures = record["figures"]
    assert figures["slow_readers"] == 1 and figures["slow_closed"] == 0 and figures["closed"] == 0
    assert figures["slow_answers"] > 0 and figures["slow_merged_frames"] > 0
    assert figures["slow_frames"] < figures["slow_deltas"]  # the deltas queued while it did not read came merged
    assert "slow readers" in result.stderr
    assert rdb.keys(f"chat:*:{room}-*") == []


def test_scale_run_compares_a_single_redis_with_a_cluster_shard_by_shard(
    redis_url: str, room: str, rdb: redis.Redis
) -> None:
    printed, single, cluster, summary = scale_run(redis_url, room, "--cluster", "2", "--rooms", "4", "--members", "2")

    assert single["params"]["store"] == redis_url and cluster["params"]["store"] != redis_url
    assert len(single["figures"]["redis_shards_cpu_s"]) == 1 and len(cluster["figures"]["redis_shards_cpu_s"]) == 2
    assert summary["mode"] == "scale" and summary["ok"] is True
    first, second = summary["figures"]["configurations"]
    assert (first["name"], second["name"]) == ("single Redis", "cluster, 2 masters")
    assert second["deliveries_per_s"] == cluster["figures"]["deliveries_per_s"]
    assert [shard["rooms"] for shard in first["shards"]] == [4] and sum(s["rooms"] for s in second["shards"]) == 4
    assert sum(shard["load_share"] for shard in second["shards"]) == pytest.approx(1.0)
    assert second["vs_single"] is not None
    assert "  single Redis  " in printed and "  cluster, 2 masters  " in printed
    assert rdb.keys(f"chat:*:{room}-*") == []  # the single Redis's rooms deleted (the cluster was stopped)


@pytest.mark.parametrize("args", [
    ("--mode", "relay", "--cluster", "3"),  # a comparison of scale
    ("--mode", "scale", "--cluster", "0"),  # a cluster has a master at least
    ("--mode", "scale", "--cluster", "1,x"),
    ("--mode", "relay", "--workers", "2"),  # WORKERS for the relay mode goes in --server-env
    ("--mode", "history"),  # fills the stream in Redis
    ("--mode", "bulk"),  # fills the stream in Redis
    ("--mode", "relay", "--nodes", "2"),  # nodes share rooms only through Redis
    ("--mode", "relay", "--members", "1"),  # nobody to deliver to
    ("--mode", "relay", "--room-prefix", "bad prefix"),
    ("--mode", "relay", "--slow-readers", "1"),  # slow readers of the bot's answers
    ("--mode", "llm", "--rooms", "2", "--slow-readers", "3"),  # one per room at most
])
def test_options_that_cannot_work_are_refused_before_anything_starts(args: tuple[str, ...]) -> None:
    result, records = run_bench(*args)

    assert (result.returncode, records) == (2, [])
    assert "error:" in result.stderr and "Traceback" not in result.stderr
