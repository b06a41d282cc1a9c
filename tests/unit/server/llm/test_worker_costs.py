"""A worker's part in the cost guard and in ``llm.regenerate``, on fakes.

Rules, each named by a test: an answer's tokens (its provider's usage) are counted for its room and
the deployment when its stream ends, before the answer is stored; an answer without usage counts
nothing; every frame of an answer that regenerates another carries ``hd.regenerates``.
"""

from __future__ import annotations

from server.llm.provider import Outcome, ProviderError
from server.llm.quota import DAY_S
from server.settings import LLMSettings
from tests.unit.server.llm.rig import Rig, instant

USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def today(rig: Rig) -> int:
    return rig.store.clock.now_ms // 1000 // DAY_S


async def test_an_answers_tokens_count_for_its_room_and_the_deployment_before_it_is_stored() -> None:
    async with Rig(guard=True) as rig:
        usage, stored_when_counted = rig.store.usage, []
        add_tokens = usage.add_tokens

        async def counting(room: str, day: int, tokens: int) -> None:  # the fake, recording when it is called
            stored_when_counted.append(len(rig.answers()))
            await add_tokens(room, day, tokens)

        usage.add_tokens = counting  # type: ignore[method-assign]
        rig.provider.script("a", "b", Outcome("stop", "m", USAGE))
        await rig.serve(await rig.ask())
        assert stored_when_counted == [0] and len(rig.answers()) == 1
        assert usage.room_tokens == {("r", today(rig)): 15} and usage.day_tokens == {today(rig): 15}


async def test_an_answer_without_usage_counts_no_tokens() -> None:
    async with Rig(guard=True, sleep=instant) as rig:
        rig.provider.script("a", ProviderError("provider_unavailable"))
        await rig.serve(await rig.ask())
        assert rig.store.usage.room_tokens == {} and len(rig.answers()) == 1


async def test_every_frame_of_a_regenerated_answer_names_the_answer_it_gives_again() -> None:
    async with Rig() as rig:
        reply_to = rig.store.log.add("r", b'{"hd":{"event":"chat.message"},"bd":{"text":"@llm hi"}}')
        await rig.store.bus.follow(["r"], "n2", 3600)
        await rig.queue_request("r", reply_to.decode(), regenerates="g-old")
        [request] = await rig.queue.read("w1", 1, 0)
        assert request.regenerates == "g-old"
        rig.provider.script("a", "b", Outcome("stop", "m", None))
        await rig.serve(request)
        frames = rig.frames()
        assert [f["hd"]["event"] for f in frames] == ["llm.streaming", "llm.streaming"]
        assert {f["hd"]["regenerates"] for f in frames} == {"g-old"}
        [(_, answer)] = rig.answers()
        assert (answer["hd"]["regenerates"], answer["hd"]["reply_to"], answer["hd"]["rid"]) == (
            "g-old", reply_to.decode(), request.rid)


async def test_a_regenerated_answer_that_fails_without_text_says_so_with_regenerates() -> None:
    async with Rig(sleep=instant) as rig:
        reply_to = rig.store.log.add("r", b'{"hd":{"event":"chat.message"},"bd":{"text":"@llm hi"}}')
        await rig.store.bus.follow(["r"], "n2", 3600)
        await rig.queue_request("r", reply_to.decode(), regenerates="g-old")
        [request] = await rig.queue.read("w1", 1, 0)
        rig.provider.script(ProviderError("provider_timeout"))
        await rig.serve(request)
        [error] = rig.frames()
        assert (error["hd"]["event"], error["hd"]["regenerates"]) == ("llm.error", "g-old")


async def test_an_answer_that_regenerates_nothing_carries_no_regenerates() -> None:
    async with Rig(settings=LLMSettings(history_turns=10)) as rig:
        await rig.serve(await rig.ask())
        assert all("regenerates" not in f["hd"] for f in rig.frames())
        assert all("regenerates" not in answer["hd"] for _, answer in rig.answers())
