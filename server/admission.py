"""Who may open a chat connection: allowed origins and connections per client address.

:class:`Admission` is ASGI middleware in front of the chat endpoint; it refuses a handshake the way
the endpoint refuses a bad room (:func:`server.ws.deny`: an HTTP status and a JSON error body, the
socket never accepted), before the endpoint sees it:

- 403 ``origin_not_allowed``: ``ALLOWED_ORIGINS`` is set and the handshake has an ``Origin`` header
  (browsers always send one) that is not in it. Handshakes without ``Origin`` (not from a browser
  page) pass; so does everything when ``ALLOWED_ORIGINS`` is unset.
- 429 ``too_many_connections``: the client address already holds ``MAX_CONNECTIONS_PER_IP``
  connections to this node (0: no limit). The address is the one uvicorn puts in the scope: the
  peer's, or ``X-Forwarded-For``'s when the peer is a proxy uvicorn trusts.

A connection frees its address's slot as soon as the endpoint reads its ``websocket.disconnect``,
so a client that has closed finds the slot free when it reconnects, and in any case when the
endpoint returns.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from protocol.errors import ERROR_CODES
from server.ws import deny


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """``allowed`` holds lower-case origins (``https://chat.example.com``); empty means any."""
    return not allowed or origin is None or origin.lower() in allowed


class ConnectionSlots:
    """Open connections per client address, at most ``max_per_address`` each."""

    def __init__(self, max_per_address: int) -> None:
        self._max = max_per_address
        self._open: dict[str, int] = {}

    def take(self, address: str) -> bool:
        held = self._open.get(address, 0)
        if held >= self._max:
            return False
        self._open[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self._open.get(address, 0) - 1
        if held > 0:
            self._open[address] = held
        else:
            self._open.pop(address, None)

    def held(self, address: str) -> int:
        return self._open.get(address, 0)


class Admission:
    def __init__(self, app: ASGIApp, allowed_origins: frozenset[str], max_connections_per_ip: int) -> None:
        self._app = app
        self._origins = allowed_origins
        self._slots = ConnectionSlots(max_connections_per_ip) if max_connections_per_ip > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        if not origin_allowed(websocket.headers.get("origin"), self._origins):
            await deny(websocket, "origin_not_allowed", ERROR_CODES["origin_not_allowed"])
            return
        client = scope.get("client")
        if self._slots is None or client is None:
            await self._app(scope, receive, send)
            return
        await self._holding_a_slot(self._slots, str(client[0]), websocket, scope, receive, send)

    async def _holding_a_slot(self, slots: ConnectionSlots, address: str, websocket: WebSocket, scope: Scope,
                              receive: Receive, send: Send) -> None:
        if not slots.take(address):
            await deny(websocket, "too_many_connections", ERROR_CODES["too_many_connections"])
            return
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                slots.release(address)

        async def receive_and_release_on_disconnect() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                release()
            return message

        try:
            await self._app(scope, receive_and_release_on_disconnect, send)
        finally:
            release()
