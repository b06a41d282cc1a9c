"""Every Redis key and channel name the relay uses, and nothing else: the one place they are written.

Lua scripts never build a key: every key a script touches is passed in ``KEYS``, and each script
call touches the keys of one room only (``tests/unit/server/store/test_lua_keys.py`` checks the
scripts). A room's keys:

- ``chat:session:<room>``: the room's stream (documented; the replay script and ``redis-cli XRANGE``
  read it).
- ``chat:epoch:<room>``: the stream's epoch, set when an append finds the stream empty or absent.
- ``chat:presence:<room>``: the roster, a hash ``<node>/<connection>`` -> role.
- ``chat:followers:<room>``: the nodes that follow the room, a sorted set node -> the time (ms, Redis's
  clock) until which the node is alive; a node renews it with each heartbeat.
- ``chat:cid:<room>:<participant>:<cid>``: an entry's client id, within the dedupe window: ``<epoch>
  <id>``, counted only in that epoch of the stream (a bare ``<id>``, written before, while the stream
  holds it); the LLM's answer marker too (participant ``llm``, cid = the generation's rid).
- ``chat:room:<room>``: the room's current instance (a random id, made by ``POST /v1/session`` with
  auth on; its expiry is the longest of the tokens issued for it), deleted with the room.
- ``chat:llm:lock:<room>``: ``"<token> <rid>"`` of the room's generation (queued or running).
- ``chat:llm:fence:<room>``: the room's fencing counter (INCR): each taking of the lock gets the next token.
- ``chat:llm:ended:<room>:<rid>``: a generation that ended without a stored answer (its llm.error sent).
- ``chat:llm:cancelled:<room>:<rid>``: a cancelled generation: the role whose ``llm.cancel`` stopped it.
- ``chat:llm:asker:<room>:<rid>``: the role that asked the generation's question (``LLM_CANCEL=asker``).

Not a room's: ``chat:llm:requests:<queue>`` (a queue of requests for any room), and the channels
``chat:node:<node>`` (announcements and unstored frames for one node) and ``chat:llm:cancel``.
"""

from __future__ import annotations

PREFIX = "chat:"
STREAM_PREFIX = "chat:session:"
NODE_CHANNEL_PREFIX = "chat:node:"
LLM_CANCEL_CHANNEL = "chat:llm:cancel"
LLM_GROUP = "llm-workers"  # the consumer group of every request queue


def stream_key(room: str) -> str:
    return STREAM_PREFIX + room


def epoch_key(room: str) -> str:
    return "chat:epoch:" + room


def presence_key(room: str) -> str:
    return "chat:presence:" + room


def followers_key(room: str) -> str:
    return "chat:followers:" + room


def dedupe_key(room: str, participant: str, cid: str) -> str:
    return f"chat:cid:{room}:{participant}:{cid}"


def room_instance_key(room: str) -> str:
    return "chat:room:" + room


def llm_lock_key(room: str) -> str:
    return "chat:llm:lock:" + room


def llm_fence_key(room: str) -> str:
    return "chat:llm:fence:" + room


def llm_ended_key(room: str, rid: str) -> str:
    return f"chat:llm:ended:{room}:{rid}"


def llm_cancelled_key(room: str, rid: str) -> str:
    return f"chat:llm:cancelled:{room}:{rid}"


def llm_asker_key(room: str, rid: str) -> str:
    return f"chat:llm:asker:{room}:{rid}"


def llm_requests_key(queue: str) -> str:
    return "chat:llm:requests:" + queue


def node_channel(node: str) -> str:
    return NODE_CHANNEL_PREFIX + node
