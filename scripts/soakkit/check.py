"""The soak's checker: what the clients recorded against what the rooms' streams hold. Pure: no I/O.

The promises checked (README "Failure modes", "Resume", "Exactly-once sending", "The LLM participant"):

- **lost**: a message a client sent is not in its room's stream (every client re-sends until acknowledged,
  so at the end every sent ``cid`` must be stored), or a client was acknowledged an id the stream does not
  hold under that ``cid``.
- **duplicated**: a ``(role, cid)`` stored more than once; or a client received one entry twice, apart from
  the documented sender-only re-broadcast of a ``cid`` it sent more than once.
- **reordered**: a client received an entry after a newer one (same exception).
- **gaps**: an entry of the stream, after the point the client joined, that the client never received;
  **phantoms**: an entry it received that the stream does not hold.
- **not_recovered**: a ``session.ready`` with ``recovered: false`` (nothing is lost in a soak: Redis runs
  with ``appendfsync always``, so every one is spurious).
- **terminal**: every question (a stored ``llm.invoke``) ends with exactly one terminal event, stored in
  the room's stream: one ``llm.response`` or one ``llm.error`` replying to it; never both, never none,
  never two. (Every client's view equals the stream, so every member heard it.) A question its sender
  was told ``busy`` for (with ``LLM_TURNS=queue``, the room's queue was full: it is stored, unanswered)
  must have none.
- **overlapping**: two generations of one room streaming at once (their deltas interleave), as any client
  saw it. A generation whose worker died stops streaming; another question may take the room once its
  lease has run out with no worker alive to take it over (README "One answer per room, fenced"): that
  one streams after it, not with it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TERMINAL_EVENTS = ("llm.response", "llm.error")


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Stored:
    """An entry of a room's stream, as XRANGE returns it (its body's header)."""

    id: str
    role: str
    event: str
    cid: str | None = None
    reply_to: str | None = None
    rid: str | None = None


@dataclass
class ClientRecord:
    """What one careful client did and received, across all its connections."""

    room: str
    role: str
    start: str | None = None  # the ``last_id`` of its first session.ready: its view begins after it
    joined: bool = False
    received: list[Stored] = field(default_factory=list)  # stored entries, in arrival order
    sent: Counter[str] = field(default_factory=Counter)  # cid -> how many times it was sent
    first_sent_s: dict[str, float] = field(default_factory=dict)  # cid -> when it was first sent (the run's clock)
    acked: dict[str, str] = field(default_factory=dict)  # cid -> the id its broadcast carried
    refused_busy: set[str] = field(default_factory=set)  # llm.invoke cids refused busy (stored or not)
    not_recovered: int = 0
    #: (kind, rid, reply_to) in arrival order; kind: ``delta``, ``end`` (a terminal event), ``reset`` (a new
    #: connection: what streamed before it may have ended unseen)
    llm_events: list[tuple[str, str, str]] = field(default_factory=list)
    connects: int = 0
    disconnects: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # error codes received


@dataclass
class Report:
    rooms: int = 0
    clients: int = 0
    stored: int = 0
    sent: int = 0
    acked: int = 0
    resends: int = 0
    questions: int = 0
    answered: int = 0
    errored: int = 0
    connects: int = 0
    disconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    reordered: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    phantoms: list[str] = field(default_factory=list)
    not_recovered: list[str] = field(default_factory=list)
    terminal: list[str] = field(default_factory=list)
    overlapping: list[str] = field(default_factory=list)

    VIOLATIONS = ("lost", "duplicated", "reordered", "gaps", "phantoms", "not_recovered", "terminal", "overlapping")

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name in self.VIOLATIONS)

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.VIOLATIONS}


def check(records: Iterable[ClientRecord], streams: Mapping[str, list[Stored]]) -> Report:
    """Check ``records`` against each room's stream (``streams``: room -> entries, oldest first)."""
    report = Report(rooms=len(streams))
    by_room: dict[str, list[ClientRecord]] = defaultdict(list)
    for record in records:
        by_room[record.room].append(record)
    for room, entries in sorted(streams.items()):
        report.stored += len(entries)
        _check_stored_once(room, entries, report)
        for record in by_room.get(room, []):
            _check_client(record, entries, report)
        _check_terminals(room, entries, by_room.get(room, []), report)
    return report


