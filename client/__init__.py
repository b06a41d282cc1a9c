"""A Python client for the chat relay: resume and exactly-once sending made invisible.

    from client import connect, RelayError

    async with connect("ws://127.0.0.1:3000", "room001", role="A") as room:
        sent = await room.send("hello")     # the stored envelope, hd.id set
        async for frame in room:            # every frame of the room, in order, across reconnects
            ...

Built on ``websockets``; it uses the relay's ``protocol`` package and nothing of the server.
"""

from client.answer import Answer
from client.errors import RelayError
from client.room import Room, connect

__all__ = ["Answer", "RelayError", "Room", "connect"]
