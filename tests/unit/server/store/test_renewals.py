"""A room's expiry is renewed by its first append of each period of ``ttl_s / 1000`` seconds (at most 60),
to ``ttl_s`` and that slack: it expires between ``ttl_s`` and ``ttl_s + slack`` after its last write."""

from __future__ import annotations

from server.store.redis_store import RENEW_SLACK_MAX_S, Renewals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_slack_is_a_thousandth_of_the_ttl_at_most_a_minute() -> None:
    assert Renewals.slack_s(0) == 0
    assert Renewals.slack_s(999) == 0
    assert Renewals.slack_s(5000) == 5
    assert Renewals.slack_s(604800) == RENEW_SLACK_MAX_S == 60
    assert Renewals().ttl_s(604800) == 604860
    assert Renewals().ttl_s(500) == 500
    assert Renewals().ttl_s(0) == 0


def test_below_a_thousand_seconds_every_append_renews() -> None:
    renewals = Renewals(Clock())
    due, since = renewals.due(["a", "b"], 500)
    renewals.renewed(due, since)
    assert renewals.due(["a", "b"], 500)[0] == {"a", "b"}


def test_a_room_is_renewed_once_a_period() -> None:
    clock = Clock()
    renewals = Renewals(clock)
    due, since = renewals.due(["a"], 604800)
    assert due == {"a"}
    renewals.renewed(due, since)
    clock.now += 59.9
    assert renewals.due(["a", "b"], 604800)[0] == {"b"}
    clock.now += 0.1  # the period is over: renewed again
    assert renewals.due(["a"], 604800)[0] == {"a"}


def test_a_room_that_was_not_renewed_is_due_again() -> None:
    renewals = Renewals(Clock())
    due, since = renewals.due(["a", "b"], 604800)
    due.discard("b")  # (its step failed, or appended nothing)
    renewals.renewed(due, since)
    assert renewals.due(["a", "b"], 604800)[0] == {"b"}


def test_a_renewal_named_in_an_earlier_period_is_not_counted_in_the_next() -> None:
    clock = Clock()
    renewals = Renewals(clock)
    due, since = renewals.due(["a"], 604800)
    clock.now += 60
    assert renewals.due(["b"], 604800)[0] == {"b"}  # (a new period began meanwhile)
    renewals.renewed(due, since)
    assert renewals.due(["a"], 604800)[0] == {"a"}
