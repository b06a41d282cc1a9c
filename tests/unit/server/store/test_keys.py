"""Every key of a room hashes to its stream's slot (one shard of a Redis Cluster holds the room),
and a node's shard channel of a room too; the stream keeps its documented name."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from server.store import keys

ROOMS = ["room001", "a", "Z-9_x", "x" * 64]


@pytest.mark.parametrize("room", ROOMS)
def test_every_key_and_shard_channel_of_a_room_is_in_its_stream_s_slot(room: str) -> None:
    names = [keys.epoch_key(room), keys.presence_key(room), keys.followers_key(room), keys.room_instance_key(room),
             keys.dedupe_key(room, "A", "c-1"), keys.llm_lock_key(room), keys.llm_fence_key(room),
             keys.llm_ended_key(room, "r1"), keys.llm_cancelled_key(room, "r1"), keys.llm_asker_key(room, "r1"),
             keys.llm_partial_key(room), keys.llm_partial_text_key(room), keys.node_shard_channel("n1", room)]
    assert keys.stream_key(room) == f"chat:session:{room}"
    assert {key_slot(name.encode()) for name in names} == {key_slot(keys.stream_key(room).encode())}


def test_rooms_spread_over_the_slots() -> None:
    slots = {key_slot(keys.epoch_key(f"room{n}").encode()) for n in range(100)}
    assert len(slots) > 90
