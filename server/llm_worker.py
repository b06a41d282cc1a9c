"""``python -m server.llm_worker``: LLM workers in a process of their own (same settings as the
server). They serve the request queue like the server's in-process workers and publish their
frames to the rooms through Redis like any node; several such processes may run side by side.

``LLM_WORKERS`` (at least 1 here) worker consumers run, each with up to ``LLM_CONCURRENCY``
generations at once. SIGTERM or SIGINT ends running generations as ``cancelled`` (stored), then
exits. It needs ``REDIS_URL``: the embedded store lives inside one server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys

from server.appender import Appender, Retention
from server.ephemeral import Ephemeral
from server.llm import make_provider
from server.llm.jobs import Jobs
from server.llm.worker import Worker
from server.settings import Settings, settings_or_exit
from server.store import StreamStore

log = logging.getLogger("server.llm_worker")

SHUTDOWN_GENERATIONS_S = 5.0


async def serve(settings: Settings) -> None:
    store = StreamStore.connect(settings.redis_url)
    node_id = "w" + secrets.token_hex(6)
    appender = Appender(store, Retention(settings.stream_maxlen, settings.room_ttl_seconds, settings.dedupe_window_s),
                        node_id, lambda key, before, items: None)
    ephemeral = Ephemeral(store, node_id, None)
    provider = make_provider(settings.llm)
    jobs = Jobs(store, settings.llm.queue)
    workers = [Worker(f"{node_id}-{n}", jobs, store, appender, ephemeral, provider, settings.llm,
                      settings.llm.concurrency) for n in range(max(settings.llm.workers, 1))]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [loop.create_task(appender.run()), *(loop.create_task(worker.run()) for worker in workers)]
    log.info("LLM worker %s: %d consumer(s), provider %s", node_id, len(workers), settings.llm.provider)
    try:
        await stop.wait()
    finally:
        await asyncio.gather(*(worker.stop(SHUTDOWN_GENERATIONS_S) for worker in workers))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.gather(*(worker.forget() for worker in workers))
        await provider.aclose()
        await store.close()


def main() -> int:
    settings = settings_or_exit("chat-relay llm_worker", os.environ)
    if settings.redis_url is None:
        print("chat-relay llm_worker: REDIS_URL is required (the embedded store lives inside one server process)",
              file=sys.stderr)
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
