"""Per-connection frame rate limits: token buckets on an injected clock, no I/O.

A connection may send ``burst`` frames at once and ``per_s`` frames a second after that. Every
frame counts, valid or not. A frame over the limit is refused (the caller answers it with
``rate_limited`` and does not process it); each refusal is counted in turn against a second
allowance of the same size and rate, and the frame that finds that one spent too means the client
is ignoring its refusals: the caller closes the connection (1008). So a client that slows down
when refused is never closed, and one that keeps sending at more than twice ``per_s`` is closed
after about ``burst`` refusals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

Clock = Callable[[], float]  # seconds, monotonic


class Verdict(Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"  # answer rate_limited, do not process
    CLOSE = "close"  # flooding: close the connection


class TokenBucket:
    """``capacity`` tokens, refilled at ``per_s`` a second; starts full."""

    __slots__ = ("_capacity", "_per_s", "_stamp", "_tokens")

    def __init__(self, per_s: float, capacity: float, now: float) -> None:
        self._per_s = per_s
        self._capacity = capacity
        self._tokens = capacity
        self._stamp = now

    def take(self, now: float) -> bool:
        """Take one token at time ``now``; False (and nothing taken) when there is none."""
        tokens = min(self._capacity, self._tokens + max(0.0, now - self._stamp) * self._per_s)
        self._stamp = max(now, self._stamp)
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        return False


class FrameLimiter:
    """One connection's limit: :meth:`admit` once per frame received."""

    __slots__ = ("_clock", "_frames", "_refusals")

    def __init__(self, per_s: float, burst: int, clock: Clock = time.monotonic) -> None:
        now = clock()
        self._clock = clock
        self._frames = TokenBucket(per_s, burst, now)
        self._refusals = TokenBucket(per_s, burst, now)

    def admit(self) -> Verdict:
        now = self._clock()
        if self._frames.take(now):
            return Verdict.ACCEPT
        return Verdict.REFUSE if self._refusals.take(now) else Verdict.CLOSE


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The configured limit; ``per_s == 0`` turns it off."""

    per_s: float = 0.0
    burst: int = 1

    def limiter(self, clock: Clock = time.monotonic) -> FrameLimiter | None:
        """A fresh limiter for one connection, or None when there is no limit."""
        return FrameLimiter(self.per_s, self.burst, clock) if self.per_s > 0 else None


NO_RATE_LIMIT = RateLimit()
