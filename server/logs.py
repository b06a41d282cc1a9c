"""Log lines: the text format or one JSON object per line (``LOG_FORMAT``), every line redacted.

:func:`setup` puts one handler on the root logger (uvicorn's and websockets' loggers propagate to it:
``python -m server`` gives uvicorn no logging configuration of its own), with the
:class:`~server.redact.Redactor` filter, which runs before the formatter: no format sees a secret.

With ``LOG_FORMAT=json`` each line is ``{"time", "level", "logger", "message"}`` plus, where known,
``sid`` (the room), ``conn`` (the connection), ``rid`` (the generation) and ``node`` (this process),
and ``exc`` (a traceback) or ``stack``. The room, connection and generation come from the context the
line is logged in: a connection's task and a generation's task :func:`bind` theirs, and every line
logged within carries them (a field passed in ``extra=`` wins). The node is the process's, once
:func:`set_node` has named it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable
from typing import Any

import orjson

from protocol.codec import format_ts
from server import redact

FIELDS = ("sid", "conn", "rid", "node")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("log_fields", default={})  # noqa: B039
_node: list[str] = []  # this process's node id, once known


def bind(**fields: str) -> None:
    """Name the room, connection or generation of every line logged from now on in this task (and in
    the tasks it starts)."""
    _context.set({**_context.get(), **fields})


def set_node(node: str) -> None:
    _node[:] = [node]


def context_fields(record: logging.LogRecord) -> dict[str, str]:
    """The fields of :data:`FIELDS` known for ``record``: its ``extra=``, its context, the node."""
    fields = {"node": _node[0]} if _node else {}
    fields.update(_context.get())
    fields.update({name: str(getattr(record, name)) for name in FIELDS if getattr(record, name, None) is not None})
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (orjson escapes the newlines of a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": format_ts(int(record.created * 1000)), "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        line.update(context_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line, default=str).decode()


def setup(level: int, log_format: str, secrets: Iterable[str] = ()) -> None:
    """Log at ``level`` in ``log_format`` (``text`` or ``json``) on stderr, every line redacted."""
    logging.basicConfig(level=level, format=TEXT_FORMAT)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    redact.install(secrets)
