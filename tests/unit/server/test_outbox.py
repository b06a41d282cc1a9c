"""The member's queue: deltas merged only when asked, in order, and never counted toward the limit."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from protocol.codec import llm_streaming_frame
from protocol.deltas import DeltaFrame
from server.metrics import COUNTS
from server.outbox import Outbox

ROOM, REPLY_TO = "room001", "1700641234567-0"


def delta(seq: int, rid: str = "g-1", attempt: int = 1) -> DeltaFrame:
    return DeltaFrame(llm_streaming_frame(ROOM, rid, REPLY_TO, seq, f"<{seq}>", attempt))


def shown(outbox: Outbox) -> list[Any]:
    """What a write would take: plain frames as they are, deltas as ``(rid, first_seq, seq, text)``."""
    outbox.seal()
    out: list[Any] = []
    for frame in outbox.frames:
        if type(frame) is DeltaFrame:
            parsed = orjson.loads(str(frame))
            hd = parsed["hd"]
            out.append((hd["rid"], hd["first_seq"], hd["seq"], parsed["bd"]["delta"]))
        else:
            out.append(frame)
    return out


def test_without_merge_every_delta_is_queued_as_it_came() -> None:
    outbox = Outbox()
    frames = [delta(0), delta(1), delta(2)]
    for frame in frames:
        outbox.add_delta(frame, merge=False)
    assert list(outbox.frames) == frames and all(a is b for a, b in zip(outbox.frames, frames, strict=True))
    assert outbox.deltas == 3 and outbox.counted() == 0


def test_with_merge_consecutive_deltas_of_one_generation_become_one_frame() -> None:
    outbox, before = Outbox(), COUNTS.deltas_merged
    for seq in range(5):
        outbox.add_delta(delta(seq), merge=True)
    assert not outbox.frames and outbox.run is not None  # the merge is open until something else comes
    assert shown(outbox) == [("g-1", 0, 4, "<0><1><2><3><4>")]
    assert COUNTS.deltas_merged - before == 4
    assert outbox.deltas == 1 and outbox.counted() == 0


def test_a_merge_joins_the_delta_queued_before_it_unmerged() -> None:
    outbox = Outbox()
    outbox.add_delta(delta(0), merge=False)  # queued while the member kept up
    outbox.add_delta(delta(1), merge=True)  # then it fell behind
    assert shown(outbox) == [("g-1", 0, 1, "<0><1>")]


def test_another_frame_ends_a_merge_and_keeps_its_place() -> None:
    outbox = Outbox()
    for seq in (0, 1):
        outbox.add_delta(delta(seq), merge=True)
    outbox.add("stored message")
    for seq in (2, 3):
        outbox.add_delta(delta(seq), merge=True)
    assert shown(outbox) == [("g-1", 0, 1, "<0><1>"), "stored message", ("g-1", 2, 3, "<2><3>")]


def test_only_consecutive_deltas_of_one_generation_and_attempt_merge() -> None:
    outbox = Outbox()
    for frame in (delta(0, "g-1"), delta(1, "g-1"), delta(0, "g-2"), delta(1, "g-2"),  # another generation
                  delta(3, "g-2"),  # a gap
                  delta(0, "g-2", attempt=2), delta(1, "g-2", attempt=2)):  # started over: another attempt
        outbox.add_delta(frame, merge=True)
    assert shown(outbox) == [("g-1", 0, 1, "<0><1>"), ("g-2", 0, 1, "<0><1>"), ("g-2", 3, 3, "<3>"),
                             ("g-2", 0, 1, "<0><1>")]


def test_first_seq_is_always_the_previous_seq_plus_one() -> None:
    outbox = Outbox()
    for seq in range(40):
        outbox.add_delta(delta(seq), merge=seq % 7 != 0)
        if seq % 9 == 0:
            outbox.add(f"m{seq}")
    spans = [frame[1:3] for frame in shown(outbox) if isinstance(frame, tuple)]
    assert spans[0][0] == 0 and spans[-1][1] == 39
    assert all(later[0] == earlier[1] + 1 for earlier, later in itertools.pairwise(spans))
    assert any(first < last for first, last in spans)


def test_deltas_never_count_toward_the_limit_stored_frames_do() -> None:
    outbox = Outbox()
    for n in range(50):
        outbox.add_delta(delta(0, rid=f"g-{n}"), merge=True)  # 50 generations: nothing merges
    outbox.add("m")
    outbox.add_delta(delta(1, rid="g-49"), merge=True)
    outbox.seal()
    assert len(outbox.frames) == 52 and outbox.deltas == 51 and outbox.counted() == 1


def test_popleft_takes_frames_in_order_as_plain_text_and_keeps_the_count() -> None:
    outbox = Outbox()
    outbox.add("m")
    outbox.add_delta(delta(0), merge=True)
    outbox.add_delta(delta(1), merge=True)  # the open merge is all that is left after "m"
    assert outbox.popleft() == "m"
    merged = outbox.popleft()
    assert type(merged) is str and orjson.loads(merged)["hd"]["first_seq"] == 0
    assert not outbox and outbox.deltas == 0


def test_take_queues_the_other_outbox_after_this_one_merges_included() -> None:
    queue, held = Outbox(), Outbox()
    queue.add_delta(delta(0), merge=True)
    queue.add_delta(delta(1), merge=True)
    held.add("m")
    held.add_delta(delta(2), merge=True)
    held.add_delta(delta(3), merge=True)
    queue.take(held)
    assert queue.deltas == 2 and queue.counted() == 1
    assert shown(queue) == [("g-1", 0, 1, "<0><1>"), "m", ("g-1", 2, 3, "<2><3>")]


def test_clear_forgets_everything() -> None:
    outbox = Outbox()
    outbox.add("m")
    outbox.add_delta(delta(0), merge=True)
    outbox.add_delta(delta(1), merge=True)
    outbox.clear()
    assert not outbox and outbox.deltas == 0 and outbox.run is None
