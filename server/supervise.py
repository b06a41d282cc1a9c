"""Supervised background loops: every loop of a process survives any error and comes back by itself.

A loop is a coroutine function that runs until cancelled (the feed's heartbeat and announcements, the
catch-up readers, the presence sweeps, the LLM workers' reads, reclaims, lock renewals and cancel
listener, the appender's flusher). :meth:`Supervisor.run` starts it and, whenever it raises (any
exception: Redis unreachable, Redis refusing writes, a bug), waits a growing backoff and starts it
again. The loop says when it works (:meth:`Supervisor.up`: after a heartbeat, a read, a subscription);
from its first failure until then it is *down*:

- ``GET /readyz`` answers 503 ``{"status": "unavailable", "reason": "loop down: <names>"}`` (names
  only: no address, no exception text);
- ``chat_loop_up{loop}`` is 0, and ``chat_loop_failures_total{loop}`` counts every failure.

Logging is once per kind of failure, not once per retry: the first failure of each kind (exception
type and message, addresses removed) is logged at WARNING, then nothing more for that kind until the
loop is up again, which is logged at INFO with the number of failures in between. Loops that retry by
themselves (a catch-up reader resumes from its cursor) report with :meth:`Supervisor.failed` under a
key (their room): the loop is down while any of its keys is.

Failures on a client's path (a refused append, answered ``unavailable``) are logged by
:class:`Throttled`: each kind at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server.store.ports import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
MAX_KINDS = 5  # kinds of failure logged per outage of one loop; more are counted, not logged

#: Network addresses, as they appear in the messages of redis-py, the lean client and the OS: URLs,
#: ``host:port`` (not ``@user_script:12``), bracketed IPv6, bare IPv4 and Unix socket paths.
_ADDRESS = re.compile(
    r"\b[a-z][a-z0-9+.-]*://\S+"
    r"|\[[0-9A-Fa-f:.]+\](?::\d+)?"
    r"|(?<![@\w.-])[A-Za-z0-9][\w.-]*:\d{1,5}\b"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}\b"
    r"|/[^\s:]+\.sock\b"
)


def backoff(failures: int) -> float:
    """The pause before retrying after ``failures + 1`` failures in a row (capped)."""
    return _BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)]


def without_addresses(text: str) -> str:
    """``text`` with every network address replaced by ``<address>``."""
    return _ADDRESS.sub("<address>", text)


def kind_of(exc: BaseException) -> str:
    """What identifies a kind of failure: the exception's type and message, addresses removed."""
    message = without_addresses(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _expected(exc: BaseException) -> bool:
    """The store failing (unreachable, refusing) or the network: no traceback, it is not a bug."""
    return isinstance(exc, StoreUnavailable | StoreError | OSError | TimeoutError)


class LoopEnded(RuntimeError):
    """A supervised loop returned: loops run until cancelled, so it is started again."""


@dataclass(slots=True)
class _Loop:
    name: str
    failures: int = 0  # every failure since the process started
    in_a_row: int = 0  # failures since it was last up: the next backoff
    down_keys: set[str] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)  # logged during the current outage


class Supervisor:
    """The named loops of one process, their failures and which of them are down."""

    def __init__(self, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 logger: logging.Logger = log) -> None:
        self._sleep = sleep
        self._log = logger
        self._loops: dict[str, _Loop] = {}

    def register(self, name: str) -> None:
        """Make ``name`` known (up, no failures) before it first runs or fails."""
        if name not in self._loops:
            self._loops[name] = _Loop(name)

    async def run(self, name: str, loop: Callable[[], Awaitable[None]], *, up_on_start: bool = False) -> None:
        """Run ``loop()`` until cancelled; when it raises (or returns), record the failure, wait the
        backoff and start it again. ``up_on_start``: the loop is up as soon as it is (re)started (a
        loop that waits for work, with nothing to probe)."""
        self.register(name)
        state = self._loops[name]
        while True:
            if up_on_start:
                self.up(name)
            try:
                await loop()
                raise LoopEnded(f"{name} returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(name, exc)
            await self._sleep(backoff(state.in_a_row - 1))

    def failed(self, name: str, exc: BaseException, key: str = "") -> None:
        """Record a failure of ``name`` (of its part ``key``): down until :meth:`up` for that key;
        the first failure of each kind is logged."""
        self.register(name)
        state = self._loops[name]
        state.failures += 1
        state.in_a_row += 1
        state.down_keys.add(key)
        kind = kind_of(exc)
        if kind in state.kinds or len(state.kinds) > MAX_KINDS:
            return
        state.kinds.add(kind)
        if len(state.kinds) > MAX_KINDS:
            self._log.warning("%s: more kinds of failure; not logged until it recovers", name)
            return
        self._log.warning("%s failing: %s (retrying with backoff; logged once per kind until it recovers)",
                          name, kind, exc_info=None if _expected(exc) else exc)

    def up(self, name: str, key: str = "") -> None:
        """``name`` (its part ``key``) works; when that ends an outage, it is logged."""
        state = self._loops.get(name)
        if state is None or not state.down_keys:  # the common case: nothing to do
            return
        state.down_keys.discard(key)
        if state.down_keys:
            return
        self._log.info("%s recovered after %d failure(s)", name, state.in_a_row)
        state.in_a_row = 0
        state.kinds.clear()

    def is_up(self, name: str) -> bool:
        state = self._loops.get(name)
        return state is None or not state.down_keys

    def down(self) -> list[str]:
        """The names of the loops failing now, sorted."""
        return sorted(name for name, state in self._loops.items() if state.down_keys)

    def loops(self) -> list[tuple[str, bool, int]]:
        """``(name, up, failures)`` of every loop, sorted by name (for ``/metrics``)."""
        return [(name, not state.down_keys, state.failures) for name, state in sorted(self._loops.items())]


class Throttled:
    """Logs each kind of failure (:func:`kind_of`) at most once every ``every_s`` seconds, at WARNING."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def warning(self, what: str, exc: BaseException) -> None:
        kind, now = kind_of(exc), self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._every_s:
            return
        if len(self._last) > 1000:  # kinds are few; never let them grow without bound
            self._last.clear()
        self._last[kind] = now
        self._log.warning("%s: %s (logged once every %g s per kind)", what, kind, self._every_s)
