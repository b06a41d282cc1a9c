"""The ``chat-relay`` command: ``serve``, ``history`` and ``token`` (:mod:`cli.main`)."""
