"""``python -m server``: read the settings from the environment and serve under uvicorn.

With ``WORKERS=1`` (the default) this process serves the port. Otherwise it binds the port and
hands the socket to that many worker processes under uvicorn's supervisor
(:class:`uvicorn.supervisors.Multiprocess`), as uvicorn's and gunicorn's workers share one: each
builds its app from the same environment (the factory :func:`server.app.worker_app`), so each is a
node of its own. The supervisor replaces a worker that dies, and on SIGTERM or SIGINT passes the
signal on to every worker (each closes its connections with 1012 and shuts down as a single process
does) and exits once they all have.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import uvicorn

from server.app import create_app
from server.settings import Settings, label_logs, settings_from_environment

log = logging.getLogger("server")

WORKER_APP = "server.app:worker_app"  # the factory each worker process imports


def main() -> int:
    settings = settings_from_environment()
    processes = settings.worker_processes(available_cores())
    if processes == 1:
        uvicorn.run(create_app(settings), workers=1, **uvicorn_options(settings))
        return 0
    label_logs("main")
    log.info("serving port %d from %d worker processes, each a node of its own", settings.port, processes)
    uvicorn.run(WORKER_APP, factory=True, workers=processes, **uvicorn_options(settings))
    return 0


def available_cores() -> int:
    """The cores this process may run on (``WORKERS=0`` starts one worker per core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options, the same for one process and for every worker process."""
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
        # Frames up to the limit are answered with too_large; far bigger ones are cut off (1009).
        "ws_max_size": max(4 * settings.max_message_bytes, 1 << 20),
        "ws_ping_interval": settings.ping_interval_s or None,
        "ws_ping_timeout": settings.ping_timeout_s or None,
        "log_level": settings.log_level,
        # uvicorn's lines go to the root logger's handler, set up by settings_or_exit: one format, and
        # the same redaction (a browser's ?token= is in every WebSocket line uvicorn writes).
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
    }


if __name__ == "__main__":
    sys.exit(main())
