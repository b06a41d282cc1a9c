"""protocol.snapshots: which deltas a member that was sent ``llm.snapshot`` frames still gets."""

from __future__ import annotations

import orjson

from protocol.codec import llm_streaming_frame, merged_streaming_frame
from protocol.deltas import Delta, parse_delta
from protocol.snapshots import Snapshot, SnapshotGate

ROOM, REPLY_TO = "room001", "1700641234567-0"


def delta(seq: int, rid: str = "g-1", attempt: int = 1) -> Delta:
    parsed = parse_delta(llm_streaming_frame(ROOM, rid, REPLY_TO, seq, f"<{seq}>", attempt))
    assert parsed is not None
    return parsed


def merged(first_seq: int, seq: int, rid: str = "g-1") -> Delta:
    hd = orjson.loads(llm_streaming_frame(ROOM, rid, REPLY_TO, first_seq, ""))["hd"]
    text = "".join(f"<{n}>" for n in range(first_seq, seq + 1))
    parsed = parse_delta(merged_streaming_frame(hd, first_seq, seq, text))
    assert parsed is not None
    return parsed


def gate(seq: int = 4, attempt: int = 1, rid: str = "g-1") -> SnapshotGate:
    return SnapshotGate([Snapshot(rid, REPLY_TO, attempt, seq, "".join(f"<{n}>" for n in range(seq + 1)))])


def admitted(gate: SnapshotGate, *deltas: Delta) -> list[int]:
    return [d.seq for d in deltas if gate.admit(d)]


def test_rule_3_deltas_the_snapshot_holds_are_dropped_and_the_ones_after_it_pass() -> None:
    assert admitted(gate(seq=4), delta(2), delta(3), delta(4), delta(5), delta(6)) == [5, 6]


def test_rule_4_the_first_delta_after_the_snapshot_ends_the_gate() -> None:
    snapshots = gate(seq=4)
    assert snapshots.admit(delta(5)) and not snapshots  # nothing left to drop: every frame passes from now on


def test_rule_1_deltas_of_another_generation_pass() -> None:
    assert admitted(gate(seq=4, rid="g-1"), delta(0, rid="g-2"), delta(1, rid="g-2")) == [0, 1]


def test_frames_that_are_not_deltas_pass() -> None:
    assert gate().admit(None)


def test_rule_2_late_deltas_of_an_earlier_attempt_are_dropped() -> None:
    snapshots = gate(seq=1, attempt=2)
    assert admitted(snapshots, delta(0), delta(5), delta(9)) == []  # attempt 1 was fenced out before the read
    assert admitted(snapshots, delta(1, attempt=2), delta(2, attempt=2)) == [2]


def test_rule_4_a_later_attempt_passes_from_its_first_delta() -> None:
    snapshots = gate(seq=7, attempt=1)
    assert admitted(snapshots, delta(0, attempt=2), delta(1, attempt=2)) == [0, 1]  # a takeover after the read
    assert not snapshots


def test_a_member_without_snapshots_drops_nothing() -> None:
    none = SnapshotGate([])
    assert not none and admitted(none, delta(0), delta(1)) == [0, 1]


def test_rule_5_a_merged_frame_after_the_snapshot_passes_and_one_inside_it_is_dropped() -> None:
    assert admitted(gate(seq=4), merged(0, 3), merged(1, 4), merged(5, 8)) == [8]


def test_rule_5_a_merged_frame_spanning_the_snapshot_passes_whole() -> None:
    """It cannot be cut (its deltas' boundaries are not in it): the relay gates before merging, so it never
    makes one; a client that joins deltas by seq then sees the overlap in ``first_seq``."""
    assert admitted(gate(seq=4), merged(3, 6)) == [6]
