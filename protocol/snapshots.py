"""A member entering a room mid-answer: one ``llm.snapshot`` per running generation, then exactly the rest.

The store reads each running generation's text so far in the step that records the member in the
room's roster: deltas 0..K joined, K being the ``seq`` of the last delta sent (the text and K are
written in the very step that publishes those deltas, so they always agree). The member joined its
room, holding its live frames, *before* that step. So:

- every delta after K was sent after the read, and reaches the member (held, or live after);
- a delta up to K may reach it too (sent before the read, delivered here after the member joined,
  whether on this node's subscription or from a worker in this process): it is in the snapshot.

:class:`SnapshotGate` is what the member lets through, per generation (``rid``) of its snapshots:

1. a delta of a generation it has no snapshot of passes;
2. a delta of an earlier attempt is dropped: that attempt was fenced out before the read, its frames
   are late;
3. a delta of the snapshot's attempt with ``seq`` <= K is dropped: the snapshot holds it;
4. one that starts after K (``first_seq`` > K) passes, and the gate forgets the generation: its later
   deltas come after it, in order; so does one of a later attempt (a takeover after the read);
5. a merged frame spanning K (``first_seq`` <= K < ``seq``) cannot be cut (it does not say where its
   deltas begin): the relay never makes one, as it gates each delta as the worker sent it (one delta a
   frame) before merging any for a slow member. Were one to come, it passes whole (rule 4).

Frames that are not deltas pass. Pure: frames in, verdicts out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.deltas import Delta


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A running generation's text so far: deltas 0 to ``seq`` of ``attempt``, joined."""

    rid: str
    reply_to: str
    attempt: int
    seq: int
    text: str


class SnapshotGate:
    """The deltas one member may still receive, after the snapshots it was sent (see the module docstring)."""

    __slots__ = ("_after",)

    def __init__(self, snapshots: Iterable[Snapshot]) -> None:
        self._after: dict[str, tuple[int, int]] = {snap.rid: (snap.attempt, snap.seq) for snap in snapshots}

    def __bool__(self) -> bool:
        """Whether a delta may still be dropped (False: every frame passes from now on)."""
        return bool(self._after)

    def admit(self, delta: Delta | None) -> bool:
        """Whether the member gets this frame (``delta``: an ``llm.streaming`` frame parsed, None for any
        other frame)."""
        if delta is None:
            return True
        rid = delta.generation.get("rid")
        mark = self._after.get(rid) if isinstance(rid, str) else None
        if mark is None or not isinstance(rid, str):
            return True  # rule 1
        attempt, seq = mark
        delta_attempt = delta.generation.get("attempt", 1)
        if not isinstance(delta_attempt, int) or delta_attempt < attempt:
            return False  # rule 2
        if delta_attempt == attempt and delta.seq <= seq:
            return False  # rule 3
        del self._after[rid]  # rules 4 and 5
        return True
