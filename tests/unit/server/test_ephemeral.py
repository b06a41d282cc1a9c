"""Unstored frames on the fake bus: one publish per loop pass, futures shared per batch and done in order,
the local feed's delivery, other nodes told, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from server.ephemeral import Ephemeral
from server.store.ports import StoreUnavailable
from tests.unit.fakes import FakeBus, FakeStore
from tests.unit.server.helpers import Node, no_leftover_tasks, passes, started_node


@pytest.fixture(autouse=True)
async def _clean() -> AsyncIterator[None]:
    async with no_leftover_tasks():
        yield


class GatedBus(FakeBus):
    """The fake bus, recording each publish call; while ``gate`` is unset, publishes wait for it."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__(store.clock)
        self.gate: asyncio.Event | None = None
        self.calls: list[dict[str, list[bytes]]] = []
        store.bus = store.log.bus = store.roster.bus = self

    async def publish(self, messages: Mapping[str, Sequence[bytes]], node: str) -> None:
        self.calls.append({room: list(batch) for room, batch in messages.items()})
        if self.gate is not None:
            await self.gate.wait()
        await super().publish(messages, node)


async def two_nodes() -> tuple[Node, Node, GatedBus]:
    """n1 (whose frames are sent) and n2, both following room r on one store."""
    store = FakeStore()
    bus = GatedBus(store)
    here = await started_node(store, "n1")
    there = await started_node(store, "n2")
    return here, there, bus


async def test_frames_posted_in_one_pass_are_published_in_one_call_in_order_by_room() -> None:
    here, _, bus = await two_nodes()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    ephemeral.post("r", b"0-0", "F1")
    ephemeral.post("s", b"0-0", "G1")
    await ephemeral.send("r", b"0-0", "F2")
    assert bus.calls == [{"r": [b"0-0 F1", b"0-0 F2"], "s": [b"0-0 G1"]}]


async def test_frames_posted_in_one_batch_share_one_future() -> None:
    here, _, bus = await two_nodes()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    first, second = ephemeral.post("r", b"0-0", "F1"), ephemeral.post("r", b"0-0", "F2")
    assert first is second
    await first
    third = ephemeral.post("r", b"0-0", "F3")
    assert third is not first
    await third
    assert len(bus.calls) == 2


async def test_frames_posted_while_a_publish_is_in_flight_go_in_the_next_one_and_futures_finish_in_order() -> None:
    here, _, bus = await two_nodes()
    bus.gate = asyncio.Event()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    first = ephemeral.post("r", b"0-0", "F1")
    await passes()
    second = ephemeral.post("r", b"0-0", "F2")
    third = ephemeral.post("r", b"0-0", "F3")
    assert second is third and not first.done()
    finished: list[str] = []
    first.add_done_callback(lambda _: finished.append("first"))
    second.add_done_callback(lambda _: finished.append("second"))
    bus.gate.set()
    await second
    await passes(1)
    assert finished == ["first", "second"]
    assert bus.calls == [{"r": [b"0-0 F1"]}, {"r": [b"0-0 F2", b"0-0 F3"]}]


async def test_a_frame_goes_to_the_local_feed_at_once_and_to_the_other_nodes() -> None:
    here, there, bus = await two_nodes()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    skip = object()
    ephemeral.post("r", b"0-0", "F", skip)
    assert here.sink.seen() == ["F"] and here.sink.skips == [skip]  # before the publish
    await passes()
    assert there.sink.seen() == ["F"] and there.sink.skips == [None]  # skip is this node's member only
    assert here.sink.seen() == ["F"]  # not echoed back to the sender's node


async def test_local_hands_a_frame_to_this_nodes_members_only_and_names_the_sender() -> None:
    here, there, bus = await two_nodes()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    ephemeral.local("r", b"0-0", "F")  # (a generation's fenced frame: the other nodes were told apart)
    await passes()
    assert here.sink.seen() == ["F"] and there.sink.seen() == [] and bus.calls == []
    assert ephemeral.node == "n1" and Ephemeral(bus, "n1", None).node == ""  # no feed: follows no room
    Ephemeral(bus, "n1", None).local("r", b"0-0", "G")  # a separate worker process has no members


async def test_a_frame_after_an_entry_not_yet_delivered_waits_in_the_local_feed() -> None:
    here, _, bus = await two_nodes()
    entry = here.store.log.add("r", b"x")
    ephemeral = Ephemeral(bus, "n1", here.feed)
    await ephemeral.send("r", entry, "F")
    await passes()
    assert here.sink.seen() == [entry.decode(), "F"]


async def test_a_failed_publish_fails_its_batch_and_the_next_batch_is_sent() -> None:
    here, there, bus = await two_nodes()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    bus.failing = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        await ephemeral.send("r", b"0-0", "F1")
    bus.failing = None
    await ephemeral.send("r", b"0-0", "F2")
    await passes()
    assert there.sink.seen() == ["F2"]
    assert here.sink.seen() == ["F1", "F2"]  # the local members had it anyway


async def test_any_publish_error_is_given_to_the_senders() -> None:
    here, _, bus = await two_nodes()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    error = RuntimeError("bug")
    bus.failing = error
    with pytest.raises(RuntimeError) as raised:
        await ephemeral.send("r", b"0-0", "F")
    assert raised.value is error


async def test_a_process_without_a_feed_publishes_to_every_follower_as_nobody() -> None:
    here, there, bus = await two_nodes()
    worker = Ephemeral(bus, "n1", None)  # a worker process: its id is not a follower's
    await worker.send("r", b"0-0", "F")
    await passes()
    assert here.sink.seen() == ["F"] and there.sink.seen() == ["F"]


async def test_a_cancelled_flusher_cancels_its_batchs_future() -> None:
    here, _, bus = await two_nodes()
    bus.gate = asyncio.Event()
    ephemeral = Ephemeral(bus, "n1", here.feed)
    told = ephemeral.post("r", b"0-0", "F")
    await passes()
    assert ephemeral._batches._flusher is not None
    ephemeral._batches._flusher.cancel()
    await passes()
    assert told.cancelled()
    again = ephemeral.post("r", b"0-0", "G")  # a new flusher for later frames
    bus.gate.set()
    await again
