"""``python -m server.llm_worker``: LLM workers in a process of their own (same settings as the
server). They serve the request queue like the server's in-process workers and publish their
frames to the rooms through Redis like any node; several such processes may run side by side.

``LLM_WORKERS`` (at least 1 here) worker consumers run, each with up to ``LLM_CONCURRENCY``
generations at once. SIGTERM or SIGINT ends running generations as ``cancelled`` (stored), then
exits. It needs ``REDIS_URL``: the embedded store lives inside one server process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from server.settings import Settings, settings_or_exit
from server.wiring import WorkerNode, store_of

log = logging.getLogger("server.llm_worker")

async def serve(settings: Settings) -> None:
    node = WorkerNode(settings, store_of(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with node.running():
        log.info("LLM worker %s: %d consumer(s), provider %s", node.node_id, len(node.parts.workers),
                 settings.llm.provider)
        await stop.wait()


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
