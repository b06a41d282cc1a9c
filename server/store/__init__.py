"""The relay's storage: ports (:mod:`server.store.ports`), key names (:mod:`server.store.keys`) and two
adapters, Redis (:mod:`server.store.redis_store`) and embedded (:mod:`server.store.embedded`).

:func:`open_store` picks the adapter from the settings' ``REDIS_URL``: none means embedded.
"""

from __future__ import annotations

from server.store.embedded import EmbeddedStore
from server.store.ports import Store
from server.store.redis_store import RedisStore


def open_store(url: str | None, *, lean: bool = True) -> Store:
    """The store on the Redis at ``url``, or on a new in-process fakeredis server when None."""
    return EmbeddedStore.create() if url is None else RedisStore.connect(url, lean=lean)
