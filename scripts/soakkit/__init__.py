"""The chaos harness behind ``scripts/soak.py``: careful clients, a nemesis and a checker.

- :mod:`soakkit.procs`: the processes under test (a redis-server with an AOF, relay nodes, LLM workers), and
  the faults done to them (kill, restart, freeze, refuse writes).
- :mod:`soakkit.client`: a careful client (resumes with ``last_id``/``epoch`` after any disconnect, to any
  node, and re-sends every unacknowledged message with its ``cid``) that records everything it receives.
- :mod:`soakkit.nemesis`: the faults, in turn.
- :mod:`soakkit.check`: the checker, pure: the records and the rooms' streams in, the violations out.
"""
