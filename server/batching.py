"""One step per event-loop pass: what is posted while a step is in flight goes together in the next.

:class:`Batcher` serves the unstored frames of every room (:mod:`server.ephemeral`, one script call a
step) and a generation's fenced deltas (:mod:`server.llm.worker`, one fenced step a step). Steps run
one at a time, in the order their items were posted; every item of one step shares one future, done
when the step has run (with the step's exception when it failed; cancelled when the step was).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, step: Callable[[list[T]], Awaitable[None]]) -> None:
        self._step = step
        self._pending: list[T] = []
        self._told: asyncio.Future[None] | None = None  # done when the pending items' step has run
        self._flusher: asyncio.Task[None] | None = None

    def post(self, item: T) -> asyncio.Future[None]:
        """Queue ``item`` for the next step; the future is done once that step has run."""
        self._pending.append(item)
        if self._told is None:
            loop = asyncio.get_running_loop()
            self._told = loop.create_future()
            if self._flusher is None:
                self._flusher = loop.create_task(self._flush())
        return self._told

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, told = self._pending, self._told
                self._pending, self._told = [], None
                assert told is not None
                try:
                    await self._step(batch)
                except asyncio.CancelledError:
                    told.cancel()
                    raise
                except Exception as exc:
                    told.set_exception(exc)
                    continue
                told.set_result(None)
        finally:
            self._flusher = None
