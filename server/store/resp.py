"""A lean Redis client for the relay's hot path: script calls pipelined on one connection.

Every accepted message costs one append script call, and every pass that sends generation deltas
or presence frames one more. Through redis-py such a call costs about 100 us of CPU here (the pool,
its lock and timeouts, the retry wrapper, the command packer); written straight to an asyncio
transport and parsed with hiredis, about 37 us, most of it the two system calls
(``scripts/bench.py`` figures in ``docs/benchmarks.md``).

:class:`LeanRedis` keeps one connection, opened on first use and again after it is lost. Commands
are written at once and answered in order (pipelining: a caller never waits for another's round
trip to be sent). Errors are redis-py's, so callers handle both clients alike: a lost or refused
connection is ``ConnectionError``, a reply that does not come within ``timeout_s`` is
``TimeoutError`` (the connection is dropped: the command may have run), an error reply is
``ResponseError``. An error inside an array reply is returned in place, as redis-py does.

Only plain TCP URLs (``redis://``) are handled; :meth:`LeanRedis.from_url` returns None for the
others (TLS, Unix sockets), whose callers keep redis-py. The embedded store never uses this, and no
module outside the Redis adapter (:mod:`server.store.redis_store`) imports it: it is an
implementation detail of the store's ports, kept only for the measured reason above.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, TypeVar

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int
P = TypeVar("P", bound=asyncio.Protocol)
_WATCH_INTERVAL_S = 0.5


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP: ``*<n>`` then ``$<len>`` and the bytes of each argument (hiredis's C
    packer: a third of the time of the same thing in Python, measured on an append call)."""
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]  # (its stub types a 1-tuple)
    return packed


