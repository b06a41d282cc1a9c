"""``chat-relay token SID ROLE [--ttl-s N]``: print a room token, creating the room as ``POST /v1/session``
does (:func:`server.rooms_api.open_room`), on the Redis of ``REDIS_URL`` with the key ``AUTH_SECRET``.

The settings are the server's (:mod:`server.settings`): ``AUTH_SECRET`` (with ``ADMIN_KEY``, which the
server requires with it) and ``REDIS_URL`` must be set, as on the nodes the token is for; ``--ttl-s``
defaults to ``AUTH_TOKEN_TTL_S``. Only the token goes to stdout, so ``TOKEN=$(chat-relay token ...)``
works. Exit status: 0; 2 with a one-line message on stderr for a bad setting or argument, or when Redis
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from protocol.names import CLIENT_ROLES, is_valid_room
from server.auth import Auth
from server.rooms_api import MAX_TTL_S, open_room
from server.settings import Settings, settings_or_exit
from server.store.ports import StoreError, StoreUnavailable
from server.wiring import open_store

PROG = "chat-relay token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", metavar="SID", help="room id, [A-Za-z0-9_-]{1,64}")
    parser.add_argument("role", metavar="ROLE", choices=sorted(CLIENT_ROLES), help="A or B")
    parser.add_argument("--ttl-s", type=int, metavar="N", help="the token's lifetime in seconds "
                                                                "(default: AUTH_TOKEN_TTL_S)")


def run_args(args: argparse.Namespace) -> int:
    if not is_valid_room(args.room):
        return fail(f"invalid room id {args.room!r}: use 1 to 64 characters among A-Z a-z 0-9 _ -")
    if args.ttl_s is not None and not 1 <= args.ttl_s <= MAX_TTL_S:
        return fail(f"--ttl-s must be from 1 to {MAX_TTL_S}")
    settings = settings_or_exit(PROG, os.environ)
    logging.disable(logging.WARNING)  # a command: its own one-line message says what failed, not the store's log
    if settings.auth_secret is None:
        return fail("AUTH_SECRET is not set: with auth off the relay takes no tokens")
    if settings.redis_url is None:
        return fail("REDIS_URL is not set: the room must be created on the Redis the relay uses")
    try:
        token = asyncio.run(issue(settings, args.room, args.role, args.ttl_s or settings.auth_token_ttl_s))
    except (StoreUnavailable, StoreError, OSError) as exc:
        return fail(f"cannot create the room on Redis: {type(exc).__name__}")
    print(token)
    return 0


async def issue(settings: Settings, room: str, role: str, ttl_s: int) -> str:
    """A token for ``role`` in ``room``, the room created first when it has no instance."""
    store = open_store(settings.redis_url, lean=False, timeout_s=settings.redis_timeout_s)
    try:
        created = await open_room(Auth(settings.auth_secret, settings.admin_key), store.instances, room, ttl_s)
    finally:
        await store.close()
    return str(created["tokens"][role])


def fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2
