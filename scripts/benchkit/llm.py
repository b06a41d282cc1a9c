"""LLM mode: many rooms, each with one generation streaming at a time, for ``duration_s``.

The contract measured: a ``chat.message`` whose text contains ``@llm`` makes the server stream an
answer to every member of the room as ``llm.streaming`` frames (``hd.rid``: the generation,
``hd.reply_to``, ``hd.seq`` from 0, ``bd.delta``; a frame merged for a member that reads slowly carries
deltas ``hd.first_seq`` to ``hd.seq``, and counts as those) and then store and send one ``llm.response``
(``bd.text``: the deltas joined). With ``LLM_PROVIDER=scripted`` the provider emits one token every
``LLM_SCRIPTED_DELAY_MS``.

In every room the first member asks (the rooms' first questions spread evenly over ``stagger_s``,
as independent conversations are; 0 asks in every room at once, so that all generations stream in
lockstep: the worst case); when every member has the ``llm.response`` it asks again,
until ``duration_s`` is over; then the generations under way finish (at most ``drain_s``).
Checked at every member, for every generation: each seq exactly once and in order, no gap, the
final text equal to the deltas joined, and the stored entries against the room's stream.
Measured: the gap between consecutive deltas beyond the scripted pace (what the relay adds to a
delta: a delta held up by the relay shows as a longer gap), and the time from the question to the
first delta (append, provider start and delivery).

Slow readers (``slow_readers`` N): each of the first N rooms gets one more member, on a socket with a
4 KiB receive buffer, that stops reading during the answers: it pauses before its room's first
question, while the asker fills its link with stored messages (``slow_fill_messages`` of
``slow_fill_chars`` characters: the server's socket buffer grows to 4 MB, so it takes that much to
back the member up), stays paused while its room asks and is answered for the whole window (its room
does not wait for it), then reads everything. It must not be closed (deltas never count toward
``SEND_QUEUE_MAX``), and every answer must reach it whole: the deltas queued meanwhile come merged
(``first_seq`` < ``seq``), so it receives fewer ``llm.streaming`` frames than deltas. Its figures are
its own: the gap and first-delta figures are the prompt members'.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import orjson

from benchkit.context import Context, gather_limited, per_s, wait_until
from benchkit.procs import CpuSample
from benchkit.stats import Report, Target, cpu_figures, errors_row, fmt, fmt_cpu, latency_ms
from benchkit.streams import Check
from benchkit.wsclient import Connection, LeanConnection, close_all, connect_pausable

STREAMING, RESPONSE, CHAT, ERROR = "llm.streaming", "llm.response", "chat.message", "error"
FILL = "fill"  # the cid prefix of the messages that fill a slow reader's link
SLOW_RCVBUF = 4096
ROLES = ("A", "B")
TARGET_GENERATIONS = 100
TARGET_TOKENS_PER_S = 50.0
TARGET_ADDED_MS = 2.0


@dataclass(frozen=True, slots=True)
class LlmParams:
    rooms: int = TARGET_GENERATIONS  # = generations streaming at once
    members: int = 2
    duration_s: float = 10.0
    tokens_per_s: float = TARGET_TOKENS_PER_S  # the scripted provider's pace (LLM_SCRIPTED_DELAY_MS)
    stagger_s: float = 1.0  # the rooms' first questions are spread evenly over this time (0: all at once)
    first_delta_timeout_s: float = 10.0
    drain_s: float = 30.0
    slow_readers: int = 0  # rooms (the first ones) with one more member that stops reading during the answers
    slow_fill_messages: int = 12  # stored messages that fill a slow reader's link before its room asks
    slow_fill_chars: int = 500_000


@dataclass
class Generation:
    """One answer as one member received it."""

    asked_ns: int
    seqs: list[int] = field(default_factory=list)
    deltas: dict[int, str] = field(default_factory=dict)
    times_ns: list[int] = field(default_factory=list)  # receipt of each delta, in order of receipt
    final: str | None = None


@dataclass
class Tally:
    asking: bool = True
    deltas: int = 0
    first_delta: asyncio.Event = field(default_factory=asyncio.Event)
    errors: int = 0
    closed: int = 0
    samples: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.samples) < 5:
            self.samples.append(what[:300])


class Room:
    def __init__(self, index: int, name: str, tally: Tally) -> None:
        self.index = index
        self.name = name
        self.tally = tally
        self.members: list[Member] = []
        self.asked_ns = 0
        self.asked = 0  # questions sent
        self.refused = 0
        self.waiting: set[int] = set()  # members that have not received the current answer's end

    def ask(self) -> None:
        asker = self.members[0]
        assert asker.conn is not None
        self.asked += 1
        self.asked_ns = time.monotonic_ns()
        self.waiting = {m.k for m in self.members if not m.slow}
        asker.conn.send(orjson.dumps({"hd": {"event": CHAT, "role": "A", "cid": f"q{self.asked}"},
                                      "bd": {"text": f"@llm question {self.asked} of room {self.index}"}}))

    def answered(self, member: Member) -> None:
        self.waiting.discard(member.k)
        if not self.waiting and self.tally.asking:
            self.ask()


class Member:
    def __init__(self, room: Room, k: int, slow: bool = False) -> None:
        self.room = room
        self.k = k
        self.slow = slow  # stops reading during the answers (see the module's docstring)
        self.conn: Connection | None = None
        self.ids: list[str] = []
        self.generations: dict[str, Generation] = {}
        self.frames = 0  # llm.streaming frames received
        self.merged = 0  # ... of them carrying more than one delta
        self.deltas = 0  # deltas they carried
        self.responses = 0
        self.fills = 0  # fill messages received back (the asker)
        self.closed: str | None = None

    def on_text(self, data: bytes | str) -> None:
        frame = orjson.loads(data)
        hd, bd = frame.get("hd") or {}, frame.get("bd") or {}
        if (entry_id := hd.get("id")) is not None:
            self.ids.append(entry_id)
        event = hd.get("event")
        if event == STREAMING:
            generation = self._generation(hd)
            now = time.monotonic_ns()
            seq = hd.get("seq")
            seq = seq if isinstance(seq, int) else -1
            first = hd.get("first_seq", seq)  # a frame merged for a slow reader carries first_seq..seq
            first = first if isinstance(first, int) and 0 <= first <= seq else seq
            generation.seqs.extend(range(first, seq + 1))
            generation.deltas.setdefault(first, str(bd.get("delta", "")))
            generation.times_ns.append(now)
            self.frames += 1
            self.merged += first < seq
            self.deltas += seq - first + 1
            if not self.slow:
                self.room.tally.deltas += 1
                self.room.tally.first_delta.set()
        elif event == RESPONSE:
            self._generation(hd).final = str(bd.get("text", ""))
            self.responses += 1
            if not self.slow:
                self.room.answered(self)
        elif event == CHAT and str(hd.get("cid", "")).startswith(FILL):
            self.fills += 1
        elif event == ERROR:
            self.room.tally.errors += 1
            self.room.tally.note(f"error frame: {bd}")
            if self.k == 0:  # the question was refused: no answer will come, and this room asks no more
                self.room.refused += 1
                self.room.waiting.clear()

    def _generation(self, hd: dict[str, Any]) -> Generation:
        key = str(hd.get("rid") or hd.get("reply_to") or "?")
        generation = self.generations.get(key)
        if generation is None:
            generation = self.generations[key] = Generation(self.room.asked_ns)
        return generation

    def on_close(self, reason: str) -> None:
        self.closed = reason
        if self.room.tally.asking or self.room.waiting:
            self.room.tally.closed += 1
            self.room.tally.note(f"{self.room.name}/{self.k} closed: {reason}")


async def run_llm(ctx: Context, params: LlmParams) -> Report:
    report = Report("llm", {**asdict(params), "nodes": len(ctx.nodes), "store": ctx.store})
    tally = Tally()
    rooms = [Room(n, ctx.room(n), tally) for n in range(params.rooms)]
    members = [Member(room, k) for room in rooms for k in range(params.members)]
    slow = [Member(room, params.members, slow=True) for room in rooms[:params.slow_readers]]

    async def connect(member: Member) -> None:
        role = ROLES[member.k] if member.k < len(ROLES) and not member.slow else None
        url = ctx.node_for(member.room.index, member.k, params.members).chat_url(member.room.name, role)
        if member.slow:
            member.conn = await connect_pausable(url, member.on_text, member.on_close, ctx.connect_timeout_s,
                                                 rcvbuf=SLOW_RCVBUF)
        else:
            member.conn = await ctx.connect(url, member.on_text, member.on_close, ctx.connect_timeout_s)
        member.room.members.append(member)

    try:
        await gather_limited(map(connect, [*members, *slow]), ctx.connect_concurrency)
        for room in rooms:
            room.members.sort(key=lambda m: m.k)
        await _fill_links(slow, params, ctx.connect_timeout_s)
        before = ctx.probe.cpu()
        loop = asyncio.get_running_loop()
        for room in rooms:  # independent conversations: not all in the same millisecond
            loop.call_later(params.stagger_s * room.index / len(rooms), room.ask)
        await _expect_deltas(tally, params.first_delta_timeout_s)
        await asyncio.sleep(max(0.0, before.wall_s + params.duration_s - time.monotonic()))
        tally.asking = False
        await wait_until(lambda: not any(room.waiting for room in rooms), params.drain_s, 0.05)
        used = ctx.probe.cpu() - before
        for member in slow:  # the window is over: the slow readers read what waited for them
            cast(LeanConnection, member.conn).resume_reading()
        await wait_until(lambda: all(m.responses >= m.room.asked - m.room.refused or m.closed for m in slow),
                         params.drain_s, 0.05)
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    finally:
        close_all(member.conn for member in [*members, *slow])
    check = Check()
    for room in rooms:
        check.add_room(room.name, ctx.reader.entries(room.name), [m.ids for m in room.members],
                       room.asked - room.refused + (params.slow_fill_messages if room.index < len(slow) else 0))
    _fill(report, params, ctx, rooms, tally, used, check)
    if slow:
        _slow_figures(report, params, slow)
    return report


async def _fill_links(slow: list[Member], params: LlmParams, timeout_s: float) -> None:
    """Stop the slow readers reading, and fill their links with stored messages (read by the others)."""
    for member in slow:
        cast(LeanConnection, member.conn).pause_reading()
        asker = member.room.members[0]
        assert asker.conn is not None
        for n in range(params.slow_fill_messages):
            asker.conn.send(orjson.dumps({"hd": {"event": CHAT, "role": "A", "cid": f"{FILL}{n}"},
                                          "bd": {"text": "x" * params.slow_fill_chars}}))
    askers = [member.room.members[0] for member in slow]
    if not await wait_until(lambda: all(a.fills >= params.slow_fill_messages for a in askers), timeout_s, 0.05):
        raise RuntimeError("the messages filling the slow readers' links did not all come back: is MAX_TEXT_CHARS "
                           f"at least {params.slow_fill_chars}?")


def _slow_figures(report: Report, params: LlmParams, slow: list[Member]) -> None:
    frames, merged, deltas = sum(m.frames for m in slow), sum(m.merged for m in slow), sum(m.deltas for m in slow)
    closed = [m for m in slow if m.closed is not None and m.responses < m.room.asked - m.room.refused]
    report.figures.update({"slow_readers": len(slow), "slow_frames": frames, "slow_merged_frames": merged,
                           "slow_deltas": deltas, "slow_closed": len(closed),
                           "slow_answers": sum(m.responses for m in slow)})
    report.check["ok"] = report.check["ok"] and not closed
    report.rows.insert(4, ("slow readers", f"{len(slow)} stopped reading during the answers (links filled with "
                                           f"{params.slow_fill_messages} x {params.slow_fill_chars:,} chars): "
                                           f"{fmt(frames)} llm.streaming frames carried {fmt(deltas)} deltas "
                                           f"({fmt(merged)} frames merged), {sum(m.responses for m in slow)} "
                                           f"answers whole, {len(closed)} closed"))
    report.targets.append(Target("llm_slow_readers_closed", len(closed), "<=", 0,
                                 "slow readers that stop reading during the answers", True))


async def _expect_deltas(tally: Tally, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(tally.first_delta.wait(), timeout_s)
    except TimeoutError:
        raise RuntimeError(f"no llm.streaming frame arrived within {timeout_s:g} s of the '@llm' questions: "
                           "does the server have the LLM feature, with LLM_PROVIDER=scripted?") from None


@dataclass
class Faults:
    lost: int = 0  # deltas a member should have had (seen by another member, or before a later seq)
    duplicated: int = 0
    reordered: int = 0
    mismatched: int = 0  # generations whose llm.response text is not the deltas joined
    unfinished: int = 0  # generations without an llm.response at some member

    @property
    def total(self) -> int:
        return self.lost + self.duplicated + self.reordered + self.mismatched + self.unfinished


def inspect(rooms: list[Room], pace_ns: int) -> tuple[Faults, list[int], list[int], int]:
    """Faults, the gaps beyond the pace (ns), the times to the first delta (ns), complete generations."""
    faults, added, firsts, complete = Faults(), [], [], 0
    for room in rooms:
        keys = {key for m in room.members for key in m.generations}
        for key in keys:
            got = [m.generations.get(key) for m in room.members]
            expected = max((max(g.seqs, default=-1) + 1 for g in got if g is not None), default=0)
            ok = True
            for member, generation in zip(room.members, got, strict=True):
                if generation is None:
                    faults.lost += expected
                    faults.unfinished += 1
                    ok = False
                    continue
                ok &= _member_faults(generation, expected, faults)
                if member.slow:
                    continue  # its gaps are its own pauses
                added += [b - a - pace_ns for a, b in zip(generation.times_ns, generation.times_ns[1:], strict=False)]
                if generation.times_ns:
                    firsts.append(generation.times_ns[0] - generation.asked_ns)
            complete += ok
    return faults, added, firsts, complete


def _member_faults(generation: Generation, expected: int, faults: Faults) -> bool:
    distinct = set(generation.seqs)
    lost, duplicated = expected - len(distinct & set(range(expected))), len(generation.seqs) - len(distinct)
    reordered = sum(1 for a, b in zip(generation.seqs, generation.seqs[1:], strict=False) if b < a)
    joined = "".join(generation.deltas.get(seq, "") for seq in range(expected))
    mismatched = generation.final is not None and generation.final != joined
    faults.lost += lost
    faults.duplicated += duplicated
    faults.reordered += reordered
    faults.mismatched += mismatched
    faults.unfinished += generation.final is None
    return not (lost or duplicated or reordered or mismatched or generation.final is None)


def _fill(report: Report, params: LlmParams, ctx: Context, rooms: list[Room], tally: Tally,
          used: CpuSample, check: Check) -> None:
    pace_ns = round(1e9 / params.tokens_per_s)
    faults, added, firsts, complete = inspect(rooms, pace_ns)
    report.figures = {
        "generations": sum(room.asked - room.refused for room in rooms), "complete_generations": complete,
        "deltas_delivered": tally.deltas, "deltas_per_s": per_s(tally.deltas, used.wall_s),
        "window_s": round(used.wall_s, 3), **asdict(faults),
        **latency_ms(added, "added_ms"), **latency_ms(firsts, "first_delta_ms"),
        **cpu_figures(used, tally.deltas, "delta"), "errors": tally.errors, "closed": tally.closed,
        "samples": tally.samples,
    }
    report.check = {**check.as_json(), "ok": check.ok and faults.total == 0 and tally.errors == 0,
                    "faults": faults.total}
    f = report.figures
    report.rows = [
        ("load", f"{params.rooms} rooms x {params.members} members, one generation per room at a time, "
                 f"{params.tokens_per_s:g} tokens/s, first questions over {params.stagger_s:g} s, "
                 f"{len(ctx.nodes)} node(s), {ctx.store}"),
        ("generations", f"{fmt(complete)} complete of {fmt(f['generations'])} in {used.wall_s:.1f} s"),
        ("deltas", f"{fmt(tally.deltas)} delivered ({fmt(f['deltas_per_s'])}/s)"),
        ("faults", f"{faults.lost} lost, {faults.duplicated} duplicated, {faults.reordered} reordered, "
                   f"{faults.mismatched} texts mismatched, {faults.unfinished} unfinished"),
        ("gap beyond pace p50/p95/p99/max", " / ".join(fmt(f[f"added_ms_{q}"]) for q in ("p50", "p95", "p99", "max"))
         + f" ms (pace {pace_ns / 1e6:g} ms)"),
        ("first delta p50/p99", f"{fmt(f['first_delta_ms_p50'])} / {fmt(f['first_delta_ms_p99'])} ms"),
        ("server CPU", fmt_cpu(f, "server", "delta")),
        ("redis CPU", fmt_cpu(f, "redis", "delta")),
        errors_row(tally.errors, tally.closed, tally.samples),
        ("check (stored entries)", check.summary()),
    ]
    setup = params.rooms == TARGET_GENERATIONS and params.tokens_per_s == TARGET_TOKENS_PER_S
    where = "100 concurrent generations at 50 tokens/s (scripted provider)"
    report.targets = [
        Target("llm_delta_faults", faults.total + tally.errors, "<=", 0, where, setup),
        Target("llm_relay_added_ms_p99", f["added_ms_p99"], "<=", TARGET_ADDED_MS, where, setup),
    ]