class _Replies(asyncio.Protocol, abc.ABC):
    """What Redis sends on one connection, parsed with hiredis: each reply goes to :meth:`reply`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False or not self.reply(reply):
                return

    @abc.abstractmethod
    def reply(self, reply: Any) -> bool:
        """Take one reply; False when the connection was dropped because of it."""

    @abc.abstractmethod
    def fail(self, exc: Exception) -> None:
        """Drop the connection; whoever waits on it gets ``exc``."""


class _Connection(_Replies):
    def __init__(self) -> None:
        super().__init__()
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (reply, sent at), in order
        self.lost = False

    def reply(self, reply: Any) -> bool:
        if not self.waiting:  # nothing asked for this: the stream is out of step
            self.fail(RedisConnectionError("unexpected reply from Redis"))
            return False
        future, _ = self.waiting.popleft()
        if not future.done():
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiting(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def fail(self, exc: Exception) -> None:
        """Drop the connection, failing every command still waiting for its reply with ``exc``."""
        self.lost = True
        self._fail_waiting(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiting(self, exc: Exception) -> None:
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)


class LeanRedis:
    def __init__(self, host: str, port: int, db: int = 0, username: str | None = None, password: str | None = None,
                 timeout_s: float = 10.0, connect_timeout_s: float = 5.0) -> None:
        self._address = (host, port)
        self._db = db
        self._auth: list[Arg] = [] if password is None else ["AUTH", *([username] if username else []), password]
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> LeanRedis | None:
        """A client for a ``redis://`` URL; None for the URLs it does not handle."""
        options = parse_url(url)
        if "connection_class" in options or "path" in options:
            return None
        return cls(options.get("host", "localhost"), int(options.get("port", 6379)), int(options.get("db", 0)),
                   options.get("username"), options.get("password"), **kwargs)

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply."""
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connected()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.waiting.append((future, time.monotonic()))
        assert conn.transport is not None
        conn.transport.write(pack(args))
        return await future

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send ``commands`` in one write and return their replies, in order: an error reply is
        returned in place (a ``ResponseError``); a lost connection or a timeout raises."""
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connected()
        loop, now = asyncio.get_running_loop(), time.monotonic()
        futures: list[asyncio.Future[Any]] = []
        for _ in commands:
            future: asyncio.Future[Any] = loop.create_future()
            conn.waiting.append((future, now))
            futures.append(future)
        assert conn.transport is not None
        conn.transport.write(b"".join(map(pack, commands)))
        replies: list[Any] = []
        try:
            for future in futures:
                try:
                    replies.append(await future)
                except ResponseError as exc:
                    replies.append(exc)
        finally:
            for future in futures[len(replies):]:  # the connection failed: every reply is lost
                if future.done() and not future.cancelled():
                    future.exception()
        return replies

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._conn is not None:
            self._conn.fail(RedisConnectionError("client closed"))
            self._conn = None

    def subscriber(self, channel: str) -> LeanSubscriber:
        return LeanSubscriber(self, channel)

    async def open(self, protocol: type[P]) -> P:
        """A new connection read by a ``protocol`` instance, authenticated (and its database
        selected, for a command connection)."""
        loop = asyncio.get_running_loop()
        try:
            transport, conn = await asyncio.wait_for(loop.create_connection(_Connection, *self._address),
                                                     self._connect_timeout_s)
        except (TimeoutError, OSError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self._address[0]}:{self._address[1]}: "
                                       f"{exc or 'timed out'}") from exc
        conn.transport = transport  # (uvloop may call connection_made later)
        setup: list[list[Arg]] = [self._auth] if self._auth else []
        if self._db and protocol is _Connection:
            setup.append(["SELECT", self._db])
        futures = []
        for command in setup:
            future: asyncio.Future[Any] = loop.create_future()
            conn.waiting.append((future, time.monotonic()))
            transport.write(pack(command))
            futures.append(future)
        try:
            await asyncio.wait_for(asyncio.gather(*futures), self._connect_timeout_s)
        except ResponseError as exc:
            conn.fail(RedisConnectionError(str(exc)))
            raise RedisConnectionError(f"Redis refused the connection's setup: {exc}") from exc
        except TimeoutError as exc:
            conn.fail(RedisTimeoutError("no answer to the connection's setup"))
            raise RedisTimeoutError("no answer from Redis to the connection's setup") from exc
        if isinstance(conn, protocol):
            return conn
        other = protocol()  # the same socket, read by ``protocol`` from now on
        other.connection_made(transport)
        transport.set_protocol(other)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return other

    async def _connected(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and not self._conn.lost:
                return self._conn
            self._conn = conn = await self.open(_Connection)
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.get_running_loop().create_task(self._watch())
            return conn

    async def _watch(self) -> None:
        """Drop a connection whose oldest command has waited for more than ``timeout_s``."""
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            conn = self._conn
            if conn is not None and conn.waiting and time.monotonic() - conn.waiting[0][1] > self._timeout_s:
                conn.fail(RedisTimeoutError(f"no reply from Redis within {self._timeout_s:g} s"))


class LeanScript:
    """A Lua script run with EVALSHA on a :class:`LeanRedis` (EVAL once when Redis lacks it)."""

    def __init__(self, client: LeanRedis, source: str) -> None:
        self._client = client
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self._client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        with contextlib.suppress(ResponseError):
            await self._client.execute("SCRIPT", "LOAD", self._source)
        return await self._client.execute("EVALSHA", self.sha, len(keys), *keys, *args)

    async def many(self, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]],
                   then: Sequence[Arg] | None = None) -> list[Any]:
        """Run the script once per ``(keys, args)``, all in one write; error replies in place. ``then``: a
        command sent right after the calls, on the same connection (``WAIT``, which counts the writes of its
        own connection), whose reply comes last (after a reload of the script, after the calls sent again)."""
        commands = [("EVALSHA", self.sha, len(keys), *keys, *args) for keys, args in calls]
        tail = [then] if then is not None else []
        replies = await self._client.execute_many([*commands, *tail])
        missing = [i for i, reply in enumerate(replies[:len(commands)])
                   if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")]
        if missing:
            with contextlib.suppress(ResponseError):
                await self._client.execute("SCRIPT", "LOAD", self._source)
            again = await self._client.execute_many([*(commands[i] for i in missing), *tail])
            for i, reply in zip(missing, again, strict=False):
                replies[i] = reply
            if tail:
                replies[-1] = again[-1]
        return replies


class _Pushes(_Replies):
    """A connection in subscribe mode: every reply is a push ``[kind, channel, data]``."""

    def __init__(self) -> None:
        super().__init__()
        self.items: deque[tuple[str, bytes]] = deque()
        self.waiter: asyncio.Future[tuple[str, bytes] | None] | None = None
        self.lost: Exception | None = None

    def reply(self, reply: Any) -> bool:
        if isinstance(reply, ResponseError):
            self.fail(RedisConnectionError(f"Redis refused: {reply}"))
            return False
        if isinstance(reply, list) and len(reply) >= 3:
            item = (reply[0].decode(), reply[2] if isinstance(reply[2], bytes) else b"")
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(item)
            else:
                self.items.append(item)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class LeanSubscriber:
    """The messages of one pub/sub channel, on a connection of its own (no read timeout: it waits)."""

    def __init__(self, client: LeanRedis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._conn: _Pushes | None = None

    async def subscribe(self) -> None:
        """Connect and subscribe; ``("subscribe", b"")`` comes first from :meth:`next`."""
        self._conn = conn = await self._client.open(_Pushes)
        assert conn.transport is not None
        conn.transport.write(pack(["SUBSCRIBE", self._channel]))

    async def next(self, timeout_s: float) -> tuple[str, bytes] | None:
        """``(kind, data)`` of the next push (kind ``subscribe``, ``message``...), or None after ``timeout_s``."""
        conn = self._conn
        assert conn is not None, "subscribe() first"
        if conn.items:
            return conn.items.popleft()
        if conn.lost is not None:
            raise conn.lost
        loop = asyncio.get_running_loop()
        waiter = conn.waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _resolve_none, waiter)
        try:
            item: tuple[str, bytes] | None = await waiter
            return item
        finally:
            timer.cancel()
            conn.waiter = None

    async def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.abort()
        self._conn = None


def _resolve_none(waiter: asyncio.Future[tuple[str, bytes] | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
