"""Every way the server closes an open WebSocket: close code, reason text, and what the client should do.

One :class:`Close` per way, in :data:`CLOSES` (the README's and the AsyncAPI document's close-code
table is :func:`markdown_table`, checked by the tests). ``reason`` is the text of the close frame.
``reconnect`` advises the client, as centrifuge's ``Disconnect.Reconnect`` does:
:attr:`Reconnect.RESUME` means reconnect (after a short pause, to any node) with ``last_id`` and
``epoch``: the resume replays what was missed, so nothing is lost or seen twice;
:attr:`Reconnect.FRESH_TOKEN` means the same with a new token (from ``POST /v1/session`` again:
the room and its other members' tokens stay as they are); :attr:`Reconnect.NO` means the close is
the end (the client closed), or reconnecting and carrying on as before would be closed again.

Some closes are made by the WebSocket server (uvicorn, and its ``websockets`` protocol layer), on
the relay's settings rather than in its code; they are listed too (``by``), so the table is
everything a client may see. Refusals of a handshake never open a connection and so are not
closes: they are HTTP statuses, in :mod:`protocol.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reconnect(StrEnum):
    NO = "no"
    RESUME = "yes, with `last_id`"
    FRESH_TOKEN = "yes, with a new token and `last_id`"


class By(StrEnum):
    RELAY = "relay"  # the relay's code
    UVICORN = "uvicorn"  # the WebSocket server, configured by the relay's settings


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str  # the close frame's reason, exactly (``<n>``: a number that varies)
    reconnect: Reconnect
    by: By
    when: str  # for the documents (Markdown)


NORMAL = Close(1000, "", Reconnect.NO, By.RELAY, "the session is over: the client closed the connection")
INVALID_UTF8 = Close(1007, "", Reconnect.NO, By.UVICORN, "a text frame that is not UTF-8")
RATE_LIMIT = Close(
    1008, "rate limit exceeded", Reconnect.NO, By.RELAY,
    "the client kept sending after about `RATE_LIMIT_BURST` `rate_limited` refusals")
TOO_BIG = Close(
    1009, "frame with <n> bytes exceeds limit of <max> bytes", Reconnect.NO, By.UVICORN,
    "a frame far over `MAX_MESSAGE_BYTES` (more than 4 times, at least 1 MiB), not read")
STORE_UNAVAILABLE = Close(
    1011, "store unavailable", Reconnect.RESUME, By.RELAY, "Redis went away during the session")
PING_TIMEOUT = Close(
    1011, "keepalive ping timeout", Reconnect.RESUME, By.UVICORN,
    "no pong within `PING_TIMEOUT_S` of a ping (sent every `PING_INTERVAL_S`)")
RESTART = Close(
    1012, "", Reconnect.RESUME, By.UVICORN, "the server is shutting down (SIGTERM): reconnect to another node")
SLOW_CONSUMER = Close(
    1013, "slow consumer", Reconnect.RESUME, By.RELAY,
    "the client read too slowly: more than `SEND_QUEUE_MAX` frames (`llm.streaming` deltas not counted)"
    " were waiting for it")
TOKEN_EXPIRED = Close(
    4001, "token expired", Reconnect.FRESH_TOKEN, By.RELAY,
    "with auth on: the connection's token expired (its `exp`); the admin key never expires")

CLOSES: tuple[Close, ...] = (
    NORMAL, INVALID_UTF8, RATE_LIMIT, TOO_BIG, STORE_UNAVAILABLE, PING_TIMEOUT, RESTART, SLOW_CONSUMER,
    TOKEN_EXPIRED)


def markdown_table() -> str:
    """:data:`CLOSES` as the Markdown table the README and ``asyncapi.yaml`` print."""
    rows = ["| code | reason | reconnect | closed by | when |", "|---|---|---|---|---|"]
    rows += [f"| {c.code} | {f'`{c.reason}`' if c.reason else '(none)'} | {c.reconnect} | {c.by} | {c.when} |"
             for c in CLOSES]
    return "\n".join(rows)
