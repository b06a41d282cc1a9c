"""``python -m server``: read the settings from the environment and serve under uvicorn."""

from __future__ import annotations

import os
import sys

import uvicorn

from server.app import create_app
from server.settings import settings_or_exit


def main() -> int:
    settings = settings_or_exit("chat-relay", os.environ)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        # Frames up to the limit are answered with too_large; far bigger ones are cut off (1009).
        ws_max_size=max(4 * settings.max_message_bytes, 1 << 20),
        ws_ping_interval=settings.ping_interval_s or None,
        ws_ping_timeout=settings.ping_timeout_s or None,
        log_level=settings.log_level,
        # uvicorn's lines go to the root logger's handler, set up by settings_or_exit: one format, and
        # the same redaction (a browser's ?token= is in every WebSocket line uvicorn writes).
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
