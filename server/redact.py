"""No secret in any log line: a logging filter that redacts credentials from every record.

:func:`install` puts one :class:`Redactor` on every handler of the root logger (``python -m server``
sends uvicorn's and websockets' lines there too, so they pass the same filter). A handler's filter
sees every record the handler writes, its children's included, so nothing reaches a log file
without passing it. It redacts, in the message (its arguments merged in), the traceback and the
stack:

- the value of every ``token=``, ``access_token=``, ``key=``, ``api_key=``, ``secret=`` and
  ``password=`` query parameter (a browser's room token arrives as ``?token=``, and uvicorn logs
  each WebSocket's path with its query string);
- ``Authorization`` header values and ``Bearer`` credentials;
- anything shaped as a JWT (a room token, wherever it appears);
- the configured secrets, verbatim (``ADMIN_KEY``, ``AUTH_SECRET``, ``METRICS_TOKEN``,
  ``OPENAI_API_KEY``, the password of ``REDIS_URL``).

It runs only for records a logger lets through (their level), so the hot path pays nothing when it
does not log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[redacted]"

_QUERY = re.compile(r"(?i)\b((?:access_)?token|(?:api_|admin_)?key|secret|password)=[^&\s\"'#;,)]+")
_AUTHORIZATION = re.compile(r"(?i)\b(authorization\b[\"']?\s*[:=,]\s*[\"']?)(?:(bearer|basic)\s+)?[^\s\"',;)]+")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MIN_SECRET_CHARS = 6  # shorter values would redact ordinary words; settings ask for far longer secrets


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential it shows replaced by ``[redacted]``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _JWT.sub(REDACTED, text)
    text = _QUERY.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}", text)
    return _BEARER.sub(f"Bearer {REDACTED}", text)


class Redactor(logging.Filter):
    """Rewrites each record so that no handler writes a credential (it never drops a record)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # The longest first: a secret containing another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True  # already done (the record passes several handlers)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, as text
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        setattr(record, "redacted", True)  # noqa: B010 (LogRecord has no such attribute)
        return True


def install(secrets: Iterable[str] = ()) -> Redactor:
    """Put a :class:`Redactor` knowing ``secrets`` on every handler of the root logger (set up first)."""
    redactor = Redactor(secrets)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, Redactor)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
    return redactor
