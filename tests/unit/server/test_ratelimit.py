"""The frame rate limit on a clock the tests move by hand: no sleeping, no sockets."""

from __future__ import annotations

import pytest

from server.ratelimit import NO_RATE_LIMIT, FrameLimiter, RateLimit, TokenBucket, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admit_n(limiter: FrameLimiter, n: int) -> list[Verdict]:
    return [limiter.admit() for _ in range(n)]


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(per_s=2, capacity=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.49)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_a_bucket_never_holds_more_than_its_capacity() -> None:
    bucket = TokenBucket(per_s=10, capacity=2, now=0.0)
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]


def test_a_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(per_s=1, capacity=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_a_burst_is_accepted_then_frames_are_refused() -> None:
    limiter = FrameLimiter(per_s=1, burst=5, clock=Clock())
    assert admit_n(limiter, 6) == [Verdict.ACCEPT] * 5 + [Verdict.REFUSE]


def test_the_limit_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = FrameLimiter(per_s=10, burst=5, clock=clock)
    admit_n(limiter, 5)
    clock.advance(0.35)  # 3.5 frames' worth
    assert admit_n(limiter, 4) == [Verdict.ACCEPT] * 3 + [Verdict.REFUSE]


def test_a_client_ignoring_its_refusals_is_closed_after_a_burst_of_them() -> None:
    limiter = FrameLimiter(per_s=1, burst=5, clock=Clock())
    assert admit_n(limiter, 11) == [Verdict.ACCEPT] * 5 + [Verdict.REFUSE] * 5 + [Verdict.CLOSE]


def test_a_client_that_slows_down_after_refusals_is_never_closed() -> None:
    clock = Clock()
    limiter = FrameLimiter(per_s=2, burst=4, clock=clock)
    assert admit_n(limiter, 8) == [Verdict.ACCEPT] * 4 + [Verdict.REFUSE] * 4
    for _ in range(1000):  # then exactly at the rate: every frame accepted
        clock.advance(0.5)
        assert limiter.admit() is Verdict.ACCEPT


def test_sending_at_twice_the_rate_is_half_refused_but_never_closed() -> None:
    clock = Clock()
    limiter = FrameLimiter(per_s=10, burst=3, clock=clock)
    admit_n(limiter, 3)
    verdicts = []
    for _ in range(2000):
        clock.advance(0.05)
        verdicts.append(limiter.admit())
    assert Verdict.CLOSE not in verdicts
    assert abs(verdicts.count(Verdict.ACCEPT) - 1000) <= 3


def test_sending_well_over_twice_the_rate_is_closed() -> None:
    clock = Clock()
    limiter = FrameLimiter(per_s=10, burst=3, clock=clock)
    verdicts: list[Verdict] = []
    while Verdict.CLOSE not in verdicts and len(verdicts) < 1000:
        clock.advance(0.02)  # 50 frames/s against 10/s
        verdicts.append(limiter.admit())
    assert verdicts[-1] is Verdict.CLOSE


@pytest.mark.parametrize("limit", [NO_RATE_LIMIT, RateLimit(per_s=0, burst=200)])
def test_a_rate_of_zero_means_no_limiter(limit: RateLimit) -> None:
    assert limit.limiter() is None


def test_each_connection_gets_its_own_limiter() -> None:
    limit, clock = RateLimit(per_s=1, burst=1), Clock()
    first, second = limit.limiter(clock), limit.limiter(clock)
    assert first is not None and second is not None
    assert (first.admit(), first.admit(), second.admit()) == (Verdict.ACCEPT, Verdict.REFUSE, Verdict.ACCEPT)