def _check_stored_once(room: str, entries: list[Stored], report: Report) -> None:
    seen = Counter((e.role, e.cid) for e in entries if e.cid is not None and e.role != "llm")
    report.duplicated += [f"{room}: {role}/{cid} stored {n} times" for (role, cid), n in seen.items() if n > 1]


def _check_client(record: ClientRecord, entries: list[Stored], report: Report) -> None:
    who = f"{record.room}/{record.role}"
    report.clients += 1
    report.sent += len(record.sent)
    report.acked += len(record.acked)
    report.resends += sum(n - 1 for n in record.sent.values())
    report.connects += record.connects
    report.disconnects += record.disconnects
    for code, n in record.errors.items():
        report.errors[code] = report.errors.get(code, 0) + n
    report.not_recovered += [f"{who}: session.ready recovered false"] * record.not_recovered

    stored_by_cid = {e.cid: e for e in entries if e.role == record.role and e.cid is not None}
    for cid in sorted(record.sent):
        if cid in record.refused_busy and cid not in stored_by_cid:
            continue
        entry = stored_by_cid.get(cid)
        if entry is None:
            at = record.first_sent_s.get(cid)
            when = "" if at is None else f" (first at {at:.1f} s)"
            report.lost.append(f"{who}: {cid} sent {record.sent[cid]} times{when}, never stored")
        elif record.acked.get(cid, entry.id) != entry.id:
            report.lost.append(f"{who}: {cid} acknowledged as {record.acked[cid]}, stored as {entry.id}")

    if not record.joined:
        return
    # A cid sent more than once may come back twice, the second time to the sender alone and out of the
    # stream's order (README "Exactly-once sending"): those frames are left out of the order check.
    resent = {cid for cid, n in record.sent.items() if n > 1}
    exempt = {stored_by_cid[cid].id for cid in resent if cid in stored_by_cid}
    seen: set[str] = set()
    newest: tuple[int, int] | None = None
    for got in record.received:
        if got.id in exempt:
            seen.add(got.id)
            continue
        if got.id in seen:
            report.duplicated.append(f"{who}: received {got.id} twice")
            continue
        seen.add(got.id)
        if newest is not None and id_key(got.id) < newest:
            report.reordered.append(f"{who}: received {got.id} after a newer entry")
        newest = max(newest or (0, 0), id_key(got.id))
    after = id_key(record.start) if record.start else (0, 0)
    expected = {e.id for e in entries if id_key(e.id) > after}
    report.gaps += [f"{who}: never received {entry_id}" for entry_id in sorted(expected - seen, key=id_key)]
    held = {e.id for e in entries}
    report.phantoms += [f"{who}: received {entry_id}, not in the stream"
                        for entry_id in sorted(seen - held, key=id_key)]


def _check_terminals(room: str, entries: list[Stored], records: list[ClientRecord], report: Report) -> None:
    ends: dict[str, Counter[str]] = defaultdict(Counter)  # question -> its stored terminal events, by event
    for entry in entries:
        if entry.event in TERMINAL_EVENTS and entry.reply_to is not None:
            ends[entry.reply_to][entry.event] += 1
    busy = {(record.role, cid) for record in records for cid in record.refused_busy}
    for question in (e for e in entries if e.event == "llm.invoke"):
        report.questions += 1
        answered, failed = ends[question.id]["llm.response"], ends[question.id]["llm.error"]
        report.answered += answered > 0
        report.errored += failed > 0 and not answered
        if answered + failed != (0 if (question.role, question.cid) in busy else 1):
            report.terminal.append(f"{room}: question {question.id}: {answered} llm.response, {failed} llm.error")
    for record in records:
        _check_overlap(record, report)


def _check_overlap(record: ClientRecord, report: Report) -> None:
    """Two generations stream at once when their deltas interleave: a delta of one, then of another (which
    may just have taken over a room whose generation died: allowed), then of the first again before the
    second ended."""
    current: str | None = None
    ended: set[str] = set()
    interrupted: set[str] = set()  # rids whose stream another generation's delta followed before they ended
    for kind, rid, _reply_to in record.llm_events:
        if kind == "reset":
            current, interrupted = None, set()
        elif kind == "end":
            ended.add(rid)
        else:
            if current is not None and current != rid and current not in ended:
                if rid in interrupted:
                    report.overlapping.append(f"{record.room}/{record.role}: {rid} streamed while {current} did")
                interrupted.add(current)
            current = rid
