"""Merging consecutive ``llm.streaming`` deltas into one frame, for a reader that fell behind.

Deltas are not stored: a member whose connection is backed up would otherwise queue one frame per
token. Instead, the deltas queued for it that continue one another are sent as one frame:

- ``bd.delta`` is their texts joined, ``hd.seq`` the last one's ``seq``, ``hd.first_seq`` the first
  one's ``first_seq``; the rest of ``hd`` is what they all carry.
- Two deltas join only when they belong to one generation and one attempt (every field of ``hd``
  but ``seq`` and ``first_seq`` is the same: ``rid``, ``reply_to``, ``attempt``...) and the second
  continues the first (its ``first_seq`` is the first's ``seq`` + 1). Nothing is dropped or reordered,
  so a reader always finds ``first_seq`` = the previous frame's ``seq`` + 1 within an attempt.
- A frame that does not parse as a delta (another shape, a ``bd`` with more than ``delta``) joins
  nothing: it is sent as it came.

:class:`DeltaFrame` is a delta's text as the relay passes it on: a ``str`` (written like any other
frame) of its own type, so that a queue tells deltas from other frames without parsing them. It is
parsed only when a merge is considered (:attr:`DeltaFrame.delta`), once for all the members it goes
to. :class:`DeltaRun` collects the deltas of one merge and builds its frame once, when it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from protocol.codec import merged_streaming_frame
from protocol.names import Event

_SEQS = ("seq", "first_seq")


@dataclass(frozen=True, slots=True)
class Delta:
    """One ``llm.streaming`` frame, parsed: deltas ``first_seq`` to ``seq`` (one delta: equal)."""

    hd: dict[str, Any]  # as received, ``seq`` and ``first_seq`` included
    generation: dict[str, Any]  # ``hd`` without ``seq`` and ``first_seq``: equal for one generation and attempt
    first_seq: int
    seq: int
    text: str


def parse_delta(frame: str | bytes) -> Delta | None:
    """The delta ``frame`` carries; None for anything that is not an ``llm.streaming`` frame of the
    documented shape (``hd.seq`` >= ``hd.first_seq`` >= 0, ``first_seq`` defaulting to ``seq``;
    ``bd`` holding only a string ``delta``)."""
    try:
        envelope = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict) or envelope.keys() != {"hd", "bd"}:
        return None
    hd, bd = envelope["hd"], envelope["bd"]
    if not isinstance(hd, dict) or not isinstance(bd, dict) or hd.get("event") != Event.LLM_STREAMING:
        return None
    seq = hd.get("seq")
    first_seq = hd.get("first_seq", seq)
    text = bd.get("delta")
    if type(seq) is not int or type(first_seq) is not int or not 0 <= first_seq <= seq:
        return None
    if not isinstance(text, str) or len(bd) != 1:
        return None
    generation = {key: value for key, value in hd.items() if key not in _SEQS}
    return Delta(hd, generation, first_seq, seq, text)


class DeltaFrame(str):
    """An ``llm.streaming`` frame's text, tagged as a delta by its type."""

    @cached_property
    def delta(self) -> Delta | None:
        """The frame, parsed (None when it cannot be merged with anything)."""
        return parse_delta(str(self))  # orjson reads a str, not a subclass of it


class DeltaRun:
    """Consecutive deltas of one generation and attempt, merged into one frame."""

    __slots__ = ("_first", "_seq", "_texts")

    def __init__(self, first: Delta) -> None:
        self._first = first
        self._seq = first.seq
        self._texts = [first.text]

    @classmethod
    def joining(cls, first: DeltaFrame, second: DeltaFrame) -> DeltaRun | None:
        """A run of ``first`` then ``second``; None when ``second`` does not continue ``first``."""
        head = first.delta
        if head is None:
            return None
        run = cls(head)
        return run if run.add(second) else None

    @property
    def first_seq(self) -> int:
        return self._first.first_seq

    @property
    def seq(self) -> int:
        return self._seq

    def add(self, frame: DeltaFrame) -> bool:
        """Take ``frame`` in when it continues the run; False (the run unchanged) when it does not."""
        delta = frame.delta
        if delta is None or delta.first_seq != self._seq + 1 or delta.generation != self._first.generation:
            return False
        self._texts.append(delta.text)
        self._seq = delta.seq
        return True

    def frame(self) -> DeltaFrame:
        """The run's one frame (built on each call: call it once the run is complete)."""
        return DeltaFrame(merged_streaming_frame(self._first.hd, self._first.first_seq, self._seq,
                                                 "".join(self._texts)))
