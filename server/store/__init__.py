"""The relay's storage: ports (:mod:`server.store.ports`), key names (:mod:`server.store.keys`) and two
adapters, Redis (:mod:`server.store.redis_store`, with its lean client :mod:`server.store.resp`) and
embedded (:mod:`server.store.embedded`). The composition root (:func:`server.wiring.open_store`)
picks one from ``REDIS_URL``."""
