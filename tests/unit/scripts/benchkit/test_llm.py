"""The LLM mode's check of one member's deltas: merged frames (first_seq..seq) count as the deltas they carry."""

from __future__ import annotations

import orjson
from benchkit.llm import Faults, Member, Room, Tally, inspect


def streaming(seq: int, delta: str, first_seq: int | None = None) -> bytes:
    hd = {"event": "llm.streaming", "rid": "g-1", "seq": seq, "first_seq": seq if first_seq is None else first_seq}
    return orjson.dumps({"hd": hd, "bd": {"delta": delta}})


def response(text: str) -> bytes:
    return orjson.dumps({"hd": {"event": "llm.response", "id": "2-0", "rid": "g-1"}, "bd": {"text": text}})


def faults_of(*received: list[bytes]) -> Faults:
    room = Room(0, "room", Tally(asking=False))
    for k, frames in enumerate(received):
        member = Member(room, k)
        room.members.append(member)
        for frame in frames:
            member.on_text(frame)
    faults, _, _, _ = inspect([room], pace_ns=0)
    return faults


def test_merged_deltas_count_as_the_deltas_they_carry() -> None:
    prompt = [streaming(0, "A"), streaming(1, " slow"), streaming(2, " reader"), response("A slow reader")]
    slow = [streaming(0, "A"), streaming(2, " slow reader", first_seq=1), response("A slow reader")]
    assert faults_of(prompt, slow).total == 0


def test_a_delta_missing_from_a_merge_is_lost() -> None:
    prompt = [streaming(0, "A"), streaming(1, " slow"), streaming(2, " reader"), response("A slow reader")]
    gap = [streaming(1, "A slow", first_seq=0), streaming(2, " reader", first_seq=2), response("A slow reader")]
    assert faults_of(prompt, gap).total == 0
    cut = [streaming(0, "A"), streaming(2, " reader", first_seq=2), response("A slow reader")]
    faults = faults_of(prompt, cut)
    assert faults.lost == 1 and faults.mismatched == 1


def test_a_slow_reader_counts_its_frames_merged_frames_and_deltas_and_its_gaps_are_not_the_relay_s() -> None:
    room = Room(0, "room", Tally(asking=False))
    prompt, slow = Member(room, 0), Member(room, 1, slow=True)
    room.members += [prompt, slow]
    for frame in (streaming(0, "A"), streaming(1, " slow"), streaming(2, " reader"), response("A slow reader")):
        prompt.on_text(frame)
    for frame in (streaming(0, "A"), streaming(2, " slow reader", first_seq=1), response("A slow reader")):
        slow.on_text(frame)
    assert (slow.frames, slow.merged, slow.deltas, slow.responses) == (2, 1, 3, 1)
    assert room.tally.deltas == 3  # the prompt member's only
    faults, added, firsts, complete = inspect([room], pace_ns=0)
    assert faults.total == 0 and complete == 1
    assert len(added) == 2 and len(firsts) == 1  # the prompt member's gaps and first delta only


def test_a_room_does_not_wait_for_its_slow_reader() -> None:
    room = Room(0, "room", Tally(asking=False))
    room.members += [Member(room, 0), Member(room, 1), Member(room, 2, slow=True)]
    room.members[0].conn = type("Conn", (), {"send": lambda self, text: None})()
    room.ask()
    assert room.waiting == {0, 1}
