"""The cost guard on fakes (a clock that moves only when told): each budget's rule, named by a test.

- a room's generations count in a sliding hour; the question that finds the hour full is refused
  ``quota_exceeded`` with ``retry_after_s`` = the seconds until the oldest one leaves it, and is not counted;
- a room's tokens and the deployment's tokens count per UTC day; over either, ``retry_after_s`` is the
  seconds until the next UTC midnight;
- a budget that is not set never refuses; counters that cannot be read let the question through.
"""

from __future__ import annotations

import pytest

from protocol.errors import ProtocolError
from server.llm.quota import DAY_S, HOUR_MS, CostGuard
from server.metrics import COUNTS
from server.settings import Budgets
from server.store.ports import StoreUnavailable
from tests.unit.fakes import FakeClock, FakeUsage

MIDNIGHT_MS = 1_700_006_400_000  # a UTC midnight (19676 days after 1970-01-01)


def guard(budgets: Budgets, clock: FakeClock | None = None) -> tuple[CostGuard, FakeUsage, FakeClock]:
    clock = clock or FakeClock(MIDNIGHT_MS + 3_600_000)  # 01:00 UTC
    usage = FakeUsage(clock)
    return CostGuard(usage, budgets, lambda: clock.now_ms / 1000), usage, clock


async def refusal(cost: CostGuard, rid: str, room: str = "r") -> ProtocolError:
    with pytest.raises(ProtocolError) as refused:
        await cost.admit(room, rid, "c9")
    return refused.value


async def test_a_room_over_its_hourly_generations_is_refused_until_its_oldest_leaves_the_hour() -> None:
    cost, usage, clock = guard(Budgets(generations_per_hour=2))
    await cost.admit("r", "g-1", None)
    clock.advance(600)
    await cost.admit("r", "g-2", None)
    clock.advance(60)
    refused = await refusal(cost, "g-3")
    assert (refused.code, refused.cid, refused.retry_after_s) == ("quota_exceeded", "c9", 3600 - 660)
    assert "LLM_ROOM_GENERATIONS_PER_HOUR" in refused.message
    clock.advance(3600 - 660)  # g-1 leaves the hour: one more is admitted
    await cost.admit("r", "g-3", None)
    assert sorted(usage.accepted["r"]) == ["g-2", "g-3"]


async def test_a_refused_question_is_not_counted() -> None:
    cost, usage, _ = guard(Budgets(generations_per_hour=1))
    await cost.admit("r", "g-1", None)
    await refusal(cost, "g-2")
    await refusal(cost, "g-3")
    assert list(usage.accepted["r"]) == ["g-1"]


async def test_the_hourly_budget_is_each_rooms_own() -> None:
    cost, _, _ = guard(Budgets(generations_per_hour=1))
    await cost.admit("r", "g-1", None)
    await cost.admit("other", "g-2", None)
    await refusal(cost, "g-3", "r")


async def test_a_room_over_its_daily_tokens_is_refused_until_utc_midnight() -> None:
    cost, _, clock = guard(Budgets(generations_per_hour=None, room_tokens_per_day=100))
    await cost.admit("r", "g-1", None)
    await cost.spent("r", "m", {"prompt_tokens": 60, "completion_tokens": 40, "total_tokens": 100})
    refused = await refusal(cost, "g-2")
    assert refused.retry_after_s == DAY_S - 3600 and "LLM_ROOM_TOKENS_PER_DAY" in refused.message
    await cost.admit("other", "g-3", None)  # another room's budget is untouched
    clock.advance(DAY_S - 3600)  # the next UTC day
    await cost.admit("r", "g-2", None)


async def test_the_deployments_daily_tokens_refuse_every_room() -> None:
    cost, usage, _ = guard(Budgets(generations_per_hour=None, tokens_per_day=50))
    await cost.spent("a", "m", {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30})
    await cost.admit("b", "g-1", None)
    await cost.spent("b", "m", {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20})
    refused = await refusal(cost, "g-2", "c")
    assert refused.retry_after_s == DAY_S - 3600 and "LLM_TOKENS_PER_DAY" in refused.message
    assert "g-2" not in usage.accepted.get("c", {})


async def test_budgets_that_are_not_set_never_refuse() -> None:
    cost, _, _ = guard(Budgets(None, None, None))
    for n in range(200):
        await cost.admit("r", f"g-{n}", None)
        await cost.spent("r", "m", {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000})


async def test_a_question_admitted_again_with_the_same_rid_counts_once() -> None:
    cost, usage, _ = guard(Budgets(generations_per_hour=1))
    await cost.admit("r", "g-1", None)
    await cost.admit("r", "g-1", None)  # (a retry after a lost reply)
    assert list(usage.accepted["r"]) == ["g-1"]


async def test_counters_that_cannot_be_read_let_the_question_through() -> None:
    cost, usage, _ = guard(Budgets(generations_per_hour=1, tokens_per_day=1))
    usage.failing = StoreUnavailable("down")
    await cost.admit("r", "g-1", None)
    await cost.admit("r", "g-2", None)
    await cost.spent("r", "m", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})  # logged, not raised


async def test_spent_tokens_count_for_the_room_the_deployment_and_the_metrics_by_model() -> None:
    cost, usage, _ = guard(Budgets())
    before_in, before_out = COUNTS.tokens_in["model-q"], COUNTS.tokens_out["model-q"]
    await cost.spent("r", "model-q", {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})
    assert (COUNTS.tokens_in["model-q"] - before_in, COUNTS.tokens_out["model-q"] - before_out) == (7, 5)
    day = MIDNIGHT_MS // 1000 // DAY_S
    assert usage.room_tokens == {("r", day): 12} and usage.day_tokens == {day: 12}


async def test_usage_tells_the_rooms_last_hour_and_day_and_null_for_a_limit_not_set() -> None:
    cost, _, clock = guard(Budgets(generations_per_hour=60, room_tokens_per_day=None))
    await cost.admit("r", "g-1", None)
    clock.advance(HOUR_MS / 2000)
    await cost.admit("r", "g-2", None)
    await cost.spent("r", "m", {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    clock.advance(HOUR_MS / 2000)  # g-1 is an hour old: out of the window
    assert await cost.usage("r") == {"sid": "r", "generations_last_hour": 1, "tokens_today": 7,
                                     "limits": {"generations_per_hour": 60, "tokens_per_day": None}}
