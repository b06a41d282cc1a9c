"""``/readyz``: 200 while the store answers and every supervised loop works; 503 with a reason that
names what fails (loops by name; never an address or an exception's text). Served in-process (httpx's
ASGI transport, no lifespan: nothing runs but the route)."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette

from server.app import create_app
from server.settings import Settings
from server.store.ports import StoreRefused, StoreUnavailable
from server.supervise import Supervisor
from tests.unit.fakes import FakeStore

ADDRESS_ERROR = "Error 111 connecting to 10.0.0.5:6379. Connection refused."


def app_on(store: FakeStore) -> tuple[Starlette, Supervisor]:
    app = create_app(Settings(), store)
    return app, app.state.relay.supervisor


async def readyz(app: Starlette) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        response = await http.get("/readyz")
    return response.status_code, response.json()


async def test_ready_when_the_store_answers_and_no_loop_is_down() -> None:
    app, _ = app_on(FakeStore())
    assert await readyz(app) == (200, {"status": "ready", "store": "fake"})


async def test_unavailable_naming_every_loop_down_and_ready_again_once_they_recovered() -> None:
    app, supervisor = app_on(FakeStore())
    supervisor.failed("heartbeat", StoreRefused("NOREPLICAS Not enough good replicas to write."))
    supervisor.failed("announcements", StoreUnavailable(ADDRESS_ERROR))
    assert await readyz(app) == (503, {"status": "unavailable", "reason": "loop down: announcements, heartbeat"})
    supervisor.up("announcements")
    assert await readyz(app) == (503, {"status": "unavailable", "reason": "loop down: heartbeat"})
    supervisor.up("heartbeat")
    assert (await readyz(app))[0] == 200


async def test_an_unreachable_or_refusing_store_is_named_without_its_address() -> None:
    store = FakeStore()
    app, _ = app_on(store)
    store.log.failing = StoreUnavailable(ADDRESS_ERROR)  # the fake store's ping asks its log
    assert await readyz(app) == (503, {"status": "unavailable", "reason": "store unreachable"})
    store.log.failing = StoreRefused("BUSY Redis is busy running a script.")
    assert await readyz(app) == (503, {"status": "unavailable", "reason": "store refuses commands"})
