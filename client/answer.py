"""The bot's answer as it streams: deltas merged by ``seq``, snapshots, restarts. Pure logic.

A generation (one ``rid``) streams ``llm.streaming`` frames, ``seq`` 0, 1, 2... whose deltas joined
are its text; an ``llm.snapshot`` frame (``hd.seq`` K, ``bd.text``) stands for deltas 0..K joined (a
member that joined mid-answer, or resumed, gets one). A generation taken over by another worker
starts over: its frames carry ``hd.attempt`` 2 (3, ...) and ``seq`` from 0 again, and the text of the
earlier attempt is discarded. The stored ``llm.response`` has the whole text and ends it.

:class:`Answer` keeps the longest text it can vouch for: the deltas from 0 (or from a snapshot) with
no gap. A delta after a gap (frames missed while disconnected) waits for the ones before it, or for
a snapshot or the final text that covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.names import Event

SNAPSHOT = "llm.snapshot"  # the text so far of a running generation, for members that missed its start
Frame = dict[str, Any]


@dataclass
class Answer:
    """One generation's text so far; :meth:`apply` each of its frames, in the order received."""

    text: str = ""
    attempt: int = 1
    final: Frame | None = None  # the llm.response that ended it
    _next_seq: int = 0
    _ahead: dict[int, str] = field(default_factory=dict)  # deltas after a gap, by seq

    def apply(self, frame: Frame) -> bool:
        """Take one frame of the generation; True when :attr:`text` changed."""
        hd, bd = frame["hd"], frame["bd"]
        event, before = hd.get("event"), self.text
        if event == Event.LLM_RESPONSE:
            self.final, self.text = frame, str(bd.get("text", ""))
            return self.text != before
        if event not in (Event.LLM_STREAMING, SNAPSHOT) or self.final is not None:
            return False
        attempt = int(hd.get("attempt", 1))
        if attempt < self.attempt:
            return False  # a late frame of an attempt that was abandoned
        if attempt > self.attempt:
            self.attempt, self.text, self._next_seq, self._ahead = attempt, "", 0, {}
        seq = int(hd["seq"])
        if event == SNAPSHOT:
            if seq >= self._next_seq - 1:
                self.text, self._next_seq = str(bd.get("text", "")), seq + 1
        elif seq >= self._next_seq:
            self._ahead[seq] = str(bd.get("delta", ""))
        self._ahead = {s: d for s, d in self._ahead.items() if s >= self._next_seq}
        while self._next_seq in self._ahead:
            self.text += self._ahead.pop(self._next_seq)
            self._next_seq += 1
        return self.text != before
