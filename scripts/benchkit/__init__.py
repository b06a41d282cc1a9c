"""The parts of ``scripts/bench.py``: one module per mode, plus the client, the processes and the checks.

- :mod:`benchkit.wsclient`: client WebSocket connections (a lean one for the load, the library's as a check).
- :mod:`benchkit.procs`: the server processes a run starts or finds, Redis, and their CPU and memory.
- :mod:`benchkit.streams`: reading rooms' streams back (XRANGE, or the history API) and comparing.
- :mod:`benchkit.stats`: percentiles, targets and the report (one JSON line, one table).
- :mod:`benchkit.relay`, :mod:`benchkit.idle`, :mod:`benchkit.llm`, :mod:`benchkit.history`: the modes.
"""
