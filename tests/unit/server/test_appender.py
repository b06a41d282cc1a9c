"""The appender on the fake log: one batch per loop pass, in order, per-entry outcomes, failures, the feed
told before the submitters, and what happens to pending appends on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import pytest

import server.appender as appender_module
from server.appender import MAX_BATCH, Appender
from server.store.ports import (
    BatchResult,
    Duplicate,
    NewEntry,
    NotReplicated,
    Retention,
    RoomLog,
    StoreError,
    StoreRefused,
    StoreUnavailable,
)
from server.supervise import Supervisor, Throttled, backoff
from tests.unit.fakes import FakeStore
from tests.unit.server.helpers import FakeSleep, no_leftover_tasks, passes, until

Outcome = bytes | Duplicate | Exception
NO_RETENTION = Retention()


@pytest.fixture(autouse=True)
async def _clean() -> AsyncIterator[None]:
    async with no_leftover_tasks():
        yield


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """An appender running on a fake store, recording what the feed is told and each outcome, in order."""

    def __init__(self, retention: Retention = NO_RETENTION, gather_s: float = 0.0,
                 clock: Clock | None = None, sleep: FakeSleep | None = None) -> None:
        self.store = FakeStore()
        self.log = self.store.log
        self.told: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = []  # the feed's appended() calls
        self.events: list[str] = []  # "feed <room>" and "done <n>", in the order they happened
        self.outcomes: dict[int, Outcome] = {}
        self.appender = (Appender(self.log, retention, "n1", self.appended) if clock is None or sleep is None
                         else Appender(self.log, retention, "n1", self.appended, gather_s, clock, sleep))
        self.task = asyncio.get_running_loop().create_task(self.appender.run())

    def appended(self, room: str, before: bytes, items: list[tuple[bytes, bytes]]) -> None:
        self.told.append((room, before, items))
        self.events.append(f"feed {room}")

    def submit(self, n: int, room: str = "r", cid: str | None = None, participant: str = "A") -> None:
        def done(outcome: Outcome) -> None:
            self.outcomes[n] = outcome
            self.events.append(f"done {n}")

        self.appender.submit(NewEntry(room, participant, f"m{n}".encode(), cid), done)

    async def settled(self, count: int) -> None:
        await until(lambda: len(self.outcomes) == count)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def bodies(batch: list[NewEntry]) -> list[bytes]:
    return [entry.body for entry in batch]


async def test_the_appends_of_one_loop_pass_go_in_one_batch() -> None:
    rig = Rig()
    for n in range(5):
        rig.submit(n)
    await rig.settled(5)
    assert [bodies(batch) for batch in rig.log.batches] == [[b"m0", b"m1", b"m2", b"m3", b"m4"]]


async def test_appends_are_stored_in_submission_order_with_increasing_ids() -> None:
    rig = Rig()
    for n in range(4):
        rig.submit(n, room="r" if n % 2 else "s")
    await rig.settled(4)
    assert [fields[b"body"] for _, fields in rig.log.streams["s"]] == [b"m0", b"m2"]
    assert [fields[b"body"] for _, fields in rig.log.streams["r"]] == [b"m1", b"m3"]
    ids = [rig.outcomes[n] for n in range(4)]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split(b"-"))))  # type: ignore[union-attr]


async def test_appends_submitted_while_a_batch_is_in_flight_gather_for_the_next_one() -> None:
    rig = Rig()
    rig.log.gate = asyncio.Event()
    rig.submit(0)
    await passes()  # the first batch waits at the gate
    for n in (1, 2, 3):
        rig.submit(n)
    rig.log.gate.set()
    await rig.settled(4)
    assert [bodies(batch) for batch in rig.log.batches] == [[b"m0"], [b"m1", b"m2", b"m3"]]


async def test_with_a_gather_time_a_batch_waits_until_that_long_after_the_previous_one() -> None:
    """APPEND_GATHER_MS: fewer, larger batches (a Redis round trip each) at the cost of that much latency."""
    clock, sleep = Clock(), FakeSleep()
    rig = Rig(gather_s=0.002, clock=clock, sleep=sleep)
    rig.submit(0)
    await rig.settled(1)  # the first batch goes at once: none was sent before
    clock.now += 0.0005
    rig.submit(1)
    await until(lambda: sleep.sleeping() == [pytest.approx(0.0015)])  # the rest of the 2 ms since the first batch
    rig.submit(2)
    await passes()
    assert len(rig.log.batches) == 1
    clock.now += 0.0015
    sleep.wake()
    await rig.settled(3)
    assert [bodies(batch) for batch in rig.log.batches] == [[b"m0"], [b"m1", b"m2"]]
    clock.now += 0.003  # longer than the gather time since the last batch: the next goes at once
    rig.submit(3)
    await rig.settled(4)
    assert sleep.calls == [pytest.approx(0.0015)]
    await rig.stop()


async def test_with_a_gather_time_a_full_batch_goes_at_once() -> None:
    clock, sleep = Clock(), FakeSleep()
    rig = Rig(gather_s=0.002, clock=clock, sleep=sleep)
    rig.submit(0)
    await rig.settled(1)
    for n in range(1, MAX_BATCH + 1):
        rig.submit(n)
    await rig.settled(MAX_BATCH + 1)
    assert sleep.calls == []
    await rig.stop()


async def test_a_batch_holds_at_most_max_batch_appends() -> None:
    rig = Rig()
    for n in range(MAX_BATCH + 5):
        rig.submit(n)
    await rig.settled(MAX_BATCH + 5)
    assert [len(batch) for batch in rig.log.batches] == [MAX_BATCH, 5]
    assert bodies(rig.log.batches[1])[0] == f"m{MAX_BATCH}".encode()


async def test_each_append_gets_its_own_outcome_id_duplicate_or_error() -> None:
    rig = Rig(Retention(dedupe_s=60))
    rig.submit(0, cid="c1")
    await rig.settled(1)
    refused = StoreError("NOSCRIPT")
    rig.log.failing_rooms["broken"] = refused
    rig.submit(1, cid="c1")  # the same cid again
    rig.submit(2, room="broken")
    rig.submit(3)
    await rig.settled(4)
    first = rig.outcomes[0]
    assert isinstance(first, bytes)
    assert rig.outcomes[1] == Duplicate(first, b"m0")
    assert rig.outcomes[2] is refused
    assert isinstance(rig.outcomes[3], bytes) and rig.outcomes[3] != first


@pytest.mark.parametrize("error", [StoreUnavailable("down"), RuntimeError("bug")])
async def test_a_failed_batch_fails_every_append_in_it_and_tells_the_feed_nothing(error: Exception) -> None:
    rig = Rig()
    rig.log.failing = error
    rig.submit(0)
    rig.submit(1, room="s")
    await rig.settled(2)
    assert rig.outcomes == {0: error, 1: error}
    assert rig.told == []
    rig.log.failing = None
    rig.submit(2)  # the next batch is sent as usual
    await rig.settled(3)
    assert isinstance(rig.outcomes[2], bytes)


async def test_the_feed_is_told_per_room_before_any_submitter() -> None:
    rig = Rig()
    earlier = rig.log.add("r", b"x")
    rig.submit(0)
    rig.submit(1, room="s")
    rig.submit(2)
    await rig.settled(3)
    assert rig.events == ["feed r", "feed s", "done 0", "done 1", "done 2"]
    assert rig.told == [("r", earlier, [(rig.outcomes[0], b"m0"), (rig.outcomes[2], b"m2")]),
                        ("s", b"0-0", [(rig.outcomes[1], b"m1")])]


async def test_the_feed_hears_only_of_entries_that_were_stored() -> None:
    rig = Rig(Retention(dedupe_s=60))
    rig.submit(0, cid="c")
    await rig.settled(1)
    rig.log.failing_rooms["broken"] = StoreError("x")
    rig.submit(1, cid="c")  # duplicate
    rig.submit(2, room="broken")
    await rig.settled(3)
    assert [(room, len(items)) for room, _, items in rig.told] == [("r", 1), ("r", 0)]  # only the first one's entry
    assert rig.told[1][1] == rig.outcomes[0]  # the resend's batch: stored up to the original


async def test_a_batch_of_resends_only_tells_the_feed_where_the_room_stands() -> None:
    rig = Rig(Retention(dedupe_s=60))
    rig.submit(0, cid="c")
    await rig.settled(1)
    rig.submit(1, cid="c")
    await rig.settled(2)
    assert rig.told[1] == ("r", rig.outcomes[0], [])
    assert rig.outcomes[1] == Duplicate(rig.told[0][2][0][0], b"m0")


async def test_a_submitter_whose_callback_raises_does_not_stop_the_others() -> None:
    rig = Rig()

    def broken(outcome: Outcome) -> None:
        raise RuntimeError("callback bug")

    rig.appender.submit(NewEntry("r", "A", b"x"), broken)
    rig.appender.submit(NewEntry("r", "A", b"y"))  # no callback at all
    rig.submit(2)
    await rig.settled(1)
    assert isinstance(rig.outcomes[2], bytes)
    assert not rig.task.done()


async def test_append_returns_the_id_or_the_duplicate_and_raises_the_error() -> None:
    rig = Rig(Retention(dedupe_s=60))
    stored = await rig.appender.append(NewEntry("r", "A", b"x", "c"))
    assert isinstance(stored, bytes) and rig.log.last("r") == stored
    assert await rig.appender.append(NewEntry("r", "A", b"y", "c")) == Duplicate(stored, b"x")
    rig.log.failing = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        await rig.appender.append(NewEntry("r", "A", b"z"))


async def test_pending_appends_fail_when_the_appender_stops() -> None:
    rig = Rig()
    rig.log.gate = asyncio.Event()
    rig.submit(0)
    await passes()  # in flight
    rig.submit(1)  # pending
    await rig.stop()
    assert isinstance(rig.outcomes.get(1), ConnectionError)


async def test_the_batch_in_flight_fails_too_when_the_appender_stops() -> None:
    rig = Rig()
    rig.log.gate = asyncio.Event()
    waiting = asyncio.get_running_loop().create_task(rig.appender.append(NewEntry("r", "A", b"x")))
    rig.submit(0)
    await passes()  # both in the batch waiting at the gate
    assert len(rig.log.batches) == 0 and not waiting.done()
    rig.submit(1)  # pending
    await rig.stop()
    await passes()
    assert isinstance(rig.outcomes.get(0), ConnectionError)  # told, not left waiting forever
    assert isinstance(rig.outcomes.get(1), ConnectionError)
    assert waiting.done() and isinstance(waiting.exception(), ConnectionError)


async def test_an_appender_stopped_with_nothing_pending_tells_nobody() -> None:
    rig = Rig()
    rig.submit(0)
    await rig.settled(1)
    await rig.stop()
    assert list(rig.outcomes) == [0] and rig.task.cancelled()


async def test_batch_result_reports_before_per_room() -> None:
    # the contract the appender relies on, on the fake: the newest id before the batch, per room
    store = FakeStore()
    earlier = store.log.add("r", b"x")
    result = await store.log.append_batch([NewEntry("r", "A", b"y"), NewEntry("s", "A", b"z")], Retention(), "n1")
    assert result == BatchResult({"r": earlier, "s": b"0-0"}, result.ids)


# -- the flusher never dies ---------------------------------------------------------------------


async def test_a_refused_batch_fails_its_appends_logs_once_per_kind_and_the_next_batch_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    rig.log.failing = StoreRefused("NOREPLICAS Not enough good replicas to write.")
    with caplog.at_level(logging.WARNING, "server.appender"):
        for n in range(3):  # three batches, all refused
            rig.submit(n)
            await rig.settled(n + 1)
    assert all(isinstance(rig.outcomes[n], StoreRefused) for n in range(3)) and rig.told == []
    assert len([record for record in caplog.records if "refused" in record.getMessage()]) == 1
    rig.log.failing = None
    rig.submit(3)
    await rig.settled(4)
    assert isinstance(rig.outcomes[3], bytes) and len(rig.told) == 1
    await rig.stop()


async def test_a_bug_in_the_feed_still_tells_every_sender_its_outcome() -> None:
    rig = Rig()

    def broken(room: str, before: bytes, items: list[tuple[bytes, bytes]]) -> None:
        raise RuntimeError("feed bug")

    rig.appender._appended = broken
    rig.submit(1)
    await rig.settled(1)
    assert isinstance(rig.outcomes[1], bytes)
    await rig.stop()


class MiscountingLog:
    """A room log whose first batch result has one outcome too many (an adapter's bug)."""

    def __init__(self, inner: RoomLog) -> None:
        self.inner = inner
        self.broken = True

    async def append_batch(self, entries: Sequence[NewEntry], retention: Retention, node: str) -> BatchResult:
        result = await self.inner.append_batch(entries, retention, node)
        if self.broken:
            self.broken = False
            return BatchResult(before=result.before, ids=[*result.ids, b"0-1"])
        return result


async def test_a_flusher_that_raises_fails_its_batch_and_is_restarted_by_its_supervisor_with_what_waits() -> None:
    store = FakeStore()
    log = MiscountingLog(store.log)
    sleep = FakeSleep()
    supervisor = Supervisor(sleep)
    appender = Appender(log, NO_RETENTION, "n1", lambda room, before, items: None)  # type: ignore[arg-type]
    runner = asyncio.get_running_loop().create_task(supervisor.run("appender", appender.run, up_on_start=True))
    first = asyncio.ensure_future(appender.append(NewEntry("r", "A", b"m1")))
    await until(lambda: backoff(0) in sleep.sleeping())
    with pytest.raises(ValueError):
        await first  # the batch in flight fails with the bug: its sender is not left waiting
    assert supervisor.down() == ["appender"]
    second = asyncio.ensure_future(appender.append(NewEntry("r", "A", b"m2")))  # waits for the flusher
    await passes()
    assert not second.done()
    sleep.wake(backoff(0))
    assert isinstance(await second, bytes)
    assert supervisor.down() == [] and supervisor.loops() == [("appender", True, 1)]
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_appends_short_of_replicas_fail_their_senders_and_are_not_handed_to_the_feed() -> None:
    # REDIS_MIN_REPLICAS: stored on the primary, not acknowledged: the sender is told (unavailable), the
    # feed is not (nothing delivered here), and the resend, once replicated, finds the stored original.
    rig = Rig(Retention(dedupe_s=60))
    rig.log.unreplicated_rooms.add("r")
    rig.submit(0, cid="c")
    rig.submit(1, room="s")
    await rig.settled(2)
    assert isinstance(rig.outcomes[0], NotReplicated)
    [(original, _)] = rig.log.streams["r"]
    assert [room for room, _, _ in rig.told] == ["s"]  # the other room's batch stands
    rig.log.unreplicated_rooms.clear()
    rig.submit(2, cid="c")
    await rig.settled(3)
    assert rig.outcomes[2] == Duplicate(original, b"m0")
    assert rig.told[-1] == ("r", original, [])  # the feed delivers the original, to everyone here


async def test_appends_short_of_replicas_are_logged_once_a_minute(caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(appender_module, "_failures", Throttled(logging.getLogger("server.appender")))
    rig = Rig()
    rig.log.unreplicated_rooms.add("r")
    with caplog.at_level(logging.WARNING, logger="server.appender"):
        for n in range(3):
            rig.submit(n)
            await rig.settled(n + 1)
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "appends not acknowledged by enough replicas (stored on the primary, not delivered yet; the senders are"
        " told unavailable)"]
