"""Every Redis key and channel name the relay uses, and nothing else: the one place they are written.

Lua scripts never build a key: every key a script touches is passed in ``KEYS``, and on a Redis
Cluster each script call touches the keys of one room only (on a single Redis an append call may
carry several rooms, see ``lua/append.lua``; ``tests/unit/server/store/test_lua_keys.py`` checks the
scripts). Every key of a room lies in the room's hash slot, so one room lives on one shard of a Redis
Cluster and each script call touches one slot: the stream keeps its plain name, and every other key
of the room carries the hash tag ``{chat:session:<room>}`` (written ``<tag>`` below), the stream's
name, which hashes to the same slot. A room's keys:

- ``chat:session:<room>``: the room's stream (documented; the replay script and ``redis-cli XRANGE``
  read it).
- ``chat:epoch:<tag>``: ``<epoch> <newest id>``: the stream's epoch, set when an append finds the stream
  empty or absent, and the newest id appended (a bare ``<epoch>``, written before, is read too).
- ``chat:presence:<tag>``: the roster, a hash ``<node>/<connection>`` -> role.
- ``chat:followers:<tag>``: the nodes that follow the room, a sorted set node -> the time (ms, Redis's
  clock) until which the node is alive; a node renews it with each heartbeat.
- ``chat:cid:<tag>:<participant>:<cid>``: an entry's client id, within the dedupe window: ``<epoch>
  <id>``, counted only in that epoch of the stream (a bare ``<id>``, written before, while the stream
  holds it); the LLM's answer marker too (participant ``llm``, cid = the generation's rid).
- ``chat:room:<tag>``: the room's current instance (a random id, made by ``POST /v1/session`` with
  auth on; its expiry is the longest of the tokens issued for it), deleted with the room.
- ``chat:llm:lock:<tag>``: ``"<token> <rid>"`` of the room's generation (queued or running).
- ``chat:llm:fence:<tag>``: the room's fencing counter (INCR): each taking of the lock gets the next token.
- ``chat:llm:ended:<tag>:<rid>``: a generation that ended without a stored answer (its llm.error sent).
- ``chat:llm:cancelled:<tag>:<rid>``: a cancelled generation: the role whose ``llm.cancel`` stopped it.
- ``chat:llm:asker:<tag>:<rid>``: the role that asked the generation's question (``LLM_CANCEL=asker``).
- ``chat:llm:waiting:<tag>``: the questions waiting for their turn (``LLM_TURNS``), a list, oldest first,
  of ``"<rid> <reply_to> <asker> <regenerates or -> <deadline ms>"``.
- ``chat:llm:dropped:<tag>``: the rids taken off the waiting list unanswered (a set, kept a day): a
  worker that reads one of their requests only acknowledges it.
- ``chat:llm:generations:<tag>``: the room's generations of the last hour (the cost guard), a sorted set
  rid -> when its question was accepted (ms, Redis's clock).
- ``chat:llm:tokens:<tag>:<day>``: the tokens the room's answers used on UTC day ``<day>`` (days since
  1970-01-01), kept two days.


- ``chat:llm:partial:<tag>``: the running generation's progress, for ``llm.snapshot``: a hash
  (``value``: the lock's ``"<token> <rid>"`` it was written under, ``reply_to``, ``attempt``, ``seq``: the
  last delta sent, ``over`` = 1 once its text passed its cap), and ``chat:llm:partial:text:<tag>`` its
  text so far (deltas 0..seq joined; APPENDed to, gone past the cap). Written in the step that sends the
  deltas, expiring with the lock's lease; deleted when the answer is stored or ends.

Not a room's: ``chat:llm:requests:<queue>`` (a queue of requests for any room), ``chat:llm:tokens:<day>``
(the tokens every room's answers used on UTC day ``<day>``: the deployment's budget, one key), and the channels
``chat:llm:cancel``, ``chat:llm:turns`` (a room whose turn passed) and a node's: on a single Redis
``chat:node:<node>`` (announcements and unstored
frames for one node, of every room), on a Redis Cluster one shard channel per node and room,
``chat:node:<node>:<tag>``, in the room's slot (``SPUBLISH`` reaches the room's shard only).
"""

from __future__ import annotations

PREFIX = "chat:"
STREAM_PREFIX = "chat:session:"
NODE_CHANNEL_PREFIX = "chat:node:"
LLM_CANCEL_CHANNEL = "chat:llm:cancel"
LLM_TURNS_CHANNEL = "chat:llm:turns"
LLM_GROUP = "llm-workers"  # the consumer group of every request queue


def stream_key(room: str) -> str:
    return STREAM_PREFIX + room


def room_tag(room: str) -> str:
    """The hash tag of every other key of the room: the stream's name, so they share its slot."""
    return "{" + STREAM_PREFIX + room + "}"


def epoch_key(room: str) -> str:
    return "chat:epoch:" + room_tag(room)


def presence_key(room: str) -> str:
    return "chat:presence:" + room_tag(room)


def followers_key(room: str) -> str:
    return "chat:followers:" + room_tag(room)


def dedupe_key(room: str, participant: str, cid: str) -> str:
    return f"chat:cid:{room_tag(room)}:{participant}:{cid}"


def room_instance_key(room: str) -> str:
    return "chat:room:" + room_tag(room)


def llm_lock_key(room: str) -> str:
    return "chat:llm:lock:" + room_tag(room)


def llm_fence_key(room: str) -> str:
    return "chat:llm:fence:" + room_tag(room)


def llm_ended_key(room: str, rid: str) -> str:
    return f"chat:llm:ended:{room_tag(room)}:{rid}"


def llm_cancelled_key(room: str, rid: str) -> str:
    return f"chat:llm:cancelled:{room_tag(room)}:{rid}"


def llm_asker_key(room: str, rid: str) -> str:
    return f"chat:llm:asker:{room_tag(room)}:{rid}"


def llm_waiting_key(room: str) -> str:
    return "chat:llm:waiting:" + room_tag(room)


def llm_dropped_key(room: str) -> str:
    return "chat:llm:dropped:" + room_tag(room)


def llm_generations_key(room: str) -> str:
    return "chat:llm:generations:" + room_tag(room)


def llm_room_tokens_key(room: str, day: int) -> str:
    return f"chat:llm:tokens:{room_tag(room)}:{day}"


def llm_tokens_key(day: int) -> str:
    return f"chat:llm:tokens:{day}"


def llm_partial_key(room: str) -> str:
    return "chat:llm:partial:" + room_tag(room)


def llm_partial_text_key(room: str) -> str:
    return "chat:llm:partial:text:" + room_tag(room)


def llm_requests_key(queue: str) -> str:
    return "chat:llm:requests:" + queue


def node_channel(node: str) -> str:
    """A node's channel on a single Redis: the announcements and frames of every room it follows."""
    return NODE_CHANNEL_PREFIX + node


def node_shard_suffix(room: str) -> str:
    """What follows ``chat:node:<node>`` in the node's shard channel for ``room`` (Redis Cluster)."""
    return ":" + room_tag(room)


def node_shard_channel(node: str, room: str) -> str:
    """A node's shard channel for one room, in the room's slot (Redis Cluster)."""
    return NODE_CHANNEL_PREFIX + node + node_shard_suffix(room)
