"""Shared fixtures: a real Redis, a real server process, fresh room names.

Redis: ``TEST_REDIS_URL`` when set (CI starts one and passes it), otherwise a private
``redis-server`` on a free port. The Redis Cluster tests get a private cluster of 3 masters and 3
replicas (``redis_cluster``), started once per session when a test asks for it. Every room a test
uses is named ``t<run>-<n>``, and only keys of this run's rooms are deleted at the end, so a shared
Redis keeps everything else.

Tests that drive the client tools (newman, Node, Chromium) are marked ``clients``
(``scripts/test.sh clients``); the pure ones live in ``tests/unit`` (``scripts/test.sh unit``).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio

from server.store.embedded import EmbeddedStore
from server.store.ports import Store
from server.store.redis_store import RedisStore
from tests.support import tools
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess

RUN = secrets.token_hex(3)
SHARED_QUEUE = f"t{RUN}-shared"  # the LLM request queue of the shared servers
_rooms = itertools.count(1)


def new_room() -> str:
    return f"t{RUN}-{next(_rooms)}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI (``CI`` set, as .ci/run does), a skipped test fails: every test runs in some stage."""
    report: pytest.TestReport = yield
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Let the client tools be used by ``clients`` tests only (their session fixtures included)."""
    tools.clients_test = item.get_closest_marker("clients") is not None
    try:
        return (yield)
    finally:
        tools.clients_test = False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        _delete_run_keys(url)
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _delete_run_keys(url: str) -> None:
    client = redis.Redis.from_url(url)
    for pattern in (f"chat:*:t{RUN}-*", f"chat:node:nt{RUN}-*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private Redis Cluster (3 masters, 3 replicas), for the session."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def room() -> str:
    return new_room()


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def start_server(logs_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m server`` with extra environment; every one started is stopped at the end."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        # Each server has its own LLM request queue unless told otherwise: its generations are its own.
        env = {"LLM_QUEUE": f"t{RUN}-q{len(started)}", **env}
        server = ServerProcess(env, logs_dir / f"server-{len(started)}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., ServerProcess], redis_url: str) -> ServerProcess:
    """One relay on the test Redis, shared by the tests that need no special settings."""
    return start_server(REDIS_URL=redis_url, LLM_QUEUE=SHARED_QUEUE)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may stop and start."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@dataclass
class Backend:
    """A store under test, and a plain client on the same data for the checks a port does not offer."""

    store: Store
    raw: Any  # a redis.asyncio (or fakeredis) client


@pytest.fixture(params=["redis", "redis-py", "embedded", "cluster"])
async def backend(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Backend]:
    """The store on the test Redis (through the lean connection, and through redis-py alone, as for
    TLS or Unix socket URLs), on the embedded fakeredis and on a Redis Cluster: one contract, four adapters."""
    if request.param == "embedded":
        fake = fakeredis.FakeServer()
        store: Store = EmbeddedStore.create(fake)
        raw: Any = fakeredis.FakeAsyncRedis(server=fake)
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        store = RedisStore.connect(url)
        raw = redis.asyncio.RedisCluster.from_url(url)
    else:
        store = RedisStore.connect(redis_url, lean=request.param == "redis")
        raw = redis.asyncio.Redis.from_url(redis_url)
    yield Backend(store, raw)
    await raw.aclose()
    await store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


@pytest.fixture(scope="session")
def server2(start_server: Callable[..., ServerProcess], redis_url: str, server: ServerProcess) -> ServerProcess:
    """A second relay on the same Redis as ``server``: together, two nodes of one deployment."""
    return start_server(REDIS_URL=redis_url, LLM_QUEUE=SHARED_QUEUE)


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    """A local OpenAI-compatible server (tests pick its behaviour per request, by markers)."""
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()
