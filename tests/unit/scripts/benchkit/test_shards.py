"""The scale benchmark's shards: which master holds a room, each shard's share of the load and CPU."""

from __future__ import annotations

from typing import Any

import pytest
from benchkit.procs import CpuSample
from benchkit.shards import (
    Shard,
    calls_per_entry,
    command_calls,
    config_row,
    info_cpu_s,
    io_counts,
    load_shares,
    merged,
    room_shard,
    shard_figures,
    shard_index,
)
from redis.crc import key_slot

from server.store.keys import stream_key
from tests.support.redis_cluster import slot_ranges

THREE = [Shard(7001, ((0, 5460),)), Shard(7002, ((5461, 10922),)), Shard(7003, ((10923, 16383),))]


def test_a_slot_belongs_to_the_shard_whose_ranges_hold_it() -> None:
    split = [Shard(1, ((0, 99), (200, 299))), Shard(2, ((100, 199), (300, 16383)))]

    assert [shard_index(slot, split) for slot in (0, 99, 100, 250, 300, 16383)] == [0, 0, 1, 0, 1, 1]


def test_a_slot_no_shard_serves_is_an_error() -> None:
    with pytest.raises(ValueError, match="slot 9"):
        shard_index(9, [Shard(1, ((10, 16383),))])


def test_a_room_is_on_the_shard_of_its_streams_slot_and_a_single_redis_holds_every_room() -> None:
    slot = key_slot(stream_key("r1").encode())

    assert room_shard("r1", THREE) == shard_index(slot, THREE)
    assert room_shard("r1", [Shard(6379)]) == 0


def test_cpu_seconds_are_system_plus_user_time_of_info_cpu() -> None:
    assert info_cpu_s({"used_cpu_sys": 1.25, "used_cpu_user": "2.5", "used_cpu_sys_children": 9.0}) == 3.75


def test_command_calls_are_read_from_info_commandstats() -> None:
    info = {"cmdstat_evalsha": {"calls": 12, "usec": 40}, "cmdstat_xread": {"calls": 3, "usec": 9}}

    assert command_calls(info) == {"evalsha": 12, "xread": 3}


def test_socket_reads_and_writes_are_read_from_info_stats() -> None:
    assert io_counts({"total_reads_processed": 7, "total_writes_processed": 5, "total_connections_received": 2}) == {
        "reads": 7, "writes": 5}


def test_the_masters_calls_add_up_command_by_command() -> None:
    assert merged([{"evalsha": 2, "info": 1}, {"evalsha": 3, "spublish": 4}]) == {"evalsha": 5, "info": 1,
                                                                                  "spublish": 4}


def test_calls_per_entry_count_the_commands_run_between_two_readings_most_called_first() -> None:
    before = {"evalsha": 10, "info": 5}
    after = {"evalsha": 210, "info": 6, "xread": 60}

    assert calls_per_entry(before, after, entries=200) == {"all": 1.305, "evalsha": 1.0, "xread": 0.3,
                                                          "info": 0.005}
    assert calls_per_entry(before, after, entries=0) == {}


def test_each_shard_gets_the_share_of_the_entries_stored_in_its_rooms() -> None:
    rooms = {room_shard(f"room-{n}", THREE): f"room-{n}" for n in range(200)}  # one room on each shard
    lengths = {rooms[0]: 100, rooms[1]: 300, rooms[2]: 0}

    assert load_shares(lengths, THREE) == [0.25, 0.75, 0.0]
    assert load_shares({}, THREE) == [0.0, 0.0, 0.0]


def test_shard_cpu_per_delivery_adds_up_to_the_total_and_per_own_delivery_divides_by_its_share() -> None:
    figures = shard_figures([0.5, 1.5], window_s=10.0, deliveries=100_000, shares=[0.25, 0.75], rooms=[3, 7])

    assert figures == [
        {"rooms": 3, "load_share": 0.25, "cpu_us_per_delivery": 5.0, "cpu_us_per_own_delivery": 20.0,
         "cpu_util": 0.05},
        {"rooms": 7, "load_share": 0.75, "cpu_us_per_delivery": 15.0, "cpu_us_per_own_delivery": 20.0,
         "cpu_util": 0.15},
    ]


def test_a_shard_without_load_or_a_run_without_deliveries_has_no_cost_per_delivery() -> None:
    [idle] = shard_figures([0.1], window_s=0.0, deliveries=0, shares=[0.0], rooms=[0])

    assert (idle["cpu_us_per_delivery"], idle["cpu_us_per_own_delivery"], idle["cpu_util"]) == (None, None, None)


def test_the_cpu_of_each_shard_in_a_window_is_the_difference_of_two_samples() -> None:
    used = CpuSample(12.0, 3.0, 1.5, 0.5, (1.0, 0.5)) - CpuSample(2.0, 1.0, 0.5, 0.25, (0.5, 0.0))

    assert used == CpuSample(10.0, 2.0, 1.0, 0.25, (0.5, 0.5))


def test_a_configuration_is_one_line_with_its_shards_when_it_has_several() -> None:
    single: dict[str, Any] = {"deliveries_per_s": 30000.0, "redis_cpu_us_per_delivery": 6.0, "vs_single": None,
              "server_cpu_us_per_delivery": 14.0, "latency_ms_p99": 12.5,
              "shards": [{"rooms": 50, "load_share": 1.0, "cpu_us_per_delivery": 6.0, "cpu_us_per_own_delivery": 6.0}]}
    cluster = {**single, "redis_cpu_us_per_delivery": 6.6, "vs_single": 1.1,
               "shards": [{"rooms": 20, "load_share": 0.4, "cpu_us_per_delivery": 2.6, "cpu_us_per_own_delivery": 6.5},
                          {"rooms": 30, "load_share": 0.6, "cpu_us_per_delivery": 4.0, "cpu_us_per_own_delivery": 6.7}]}

    assert config_row("single Redis", single) == (
        "single Redis", "30,000 deliveries/s, Redis 6.0 us/delivery, server 14.0 us/delivery, p99 12.50 ms, "
                        "per entry - Redis commands and - reads")
    cluster |= {"redis_calls_per_entry": {"all": 1.5}, "redis_io_per_entry": {"all": 0.75, "reads": 0.5}}
    assert config_row("cluster, 2 masters", cluster)[1] == (
        "30,000 deliveries/s, Redis 6.6 us/delivery (x1.10 single), server 14.0 us/delivery, p99 12.50 ms, "
        "per entry 1.50 Redis commands and 0.50 reads; "
        "shards 2.6 + 4.0 us/delivery, 6.5 / 6.7 per delivery of their own rooms (rooms 20/30, load 40/60 %)")


@pytest.mark.parametrize("masters", [1, 2, 3, 5, 16384])
def test_the_slots_split_into_contiguous_ranges_as_even_as_can_be(masters: int) -> None:
    ranges = slot_ranges(masters)

    assert ranges[0][0] == 0 and ranges[-1][1] == 16383
    assert all(ranges[n][1] + 1 == ranges[n + 1][0] for n in range(masters - 1))
    assert max(last - first for first, last in ranges) - min(last - first for first, last in ranges) <= 1
