"""What a client remembers of its room, and the rules that make resume and exactly-once invisible.

Pure logic (no sockets, no asyncio): :class:`RoomState` is fed every frame the connections receive
and answers which of them the caller sees.

- **Cursor.** ``last_id`` is the id of the newest stored entry seen (or, after ``session.ready``, the
  room's newest entry when the connection joined); ``epoch`` is the stream's epoch. A reconnect sends
  both (:meth:`RoomState.resume_params`), so the server replays exactly what was missed.
- **Each stored message once.** Stream ids only grow, so a stored frame whose id is not after the
  cursor was seen already: the sender-only re-broadcast of a re-sent ``cid``, or an entry replayed
  twice. It is dropped.
- **A resume's replay** is held until its ``session.ready``, which the caller sees first: with
  ``recovered: false`` the cursor could not be honoured, and the replay that follows is everything
  retained (the caller replaces what it shows), so it is delivered whole and the cursor starts over.
- **Members** follow ``session.ready`` and the presence frames.
- **Generations** (the bot's answers under way) start from ``session.ready``'s ``generations`` and
  follow the bot's frames: a generation is running from its first ``llm.streaming`` or
  ``llm.snapshot``, queued from its ``llm.queued``, and gone at its ``llm.response`` or ``llm.error``;
  when a queued one starts or leaves the queue, the ones behind it move up by one.
  :attr:`RoomState.answers` holds each running one's text so far (:class:`~client.answer.Answer`),
  taken from its ``llm.snapshot`` on joining and its deltas after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from client.answer import Answer
from protocol.names import DEFAULT_ROLE, Event

Frame = dict[str, Any]
NOTHING = "0"  # the cursor of a client that has seen no entry: a resume from it replays everything
QUEUED = "llm.queued"  # a question waiting for the bot's turn (hd.position N >= 1)
RUNNING_EVENTS = frozenset({Event.LLM_STREAMING, Event.LLM_SNAPSHOT})
ENDING_EVENTS = frozenset({Event.LLM_RESPONSE, Event.LLM_ERROR})


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id (``ms-seq`` or ``ms``) as a tuple that sorts as the stream does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def event_of(frame: Frame) -> str | None:
    hd = frame.get("hd")
    event = hd.get("event") if isinstance(hd, dict) else None
    return event if isinstance(event, str) else None


def stored_id(frame: Frame) -> str | None:
    """The stream id of a stored entry's frame (``hd.id``), None for frames that are not stored."""
    entry_id = frame["hd"].get("id")
    return entry_id if isinstance(entry_id, str) else None


@dataclass
class RoomState:
    last_id: str | None = None  # the resume cursor (None: join fresh)
    epoch: str | None = None
    role: str = DEFAULT_ROLE  # the role the server bound the connection to (session.ready's hd.role)
    conn: str | None = None
    members: list[Frame] = field(default_factory=list)
    generations: list[Frame] = field(default_factory=list)  # [{"rid", "reply_to", "state", "position"}]
    answers: dict[str, Answer] = field(default_factory=dict)  # rid -> the text so far, for running ones
    _replay: list[Frame] = field(default_factory=list)

    def resume_params(self) -> dict[str, str]:
        """The query parameters of the next connection: ``last_id`` and ``epoch`` once known."""
        params: dict[str, str] = {}
        if self.last_id is not None:
            params["last_id"] = self.last_id
            if self.epoch is not None:
                params["epoch"] = self.epoch
        return params

    def connection_opened(self) -> None:
        """A new connection: what arrives before its ``session.ready`` is its resume's replay."""
        self._replay = []

    def hold(self, frame: Frame) -> None:
        """A frame received before ``session.ready``: kept until it arrives."""
        self._replay.append(frame)

    def ready(self, frame: Frame) -> list[Frame]:
        """``session.ready`` arrived: the frames the caller sees now (``session.ready`` first, then the
        replay it ends), each stored one once."""
        hd, bd = frame["hd"], frame["bd"]
        self.role, self.conn = str(hd.get("role", DEFAULT_ROLE)), hd.get("conn")
        self.members = [dict(member) for member in bd.get("members", [])]
        self.generations = [dict(generation) for generation in bd.get("generations", [])]
        listed = {generation.get("rid") for generation in self.generations}
        self.answers = {rid: answer for rid, answer in self.answers.items() if rid in listed}
        self.epoch = bd.get("epoch")
        newest = bd.get("last_id")
        replay, self._replay = self._replay, []
        if not bd.get("recovered", True):
            self.last_id = None  # a fresh start: everything retained follows, seen before or not
        delivered = [f for f in replay if self.admit(f)]
        if newest is not None and (self.last_id is None or id_key(newest) > id_key(self.last_id)):
            self.last_id = newest
        if self.last_id is None:
            self.last_id = NOTHING  # the room was empty: a resume replays all that came since
        return [frame, *delivered]

    def admit(self, frame: Frame) -> bool:
        """Whether a live frame reaches the caller (False: a stored entry seen already); moves the
        cursor past a stored entry, and follows presence."""
        entry_id = stored_id(frame)
        if entry_id is not None:
            if self.last_id is not None and id_key(entry_id) <= id_key(self.last_id):
                return False
            self.last_id = entry_id
        event = event_of(frame)
        if isinstance(frame["hd"].get("rid"), str) and event is not None:
            self._follow(event, frame)
        if entry_id is not None:
            return True
        if event == Event.PRESENCE_JOIN:
            self.members.append({"role": frame["hd"].get("role"), "conn": frame["hd"].get("conn")})
        elif event == Event.PRESENCE_LEAVE:
            conn = frame["hd"].get("conn")
            self.members = [member for member in self.members if member.get("conn") != conn]
        return True

    def _follow(self, event: str, frame: Frame) -> None:
        """Keep :attr:`generations` and :attr:`answers` up to date with one frame of the bot's."""
        hd = frame["hd"]
        rid = hd["rid"]
        listed = next((g for g in self.generations if g.get("rid") == rid), None)
        if listed is not None and listed.get("state") == "queued" and event in RUNNING_EVENTS | ENDING_EVENTS:
            self._move_up_behind(listed)
        if event in ENDING_EVENTS:
            self.generations = [g for g in self.generations if g.get("rid") != rid]
            self.answers.pop(rid, None)
        elif event in RUNNING_EVENTS:
            if listed is None:
                listed = {"rid": rid, "reply_to": hd.get("reply_to")}
                self.generations.insert(0, listed)
            listed.update(state="running", position=0)
            self.answers.setdefault(rid, Answer()).apply(frame)
        elif event == QUEUED:
            if listed is None:
                listed = {"rid": rid, "reply_to": hd.get("reply_to")}
                self.generations.append(listed)
            listed.update(state="queued", position=hd.get("position"))

    def _move_up_behind(self, leaving: Frame) -> None:
        """A queued question starts, or leaves the queue: the ones behind it move up by one."""
        position = leaving.get("position")
        for generation in self.generations:
            behind = generation.get("position")
            if (generation.get("state") == "queued" and isinstance(position, int) and isinstance(behind, int)
                    and behind > position):
                generation["position"] = behind - 1
