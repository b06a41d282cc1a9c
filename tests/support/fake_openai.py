"""A local OpenAI-compatible server for the tests: real HTTP on 127.0.0.1, in a background thread.

It answers ``POST /v1/chat/completions`` with ``"stream": true`` as the real API does: Server-Sent
Events in a chunked body, ``chat.completion.chunk`` objects (one with the assistant role and empty
content, one per token, one with the finish reason), then, when ``stream_options.include_usage``
is set, a chunk with ``"choices": []`` and the ``usage``, and finally ``data: [DONE]``. Each
connection serves one request (``connection: close``), so each request is one :class:`Exchange`.

The behaviour comes from markers in the last user message, so tests in different rooms, and a
relay running as a subprocess (``OPENAI_BASE_URL=fake.base_url``), need no shared state:

==============  ==================================================================================
marker          answer
==============  ==================================================================================
(none)          :data:`DEFAULT_TOKENS` tokens (:func:`reply_text`), :data:`DEFAULT_DELAY_MS` ms apart
``#tokens=N``   N tokens
``#delay=MS``   MS milliseconds before each token
``#slow``       200 tokens, 50 ms apart (10 s), for cancel tests
``#length``     finish reason ``length`` instead of ``stop``
``#nofinish``   no chunk with a finish reason (the body and ``[DONE]`` end normally)
``#cut``        3 tokens, then the connection is closed mid-body: no end chunk, no ``[DONE]``
``#429``        HTTP 429 with an OpenAI-style error body and ``retry-after-ms: 10``
``#500``        HTTP 500, likewise
``#status=N``   HTTP N, likewise: ``error.message`` is :func:`error_message` (401's holds a key)
``#bigerror``   with ``#status``: the message padded to :data:`BIG_ERROR_CHARS` characters
``#textbody``   with ``#status``: the message as a ``text/plain`` body (as a proxy's own error page)
``#streamerror=N``  after 3 tokens, an error event (``data: {"error": ...}``, as LiteLLM's proxy sends
                when its upstream fails mid-stream) with ``code`` ``"N"`` (none without N); no ``[DONE]``
``#dated``      the chunks name the model asked for with :data:`DATED` appended (as OpenAI's do)
``#hang``       no answer at all, until the client hangs up
==============  ==================================================================================

Every request is recorded with its JSON body and how it ended (:class:`Exchange`); a test finds its
own by a unique word it put in the last user message, and can wait for one to end.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson

DEFAULT_TOKENS = 8
DEFAULT_DELAY_MS = 5
CUT_AFTER_TOKENS = 3
RETRY_AFTER_MS = 10
HANG_S = 3600.0
_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
_MARKER = re.compile(r"#(\w+)(?:=(\d+))?")
BIG_ERROR_CHARS = 1000
DATED = "-2024-07-18"
STREAM_ERROR_MESSAGE = "upstream failed mid-stream (fake)"
#: A key the 401's message echoes (as OpenAI's does, partly starred): it must never reach a room or a log.
LEAKED_KEY = "sk-proj-fAkEkEy0123456789abcdefXYZ"
_ERRORS = {
    400: ("This model's maximum context length is 8 tokens (fake).", "invalid_request_error",
          "context_length_exceeded"),
    401: (f"Incorrect API key provided: {LEAKED_KEY}. You can find your API key at "
          "https://platform.openai.com/account/api-keys (fake).", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model (fake).", "invalid_request_error", "model_not_allowed"),
    404: ("The model `no-such-model` does not exist or you do not have access to it (fake).",
          "invalid_request_error", "model_not_found"),
    408: ("The upstream took too long to answer (fake).", "timeout", None),
    422: ("Unprocessable: messages[0].content is invalid (fake).", "invalid_request_error", None),
    429: ("Rate limit reached for requests (fake).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request (fake).", "server_error", None),
    502: ("Bad gateway: the upstream model server did not answer (fake).", "server_error", None),
    503: ("The engine is currently overloaded, please try again later (fake).", "server_error", None),
    504: ("Gateway timeout: the upstream model server timed out (fake).", "server_error", None),
}


def error_message(status: int) -> str:
    """The ``error.message`` the fake answers HTTP ``status`` with."""
    return _ERRORS[status][0] if status in _ERRORS else f"Something went wrong with status {status} (fake)."


def _error_body(status: int, big: bool) -> dict[str, Any]:
    _, kind, code = _ERRORS.get(status, ("", "server_error", None))
    message = error_message(status)
    if big:
        message = (message + " " + "blah " * BIG_ERROR_CHARS)[:BIG_ERROR_CHARS]
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def reply_tokens(count: int) -> list[str]:
    return [(" " if i else "") + _WORDS[i % len(_WORDS)] for i in range(count)]


def reply_text(count: int = DEFAULT_TOKENS) -> str:
    """The text of a normal answer of ``count`` tokens."""
    return "".join(reply_tokens(count))


@dataclass
class Exchange:
    """One request and how it ended. ``ended`` is None while the answer is still going, then
    ``completed`` (sent whole), ``client_closed`` (the client hung up first) or ``cut`` (we dropped
    the connection on purpose)."""

    body: dict[str, Any]
    status: int = 0
    tokens_sent: int = 0
    ended: str | None = None

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.body)


def last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class Behaviour:
    status: int = 200
    tokens: int = DEFAULT_TOKENS
    delay_s: float = DEFAULT_DELAY_MS / 1000
    finish_reason: str | None = "stop"
    cut: bool = False
    hang: bool = False
    big_error: bool = False
    text_body: bool = False
    dated: bool = False
    stream_error: int | None = None  # 0: an error event without a code

    @classmethod
    def of(cls, text: str) -> Behaviour:
        options: dict[str, Any] = {}
        for name, number in _MARKER.findall(text):
            if name in _MARKERS:
                options.update(_MARKERS[name](number))
        return cls(**options)


_MARKERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "tokens": lambda n: {"tokens": int(n or DEFAULT_TOKENS)},
    "delay": lambda n: {"delay_s": int(n or 0) / 1000},
    "slow": lambda n: {"tokens": 200, "delay_s": 0.05},
    "length": lambda n: {"finish_reason": "length"},
    "nofinish": lambda n: {"finish_reason": None},
    "cut": lambda n: {"cut": True},
    "429": lambda n: {"status": 429},
    "500": lambda n: {"status": 500},
    "status": lambda n: {"status": int(n or 500)},
    "bigerror": lambda n: {"big_error": True},
    "textbody": lambda n: {"text_body": True},
    "dated": lambda n: {"dated": True},
    "streamerror": lambda n: {"stream_error": int(n or 0)},
    "hang": lambda n: {"hang": True},
}


class FakeOpenAI:
    """``start()`` it, point the client at :attr:`base_url`, ``stop()`` it at the end."""

    def __init__(self) -> None:
        self.port = 0
        self._exchanges: list[Exchange] = []
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="fake-openai", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def exchanges(self, containing: str = "") -> list[Exchange]:
        """The requests so far whose last user message contains ``containing``, oldest first."""
        with self._changed:
            return [e for e in self._exchanges if containing in e.last_user_text]

    def wait_ended(self, containing: str, timeout_s: float = 10.0) -> Exchange:
        """The last matching exchange, once it has ended (blocks; see :meth:`ended`)."""
        def ended() -> Exchange | None:
            found = self.exchanges(containing)
            return found[-1] if found and found[-1].ended is not None else None

        with self._changed:
            exchange = self._changed.wait_for(ended, timeout_s)
        if exchange is None:
            raise TimeoutError(f"no exchange with {containing!r} ended within {timeout_s} s")
        return exchange

    async def ended(self, containing: str, timeout_s: float = 10.0) -> Exchange:
        return await asyncio.to_thread(self.wait_ended, containing, timeout_s)

    def _update(self, exchange: Exchange, **changes: Any) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(exchange, name, value)
            self._changed.notify_all()

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._serve(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                connections.discard(task)
                writer.close()

        server = await asyncio.start_server(connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, path, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if (method, path) != ("POST", "/v1/chat/completions"):
            await _send_json(writer, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
            return
        request = orjson.loads(body)
        exchange = Exchange(body=request)
        with self._changed:
            self._exchanges.append(exchange)
            self._changed.notify_all()
        behaviour = Behaviour.of(exchange.last_user_text)
        if behaviour.hang:
            await self._until_client_closes(reader, exchange, asyncio.sleep(HANG_S))
        elif behaviour.status != 200:
            error = _error_body(behaviour.status, behaviour.big_error)
            headers = {"retry-after-ms": str(RETRY_AFTER_MS)}
            if behaviour.text_body:
                await _send(writer, behaviour.status, error["error"]["message"].encode(), "text/plain", headers)
            else:
                await _send_json(writer, behaviour.status, error, headers)
            self._update(exchange, status=behaviour.status, ended="completed")
        elif request.get("stream") is not True:
            await _send_json(writer, 400, {"error": {"message": "the fake serves stream: true only", "type": "x"}})
            self._update(exchange, status=400, ended="completed")
        else:
            await self._until_client_closes(reader, exchange, self._stream(writer, exchange, request, behaviour))

    async def _until_client_closes(self, reader: asyncio.StreamReader, exchange: Exchange,
                                   answer: Coroutine[Any, Any, None]) -> None:
        """Run ``answer``, unless the client hangs up first (it sends nothing after its request,
        so a read that returns is its end of the connection)."""
        answering, hangup = asyncio.ensure_future(answer), asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({answering, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            answering.cancel()
            hangup.cancel()
            await asyncio.gather(answering, hangup, return_exceptions=True)
        if answering.cancelled() or isinstance(answering.exception(), ConnectionError):
            self._update(exchange, ended="client_closed")
        elif (error := answering.exception()) is not None:
            raise error

    async def _stream(self, writer: asyncio.StreamWriter, exchange: Exchange, request: dict[str, Any],
                      behaviour: Behaviour) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                     b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        self._update(exchange, status=200)
        model = str(request.get("model", "")) + (DATED if behaviour.dated else "")
        chunks = _Chunks(model, request, f"chatcmpl-fake{id(exchange):x}")
        await _send_event(writer, chunks.make({"role": "assistant", "content": "", "refusal": None}))
        for count, token in enumerate(reply_tokens(behaviour.tokens), 1):
            if behaviour.cut and count > CUT_AFTER_TOKENS:
                self._update(exchange, ended="cut")
                return  # the connection closes without the body's last chunk
            if behaviour.stream_error is not None and count > CUT_AFTER_TOKENS:
                code = str(behaviour.stream_error) if behaviour.stream_error else None
                await _send_event(writer, {"error": {"message": STREAM_ERROR_MESSAGE, "type": None, "param": None,
                                                     "code": code}})
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                self._update(exchange, ended="completed")
                return
            await asyncio.sleep(behaviour.delay_s)
            await _send_event(writer, chunks.make({"content": token}))
            self._update(exchange, tokens_sent=count)
        if behaviour.finish_reason is not None:
            await _send_event(writer, chunks.make({}, behaviour.finish_reason))
        if (request.get("stream_options") or {}).get("include_usage"):
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
            await _send_event(writer, chunks.usage(prompt_tokens, behaviour.tokens))
        writer.write(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        self._update(exchange, ended="completed")


@dataclass
class _Chunks:
    model: str
    request: dict[str, Any]
    id: str
    created: int = field(default_factory=lambda: int(time.time()))

    def make(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**self._base(), "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]}

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {**self._base(), "choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}}

    def _base(self) -> dict[str, Any]:
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": None}
        if (self.request.get("stream_options") or {}).get("include_usage"):
            base["usage"] = None  # as the real API: null on every chunk but the last
        return base


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = dict(line.split(":", 1) for line in lines if ":" in line)
    return method, path, {name.strip().lower(): value.strip() for name, value in headers.items()}


def _http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _send_event(writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
    writer.write(_http_chunk(b"data: " + orjson.dumps(data) + b"\n\n"))
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    await _send(writer, status, orjson.dumps(body), "application/json", headers)


async def _send(writer: asyncio.StreamWriter, status: int, content: bytes, content_type: str,
                headers: dict[str, str] | None = None) -> None:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    reason = HTTPStatus(status).phrase if status in {member.value for member in HTTPStatus} else "Unknown"
    writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
                 f"content-length: {len(content)}\r\nconnection: close\r\n{extra}\r\n".encode() + content)
    await writer.drain()
