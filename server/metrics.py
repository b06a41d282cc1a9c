"""``GET /metrics``: the process's numbers in the Prometheus text format (prometheus-client).

The hot path only bumps plain integers (:class:`Counts`); they become Prometheus counters when
scraped, so counting costs a dict update per message, not a client-library call per delivery.
The two latency histograms are observed once per append batch.

- ``chat_connections`` / ``chat_rooms``: current WebSocket connections and followed rooms;
  ``chat_backed_up_connections``: those whose client reads slower than frames come (frames wait for it).
- ``chat_messages_in_total{event}``: accepted client frames; ``chat_messages_out_total{event}``:
  frames handed to members (one per member).
- ``chat_errors_total{code}``: refusals and failures sent to clients.
- ``chat_llm_generations_total{outcome}`` (a finish reason, an ``llm.error`` code, or ``fenced``: a
  generation stopped because another worker took it over) and
  ``chat_llm_tokens_streamed_total`` (``llm.streaming`` frames sent);
  ``chat_llm_tokens_in_total{model}`` / ``chat_llm_tokens_out_total{model}``: the prompt and completion
  tokens the provider reported for the answers this process's workers ended (by the model asked for,
  ``LLM_MODEL``, as ``bd.model``);
  ``chat_llm_deltas_merged_total``: deltas merged into the one before them for a backed-up connection
  (:mod:`server.outbox`): frames that slow readers did not have to take.
- ``chat_write_path{path}``: 1 for the way members' frames are written under the installed uvicorn,
  ``direct`` (straight to its sans-I/O transport) or ``asgi`` (the ASGI ``send``), 0 for the other
  (:func:`server.outlet.write_path`).
- ``chat_loop_up{loop}``: 1 while a supervised background loop works, 0 while it fails
  (:mod:`server.supervise`); ``chat_loop_failures_total{loop}``: its failures since the process started.
- ``chat_xadd_seconds``: one append batch's round trip to Redis; ``chat_accept_to_delivery_seconds``:
  from a frame's acceptance to its delivery to the members on this process (per batch, its oldest).

Who may scrape: with ``METRICS_TOKEN`` set, only a request with ``Authorization: Bearer
<METRICS_TOKEN>``; else, with auth on (``AUTH_SECRET``), nobody (401, and the server says so at
start-up: the admin key is not accepted, a scraper should not hold it); else (open development mode)
anyone.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from protocol.errors import http_status, refusal_body
from server.auth import bearer
from server.outlet import write_path

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_EVENT_AT = len(b'{"hd":{"event":"')


class Counts:
    """Plain counters, bumped on the hot path."""

    def __init__(self) -> None:
        self.messages_in: Counter[str] = Counter()
        self.messages_out: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.generations: Counter[str] = Counter()
        self.tokens_streamed = 0
        self.deltas_merged = 0
        self.tokens_in: Counter[str] = Counter()  # by model: the provider's prompt tokens
        self.tokens_out: Counter[str] = Counter()  # by model: the provider's completion tokens

    def delivered(self, frame: str | bytes, members: int) -> None:
        self.messages_out[event_of(frame)] += members


def event_of(frame: str | bytes) -> str:
    """The event of a frame the server wrote (``hd`` first, ``event`` first in it), cheaply."""
    if isinstance(frame, bytes):
        if frame.startswith(b'{"hd":{"event":"'):
            end = frame.find(b'"', _EVENT_AT)
            if end > 0:
                return frame[_EVENT_AT:end].decode(errors="replace")
    elif frame.startswith('{"hd":{"event":"'):
        end = frame.find('"', _EVENT_AT)
        if end > 0:
            return frame[_EVENT_AT:end]
    return "other"


COUNTS = Counts()  # the process's counters (one server per process)
XADD_SECONDS = Histogram("chat_xadd_seconds", "One append batch's round trip to Redis.", buckets=_BUCKETS,
                         registry=None)
ACCEPT_TO_DELIVERY_SECONDS = Histogram(
    "chat_accept_to_delivery_seconds", "From a frame's acceptance to its delivery to this process's members.",
    buckets=_BUCKETS, registry=None)


#: ``(name, up, failures)`` of each supervised loop (:meth:`server.supervise.Supervisor.loops`).
Loops = Callable[[], Iterable[tuple[str, bool, int]]]


class _Collector(Collector):
    def __init__(self, counts: Counts, gauges: Callable[[], tuple[int, int]], loops: Loops,
                 backed_up: Callable[[], int]) -> None:
        self._counts = counts
        self._gauges = gauges
        self._loops = loops
        self._backed_up = backed_up

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        connections, rooms = self._gauges()
        yield GaugeMetricFamily("chat_connections", "Current WebSocket connections.", value=connections)
        yield GaugeMetricFamily("chat_rooms", "Rooms with members on this process.", value=rooms)
        yield GaugeMetricFamily("chat_backed_up_connections", "Connections whose frames wait for a slow reader.",
                                value=self._backed_up())
        yield _labelled("chat_messages_in", "Accepted client frames, by event.", "event", self._counts.messages_in)
        yield _labelled("chat_messages_out", "Frames handed to members, by event.", "event", self._counts.messages_out)
        yield _labelled("chat_errors", "Errors sent to clients, by code.", "code", self._counts.errors)
        yield _labelled("chat_llm_generations", "LLM generations, by outcome.", "outcome", self._counts.generations)
        tokens = CounterMetricFamily("chat_llm_tokens_streamed", "llm.streaming frames sent.")
        tokens.add_metric([], self._counts.tokens_streamed)
        yield tokens
        yield _labelled("chat_llm_tokens_in", "Prompt tokens the provider reported, by model asked for.", "model",
                        self._counts.tokens_in)
        yield _labelled("chat_llm_tokens_out", "Completion tokens the provider reported, by model asked for.",
                        "model", self._counts.tokens_out)
        merged = CounterMetricFamily("chat_llm_deltas_merged",
                                     "llm.streaming deltas merged into the one before them for a backed-up connection.")
        merged.add_metric([], self._counts.deltas_merged)
        yield merged
        direct = write_path().direct
        path = GaugeMetricFamily("chat_write_path", "How members' frames are written: 1 for the path in use.",
                                 labels=["path"])
        path.add_metric(["direct"], int(direct))
        path.add_metric(["asgi"], int(not direct))
        yield path
        up = GaugeMetricFamily("chat_loop_up", "1 while a supervised background loop works, 0 while it fails.",
                               labels=["loop"])
        failures = CounterMetricFamily("chat_loop_failures", "Failures of a supervised background loop.",
                                       labels=["loop"])
        for name, is_up, failed in self._loops():
            up.add_metric([name], int(is_up))
            failures.add_metric([name], failed)
        yield up
        yield failures


def _labelled(name: str, doc: str, label: str, values: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], count)
    return family


class MetricsAccess:
    """Who may read ``/metrics``: the bearer of ``token`` when there is one, else anyone unless ``closed``."""

    def __init__(self, token: str | None, closed: bool) -> None:
        self._token = token
        self._closed = closed

    @property
    def open(self) -> bool:
        return self._token is None and not self._closed

    def refusal(self, credential: str | None) -> str | None:
        """Why a request with ``credential`` may not scrape; None when it may."""
        if self._token is not None:
            if credential is not None and hmac.compare_digest(credential.encode(), self._token.encode()):
                return None
            return "/metrics needs Authorization: Bearer <METRICS_TOKEN>."
        if self._closed:
            return "/metrics is closed: auth is on (AUTH_SECRET) and METRICS_TOKEN is not set."
        return None


OPEN = MetricsAccess(None, closed=False)


def metrics_routes(gauges: Callable[[], tuple[int, int]], loops: Loops = list,
                   access: MetricsAccess = OPEN, backed_up: Callable[[], int] = lambda: 0) -> list[BaseRoute]:
    """The ``/metrics`` route; ``gauges`` tells the current (connections, rooms), ``loops`` the
    supervised loops, ``access`` who may read it, ``backed_up`` how many connections are backed up."""
    registry = CollectorRegistry()
    for collector in (XADD_SECONDS, ACCEPT_TO_DELIVERY_SECONDS, _Collector(COUNTS, gauges, loops, backed_up)):
        registry.register(collector)

    async def metrics(request: Request) -> Response:
        refusal = None if access.open else access.refusal(bearer(request.headers))
        if refusal is not None:
            return Response(orjson.dumps(refusal_body("unauthorized", refusal)),
                            status_code=http_status("unauthorized"), media_type="application/json",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics)]
