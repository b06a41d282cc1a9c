"""The cost guard: how much the bot may answer, per room and for the whole deployment.

Three budgets (:class:`Budgets`, from ``LLM_ROOM_GENERATIONS_PER_HOUR``, ``LLM_ROOM_TOKENS_PER_DAY`` and
``LLM_TOKENS_PER_DAY``), counted in the store (:class:`~server.store.ports.UsageCounters`), so every node
and every worker counts against the same numbers:

- **generations per room, in a sliding hour**: a question is counted when it is accepted (queued), at
  the time Redis's clock says; it stops counting one hour later. A question that finds
  ``LLM_ROOM_GENERATIONS_PER_HOUR`` questions counted in the last hour is refused, with
  ``retry_after_s`` the seconds until the oldest of them leaves the hour (then one more is accepted).
- **tokens per room and per deployment, per UTC day**: an answer's tokens (the provider's
  ``total_tokens``: prompt and completion; the scripted provider counts words) are added when it ends.
  A question is refused once the day's tokens reached the budget, with ``retry_after_s`` the seconds
  until the next UTC midnight. The budgets are checked before a question and counted after its answer,
  so they can be overshot by the answers running when they are reached (one per room at most). An
  answer with no usage (cancelled or failed before the provider reported it) adds nothing.

Checks come in this order: the deployment's tokens, the room's tokens, the room's generations; a
refused question is not counted. The check is atomic per room (one step checks and counts), so two
nodes never both admit the last question of a room's hour. When the counters cannot be read (the store
is unreachable) the question is let through and a warning logged: the guard never makes the bot fail.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from protocol.errors import ProtocolError
from server.metrics import COUNTS
from server.settings import Budgets
from server.store.ports import UsageCounters

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_S = 86_400


class CostGuard:
    def __init__(self, counters: UsageCounters, budgets: Budgets, clock: Callable[[], float] = time.time) -> None:
        self._counters = counters
        self.budgets = budgets
        self._clock = clock  # Unix seconds: which UTC day it is

    def today(self) -> int:
        """The UTC day, in days since 1970-01-01."""
        return int(self._clock() // DAY_S)

    def _until_tomorrow_s(self) -> int:
        return max(1, math.ceil((self.today() + 1) * DAY_S - self._clock()))

    async def admit(self, room: str, rid: str, cid: str | None) -> None:
        """Count the question ``rid`` of ``room``; ``ProtocolError("quota_exceeded")`` with ``retry_after_s``
        when a budget is spent (nothing counted)."""
        budgets, day = self.budgets, self.today()
        try:
            if budgets.tokens_per_day is not None and await self._counters.tokens(day) >= budgets.tokens_per_day:
                raise _over(f"The bot's answers used the {budgets.tokens_per_day} tokens this deployment may use "
                            "today (LLM_TOKENS_PER_DAY)", self._until_tomorrow_s(), cid)
            admission = await self._counters.admit(room, rid, HOUR_MS, budgets.generations_per_hour or 0, day,
                                                   budgets.room_tokens_per_day or 0)
        except ProtocolError:
            raise
        except Exception as exc:
            log.warning("room %s: the bot's budgets could not be checked (%s): %s is let through", room, exc, rid)
            return
        if admission.over == "tokens":
            raise _over(f"This room's answers used the {budgets.room_tokens_per_day} tokens it may use today "
                        "(LLM_ROOM_TOKENS_PER_DAY)", self._until_tomorrow_s(), cid)
        if admission.over == "generations":
            raise _over(f"The bot answered {budgets.generations_per_hour} questions in this room in the last hour "
                        "(LLM_ROOM_GENERATIONS_PER_HOUR)", math.ceil(admission.retry_after_ms / 1000), cid)

    async def spent(self, room: str, model: str, usage: Mapping[str, int]) -> None:
        """Count an answer's tokens (its provider's ``usage``) for the room and the deployment, and in the
        metrics by ``model``; a count that fails is logged, not raised."""
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        COUNTS.tokens_in[model] += prompt
        COUNTS.tokens_out[model] += completion
        total = usage.get("total_tokens", prompt + completion)
        if total <= 0:
            return
        try:
            await self._counters.add_tokens(room, self.today(), total)
        except Exception as exc:
            log.warning("room %s: %d tokens could not be counted (%s)", room, total, exc)

    async def usage(self, room: str) -> dict[str, Any]:
        """``GET /api/chat/{sid}/usage``'s body."""
        generations, tokens = await self._counters.room_usage(room, HOUR_MS, self.today())
        return {"sid": room, "generations_last_hour": generations, "tokens_today": tokens,
                "limits": {"generations_per_hour": self.budgets.generations_per_hour,
                           "tokens_per_day": self.budgets.room_tokens_per_day}}


def _over(why: str, retry_after_s: int, cid: str | None) -> ProtocolError:
    return ProtocolError("quota_exceeded", f"{why}: the question is stored but not answered; ask again in "
                         f"{retry_after_s} s.", cid, retry_after_s=max(1, retry_after_s))
