"""A member's queued frames, in order, with the ``llm.streaming`` deltas of a backed-up connection merged.

- :attr:`Outbox.frames` holds the text frames to write, oldest first; a writer takes them from there.
- Deltas (:class:`~protocol.deltas.DeltaFrame`) are counted apart (:attr:`Outbox.deltas`): they are
  not stored, so they never make a member a slow consumer; :meth:`Outbox.counted` is what the
  member's limit applies to.
- :meth:`Outbox.add_delta` with ``merge`` (the member is backed up) merges a delta into the one
  queued last when it continues it (:mod:`protocol.deltas`). The merge in progress (:attr:`Outbox.run`)
  sits after :attr:`Outbox.frames`; its one frame is built and queued (:meth:`Outbox.seal`) when
  anything else is queued, or before a write. So the deltas of one stall cost one frame per
  generation, built once, and a member that keeps up gets each delta as it came.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from protocol.deltas import DeltaFrame, DeltaRun
from server.metrics import COUNTS


class Outbox:
    __slots__ = ("deltas", "frames", "run")

    def __init__(self) -> None:
        self.frames: deque[str] = deque()
        self.deltas = 0  # how many of ``frames`` are deltas
        self.run: DeltaRun | None = None  # deltas being merged, after ``frames``

    def __bool__(self) -> bool:
        return bool(self.frames) or self.run is not None

    def counted(self) -> int:
        """The frames queued that count toward the member's limit: every one but the deltas."""
        return len(self.frames) - self.deltas

    def add(self, frame: str) -> None:
        """Queue a frame that is not a delta."""
        if self.run is not None:
            self.seal()
        self.frames.append(frame)

    def extend(self, frames: Iterable[str]) -> None:
        """Queue frames that are not deltas."""
        if self.run is not None:
            self.seal()
        self.frames.extend(frames)

    def add_delta(self, frame: DeltaFrame, merge: bool) -> None:
        """Queue a delta; with ``merge``, into the delta queued last when it continues it."""
        run = self.run
        if merge:
            if run is not None:
                if run.add(frame):
                    COUNTS.deltas_merged += 1
                    return
            elif self.frames and type(last := self.frames[-1]) is DeltaFrame:
                run = DeltaRun.joining(last, frame)
                if run is not None:
                    self.frames.pop()
                    self.deltas -= 1
                    self.run = run
                    COUNTS.deltas_merged += 1
                    return
        if self.run is not None:
            self.seal()
        self.frames.append(frame)
        self.deltas += 1

    def keep_deltas(self, admit: Callable[[DeltaFrame], bool]) -> None:
        """Drop the queued deltas ``admit`` refuses (the merge in progress is sealed first)."""
        self.seal()
        kept = deque(frame for frame in self.frames if type(frame) is not DeltaFrame or admit(frame))
        self.deltas -= len(self.frames) - len(kept)
        self.frames = kept

    def seal(self) -> None:
        """Queue the frame of the merge in progress, if any."""
        run, self.run = self.run, None
        if run is not None:
            self.frames.append(run.frame())
            self.deltas += 1

    def take(self, other: Outbox) -> None:
        """Queue everything ``other`` holds, after what is here (then forget ``other``)."""
        self.seal()
        other.seal()
        self.frames.extend(other.frames)
        self.deltas += other.deltas

    def popleft(self) -> str:
        """The oldest frame, taken out (the merge in progress is sealed first when it is all that is left),
        as a plain ``str``."""
        if not self.frames:
            self.seal()
        frame = self.frames.popleft()
        if type(frame) is DeltaFrame:
            self.deltas -= 1
            return str(frame)  # for an ASGI server that wants exactly a str
        return frame

    def clear(self) -> None:
        """Forget everything queued (written, or dropped)."""
        self.frames.clear()
        self.deltas = 0
        self.run = None
