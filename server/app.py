"""The composition root: ``create_app(settings)`` wires the store, the appender, the room feed,
the hub and the endpoints, and owns their lifecycle in Starlette's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from server.admission import Admission
from server.appender import Appender, Retention
from server.auth import Auth
from server.dispatch import Dispatcher
from server.docs_routes import docs_routes
from server.ephemeral import Ephemeral
from server.feed import RoomFeed
from server.history import history_routes
from server.hub import Hub
from server.llm import make_provider
from server.llm.front import LLMFront
from server.llm.jobs import Jobs
from server.llm.worker import Worker
from server.metrics import metrics_routes
from server.outlet import write_path
from server.rooms_api import rooms_routes
from server.session import Sessions
from server.settings import Settings
from server.store import UNREACHABLE, StreamStore
from server.ws import PATH, ChatEndpoint

log = logging.getLogger(__name__)

SHUTDOWN_GENERATIONS_S = 5.0


class Relay:
    """The running parts of one server process."""

    def __init__(self, settings: Settings, store: StreamStore) -> None:
        self.settings = settings
        self.node_id = secrets.token_hex(6)
        self.auth = Auth(settings.auth_secret, settings.admin_key)
        self.store = store
        self.hub = Hub()
        self.feed = RoomFeed(store, self.hub.deliver, self.hub.deliver_frame, self.node_id, settings.node_ttl_s)
        self.hub.attach(self.feed)
        self.appender = Appender(
            store, Retention(settings.stream_maxlen, settings.room_ttl_seconds, settings.dedupe_window_s),
            self.node_id, self.feed.appended)
        self.ephemeral = Ephemeral(store, self.node_id, self.feed)
        self.sessions = Sessions(store, self.ephemeral, self.node_id, settings.room_ttl_seconds,
                                 settings.max_connections_per_room)
        self.feed.on_forgotten = lambda: self.sessions.restore(self.hub.all_members())
        self.feed.on_beat = self.sessions.sweep
        self.jobs = Jobs(store, settings.llm.queue)
        self.dispatcher = Dispatcher(self.appender, LLMFront(self.jobs, self.appender, settings.llm.trigger))
        self.provider = make_provider(settings.llm) if settings.llm.workers > 0 else None
        self.workers = [
            Worker(f"{self.node_id}-{n}", self.jobs, store, self.appender, self.ephemeral, self.provider,
                   settings.llm, settings.llm.concurrency)
            for n in range(settings.llm.workers) if self.provider is not None
        ]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(self.appender.run(), name="appender"),
                 asyncio.create_task(self.feed.run(), name="room-feed"),
                 *(asyncio.create_task(worker.run(), name=worker.name) for worker in self.workers)]
        try:
            yield
        finally:
            # Running generations end as "cancelled" and are stored while the store is still up.
            await asyncio.gather(*(worker.stop(SHUTDOWN_GENERATIONS_S) for worker in self.workers))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(worker.forget() for worker in self.workers), return_exceptions=True)
            if self.provider is not None:
                await self.provider.aclose()
            await self.store.close()


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


def create_app(settings: Settings, store: StreamStore | None = None) -> Starlette:
    relay = Relay(settings, store or StreamStore.connect(settings.redis_url))
    endpoint = ChatEndpoint(relay.hub, relay.sessions, relay.dispatcher, settings.limits, settings.send_queue_max,
                            relay.auth, settings.rate_limit)
    admission = Admission(endpoint, settings.allowed_origins, settings.max_connections_per_ip)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "node": relay.node_id})

    async def readyz(request: Request) -> JSONResponse:
        try:
            await relay.store.ping()
        except UNREACHABLE as exc:
            return JSONResponse({"status": "unavailable", "reason": f"redis unreachable: {exc}"}, status_code=503)
        return JSONResponse({"status": "ready", "store": "embedded" if relay.store.embedded else "redis"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("write path: %s", write_path())  # direct (uvicorn X.Y sans-I/O), or ASGI send (why not)
        if not relay.auth.enabled:
            log.warning("AUTH_SECRET is not set: auth is OFF (open development mode): anyone may join any room "
                        "as any role and read or delete any history")
        if relay.store.embedded:
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
            *rooms_routes(relay.auth, settings.auth_token_ttl_s),
            *metrics_routes(relay.hub.counts),
            *docs_routes(),
        ],
        lifespan=lifespan,
    )
    app.state.relay = relay
    return app
