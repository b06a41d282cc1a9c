"""The supervisor of background loops, with a fake sleep: restarts after a growing backoff, one log line
per kind of failure (not per retry), down while failing, counted; the address scrubber; the throttled
log of failures on clients' paths."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from server.store.ports import StoreError, StoreRefused, StoreUnavailable
from server.supervise import MAX_KINDS, LoopEnded, Supervisor, Throttled, backoff, kind_of, without_addresses
from tests.unit.server.helpers import FakeSleep, no_leftover_tasks, until

REFUSED = StoreRefused("NOREPLICAS Not enough good replicas to write. script: 3a00e9bb, on @user_script:12.")


@pytest.fixture(autouse=True)
async def _clean() -> AsyncIterator[None]:
    async with no_leftover_tasks():
        yield


class Scripted:
    """A loop that raises the given exceptions, one per start, then runs (calling ``up``) until cancelled."""

    def __init__(self, supervisor: Supervisor, name: str, *failures: BaseException) -> None:
        self.supervisor = supervisor
        self.name = name
        self.failures = list(failures)
        self.starts = 0
        self.running = asyncio.Event()

    async def __call__(self) -> None:
        self.starts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.supervisor.up(self.name)
        self.running.set()
        await asyncio.Event().wait()


def start(supervisor: Supervisor, name: str, loop: Scripted, up_on_start: bool = False) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(supervisor.run(name, loop, up_on_start=up_on_start))


async def wake_backoffs(sleep: FakeSleep, count: int) -> None:
    """Let ``count`` backoffs pass, one after the other."""
    for n in range(1, count + 1):
        await until(lambda n=n: len(sleep.calls) == n)  # type: ignore[misc]
        sleep.wake()


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


async def test_a_loop_that_raises_any_exception_is_restarted_after_a_growing_backoff() -> None:
    sleep = FakeSleep()
    supervisor = Supervisor(sleep)
    loop = Scripted(supervisor, "heartbeat", StoreUnavailable("down"), REFUSED, RuntimeError("bug"), KeyError("k"))
    start(supervisor, "heartbeat", loop)
    await wake_backoffs(sleep, 4)
    await until(loop.running.is_set)
    assert loop.starts == 5 and sleep.calls == [backoff(0), backoff(1), backoff(2), backoff(3)]
    assert backoff(0) < backoff(1) < backoff(2) < backoff(3)


async def test_the_backoff_starts_over_once_the_loop_was_up() -> None:
    sleep = FakeSleep()
    supervisor = Supervisor(sleep)
    outcomes: list[BaseException | None] = [REFUSED, REFUSED, None, REFUSED]

    async def loop() -> None:
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is None:
            supervisor.up("read")
            if outcomes:
                raise RuntimeError("then fails again")
            await asyncio.Event().wait()
        else:
            raise outcome

    asyncio.get_running_loop().create_task(supervisor.run("read", loop))
    await wake_backoffs(sleep, 4)
    await until(lambda: not outcomes)
    assert sleep.calls == [backoff(0), backoff(1), backoff(0), backoff(1)]  # up in between: from the start


async def test_a_loop_that_returns_is_started_again_too() -> None:
    sleep = FakeSleep()
    supervisor = Supervisor(sleep)
    ran = 0

    async def loop() -> None:
        nonlocal ran
        ran += 1

    asyncio.get_running_loop().create_task(supervisor.run("sweep", loop))
    await until(lambda: sleep.sleeping() == [backoff(0)])
    sleep.wake()
    await until(lambda: ran == 2)
    assert supervisor.down() == ["sweep"]
    assert kind_of(LoopEnded("sweep returned")) == "LoopEnded: sweep returned"


async def test_cancelling_the_supervised_loop_stops_it_and_is_not_a_failure() -> None:
    supervisor = Supervisor(FakeSleep())
    loop = Scripted(supervisor, "cancel")
    task = start(supervisor, "cancel", loop)
    await until(loop.running.is_set)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert supervisor.loops() == [("cancel", True, 0)]


async def test_failures_are_logged_once_per_kind_not_once_per_retry_and_the_recovery_once(
        caplog: pytest.LogCaptureFixture) -> None:
    sleep = FakeSleep()
    supervisor = Supervisor(sleep)
    loop = Scripted(supervisor, "heartbeat", REFUSED, REFUSED, REFUSED, StoreUnavailable("gone"), REFUSED)
    with caplog.at_level(logging.INFO, "server.supervise"):
        start(supervisor, "heartbeat", loop)
        await wake_backoffs(sleep, 5)
        await until(loop.running.is_set)
    warnings = messages(caplog)
    assert len(warnings) == 2
    assert warnings[0].startswith("heartbeat failing: StoreRefused: NOREPLICAS Not enough good replicas to write.")
    assert warnings[1].startswith("heartbeat failing: StoreUnavailable: gone")
    assert messages(caplog, logging.INFO) == ["heartbeat recovered after 5 failure(s)"]
    assert all(record.exc_info is None for record in caplog.records)  # the store failing is no bug: no traceback


async def test_the_next_outage_is_logged_again_after_a_recovery(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(FakeSleep())
    with caplog.at_level(logging.INFO, "server.supervise"):
        supervisor.failed("heartbeat", REFUSED)
        supervisor.up("heartbeat")
        supervisor.failed("heartbeat", REFUSED)
    assert len(messages(caplog)) == 2


async def test_a_bug_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(FakeSleep())
    bug = RuntimeError("bug")
    with caplog.at_level(logging.WARNING, "server.supervise"):
        supervisor.failed("read", bug)
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[1] is bug


async def test_only_so_many_kinds_are_logged_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(FakeSleep())
    with caplog.at_level(logging.WARNING, "server.supervise"):
        for n in range(MAX_KINDS + 5):
            supervisor.failed("read", StoreError(f"ERR kind {n}"))
    assert len(caplog.records) == MAX_KINDS + 1
    assert caplog.records[-1].getMessage() == "read: more kinds of failure; not logged until it recovers"
    assert supervisor.loops() == [("read", False, MAX_KINDS + 5)]


async def test_a_loop_is_down_from_its_first_failure_until_it_says_it_works() -> None:
    sleep = FakeSleep()
    supervisor = Supervisor(sleep)
    supervisor.register("sweep")
    loop = Scripted(supervisor, "heartbeat", REFUSED)
    start(supervisor, "heartbeat", loop)
    await until(lambda: bool(sleep.sleeping()))
    assert supervisor.down() == ["heartbeat"] and not supervisor.is_up("heartbeat") and supervisor.is_up("sweep")
    sleep.wake()
    await until(loop.running.is_set)
    assert supervisor.down() == []
    assert supervisor.loops() == [("heartbeat", True, 1), ("sweep", True, 0)]


async def test_a_loop_up_on_start_is_up_as_soon_as_it_is_started_again() -> None:
    sleep = FakeSleep()
    supervisor = Supervisor(sleep)
    started = asyncio.Event()

    async def flusher() -> None:
        if not started.is_set():
            started.set()
            raise RuntimeError("bug")
        await asyncio.Event().wait()  # waits for work: nothing says it works, yet it does

    asyncio.get_running_loop().create_task(supervisor.run("appender", flusher, up_on_start=True))
    await until(lambda: bool(sleep.sleeping()))
    assert supervisor.down() == ["appender"]
    sleep.wake()
    await until(lambda: supervisor.down() == [])


async def test_a_loop_with_parts_is_down_while_any_part_fails() -> None:
    supervisor = Supervisor(FakeSleep())
    supervisor.failed("catch-up", REFUSED, "room-1")
    supervisor.failed("catch-up", REFUSED, "room-2")
    supervisor.up("catch-up", "room-1")
    assert supervisor.down() == ["catch-up"]
    supervisor.up("catch-up", "room-2")
    assert supervisor.down() == []


def test_up_for_a_loop_never_seen_or_never_down_does_nothing() -> None:
    supervisor = Supervisor(FakeSleep())
    supervisor.up("unknown")
    supervisor.register("read")
    supervisor.up("read")
    assert supervisor.loops() == [("read", True, 0)]


@pytest.mark.parametrize(("text", "scrubbed"), [
    ("Error 111 connecting to 127.0.0.1:6379. Connection refused.",
     "Error 111 connecting to <address>. Connection refused."),
    ("Error -2 connecting to redis-primary:6379. Name or service not known.",
     "Error -2 connecting to <address>. Name or service not known."),
    ("cannot connect to Redis at cache.internal.example.com:6380: timed out",
     "cannot connect to Redis at <address>: timed out"),
    ("connect to [::1]:6379 failed", "connect to <address> failed"),
    ("host 10.0.0.5 unreachable", "host <address> unreachable"),
    ("bad url rediss://user:pw@db:6379/0 given", "bad url <address> given"),
    ("Error connecting to unix socket: /var/run/redis/redis.sock.", "Error connecting to unix socket: <address>."),
    ("NOREPLICAS Not enough good replicas to write. script: 3a00e9bb, on @user_script:12.",
     "NOREPLICAS Not enough good replicas to write. script: 3a00e9bb, on @user_script:12."),
    ("no reply from Redis within 10 s", "no reply from Redis within 10 s"),
])
def test_addresses_are_taken_out_of_failure_messages(text: str, scrubbed: str) -> None:
    assert without_addresses(text) == scrubbed


def test_a_kind_of_failure_is_its_type_and_first_line_sans_addresses() -> None:
    assert kind_of(StoreUnavailable("Error 111 connecting to 127.0.0.1:6379.\nmore")) == \
        "StoreUnavailable: Error 111 connecting to <address>."
    assert kind_of(TimeoutError()) == "TimeoutError"


def test_throttled_logs_each_kind_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttled = Throttled(logging.getLogger("test.throttled"), every_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.throttled"):
        for _ in range(3):
            throttled.warning("appends refused", REFUSED)
        throttled.warning("appends failed", StoreUnavailable("Error 111 connecting to 127.0.0.1:6379."))
        now[0] += 61
        throttled.warning("appends refused", REFUSED)
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 3
    assert logged[1] == ("appends failed: StoreUnavailable: Error 111 connecting to <address>. "
                         "(logged once every 60 s per kind)")
