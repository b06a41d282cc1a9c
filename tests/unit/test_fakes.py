"""The fakes keep the ports' contracts where the core relies on them (and type-check as the ports)."""

from __future__ import annotations

from server.store.ports import Duplicate, NewEntry, Retention, Store
from tests.unit.fakes import FakeStore


def as_store(store: FakeStore) -> Store:
    return store  # mypy: the fakes implement every port


async def test_a_fake_batch_reports_the_newest_id_before_it_and_announces_to_other_followers() -> None:
    store = FakeStore()
    channel = store.bus.subscription("n2")
    await channel.subscribe()
    assert await store.bus.follow(["r"], "n2", 30) == ["r"]
    first = await store.log.append_batch([NewEntry("r", "A", b"{}")], Retention(), "n1")
    second = await store.log.append_batch([NewEntry("r", "A", b"{}"), NewEntry("r", "B", b"{}")], Retention(), "n1")
    assert first.before == {"r": b"0-0"} and second.before == {"r": first.ids[0]}
    assert [await channel.next(1) for _ in range(3)] == [
        ("subscribe", b""), ("message", b"r " + first.ids[0]), ("message", b"r " + second.ids[1])]  # type: ignore[operator]


async def test_a_fake_follower_whose_time_is_up_is_not_alive() -> None:
    store = FakeStore()
    await store.bus.follow(["r"], "n1", 30)
    store.clock.advance(31)
    assert store.bus.alive("r") == []
    assert await store.bus.follow(["r"], "n1", 30) == ["r"]
    assert as_store(store).kind == "fake"


async def test_a_fake_cid_is_remembered_within_the_streams_epoch_only() -> None:
    store = FakeStore()
    entry = NewEntry("r", "A", b"{}", "c1")
    [first] = (await store.log.append_batch([entry], Retention(dedupe_s=300), "n1")).ids
    assert isinstance(first, bytes)
    assert (await store.log.append_batch([entry], Retention(dedupe_s=300), "n1")).ids == [Duplicate(first, b"{}")]
    epoch = store.log.epochs["r"]
    assert await store.log.delete("r")
    [again] = (await store.log.append_batch([entry], Retention(dedupe_s=300), "n1")).ids
    assert isinstance(again, bytes) and again != first and store.log.epochs["r"] != epoch
    assert [entry_id for entry_id, _ in await store.log.range("r")] == [again]


async def test_a_fake_session_info_tells_the_newest_retained_entry() -> None:
    store = FakeStore()
    assert (await store.roster.enter("r", "", "A", 0)).newest_id is None
    ids = [store.log.add("r", b"{}") for _ in range(3)]
    store.log.lose_newest("r", 1)
    info = await store.roster.enter("r", "", "A", 0)
    assert (info.first_id, info.newest_id) == (ids[0], ids[1])


async def test_a_fake_session_info_tells_whether_the_cursor_entry_is_still_held() -> None:
    store = FakeStore()
    assert (await store.roster.enter("r", "", "A", 0, cursor=b"1-0")).cursor_kept is None
    ids = [store.log.add("r", b"{}") for _ in range(3)]
    store.log.lose_newest("r", 1)
    assert (await store.roster.enter("r", "", "A", 0, cursor=ids[1])).cursor_kept is True
    assert (await store.roster.enter("r", "", "A", 0, cursor=ids[2])).cursor_kept is False
    assert (await store.roster.enter("r", "", "A", 0)).cursor_kept is None
