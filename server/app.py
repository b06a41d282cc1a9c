"""The ASGI app: ``create_app(settings)`` builds the process's parts (:mod:`server.wiring`, the
composition root), puts the endpoints in front of them and runs them in Starlette's lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from server.admission import Admission
from server.docs_routes import docs_routes
from server.history import history_routes
from server.metrics import MetricsAccess, metrics_routes
from server.outlet import write_path
from server.rooms_api import rooms_routes
from server.settings import Settings, label_logs, settings_from_environment
from server.store.ports import Store, StoreError, StoreUnavailable
from server.wiring import Relay, store_of
from server.ws import PATH, ChatEndpoint

log = logging.getLogger(__name__)

STORE_UNREACHABLE = "store unreachable"  # /readyz's reasons (503)
STORE_REFUSES = "store refuses commands"


class RelayApp(Starlette):
    """The Starlette app, except that chat connections go straight to their endpoint.

    Every frame a member receives is an ASGI ``send``; the middleware stack would wrap each one in
    another coroutine (to track whether an HTTP response started), for nothing on a WebSocket. The
    route stays listed for the documents and ``url_path_for``.
    """

    def __init__(self, chat: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == PATH:
            scope["app"] = self
            await self._chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    relay = Relay(settings, store or store_of(settings))
    endpoint = ChatEndpoint(relay.hub, relay.sessions, relay.dispatcher, settings.limits, settings.send_queue_max,
                            relay.access, settings.rate_limit)
    admission = Admission(endpoint, settings.allowed_origins, settings.max_connections_per_ip)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "node": relay.node_id})

    store_failure: list[str] = []  # the last failure /readyz logged (once, until the store answers again)

    async def readyz(request: Request) -> JSONResponse:
        """200 when Redis answers and every supervised loop works; else 503 with a reason that names
        what fails (never an address or an exception's text: the details go to the log, once)."""
        try:
            await relay.store.ping()
        except StoreUnavailable as exc:
            if store_failure != [str(exc)]:
                log.warning("readyz: the store is unreachable: %s", exc)
                store_failure[:] = [str(exc)]
            return _unavailable(STORE_UNREACHABLE)
        except StoreError as exc:
            if store_failure != [str(exc)]:
                log.warning("readyz: the store refuses commands: %s", exc)
                store_failure[:] = [str(exc)]
            return _unavailable(STORE_REFUSES)
        if store_failure:
            log.info("readyz: the store answers again")
            store_failure.clear()
        down = relay.supervisor.down()
        if down:
            return _unavailable(f"loop down: {', '.join(down)}")
        return JSONResponse({"status": "ready", "store": relay.store.kind})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("write path: %s", write_path())  # direct (uvicorn X.Y sans-I/O), or ASGI send (why not)
        if not relay.auth.enabled:
            log.warning("AUTH_SECRET is not set: auth is OFF (open development mode): anyone may join any room "
                        "as any role and read or delete any history")
        if relay.auth.enabled and settings.metrics_token is None:
            log.warning("AUTH_SECRET is set but METRICS_TOKEN is not: /metrics refuses every request (401); "
                        "set METRICS_TOKEN and give it to your scraper")
        if relay.store.kind == "embedded":
            log.warning("REDIS_URL is not set: using the embedded in-process store "
                        "(data lives in memory and is lost on exit; single process only)")
        async with relay.running():
            # What exists now (modules, the app) lives as long as the process: out of the
            # collector's sight, a full collection scans only what came later (p99 under load).
            gc.collect()
            gc.freeze()
            yield

    app = RelayApp(
        admission,
        routes=[
            WebSocketRoute(PATH, admission),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *history_routes(relay),
            *rooms_routes(relay.auth, relay.store.instances, settings.auth_token_ttl_s),
            *metrics_routes(relay.fanout.counts, relay.supervisor.loops,
                            MetricsAccess(settings.metrics_token, closed=relay.auth.enabled), relay.fanout.backed_up),
            *docs_routes(),
        ],
        lifespan=lifespan,
    )
    app.state.relay = relay
    return app


def worker_app() -> Starlette:
    """The app of one worker process of ``WORKERS`` (uvicorn's factory, called in each process it
    starts): built from the environment the main process handed down, a node of its own (node id,
    heartbeat, Redis connections); every line it logs names its node."""
    app = create_app(settings_from_environment())
    label_logs(f"node {app.state.relay.node_id}")
    return app


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
