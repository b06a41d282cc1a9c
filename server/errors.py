"""One place that turns an exception into what the client sees.

A :class:`~protocol.errors.ProtocolError` becomes an ``error`` frame with its own code; Redis
being unreachable, or refusing writes (:class:`~server.store.ports.StoreRefused`: NOREPLICAS,
READONLY, OOM, MISCONF, BUSY..., so nothing was written), becomes ``unavailable`` (a refusal is
logged once a minute per kind, not once per message); anything else is a bug: it is logged with
its traceback and the client gets ``internal``, with no details.
"""

from __future__ import annotations

import logging

from protocol.codec import error_frame
from protocol.errors import ERROR_CODES, ProtocolError
from server.metrics import COUNTS
from server.store.ports import StoreRefused, StoreUnavailable
from server.supervise import Throttled

log = logging.getLogger(__name__)
_refusals = Throttled(log)


def error_code(exc: BaseException) -> tuple[str, str]:
    """``(code, message)`` for ``exc`` (counted in the metrics); logs unexpected exceptions with their
    traceback."""
    if isinstance(exc, ProtocolError):
        code, message = exc.code, exc.message
    elif isinstance(exc, StoreUnavailable):
        code, message = "unavailable", ERROR_CODES["unavailable"]
    elif isinstance(exc, StoreRefused):
        _refusals.warning("Redis refused a write (the client is told unavailable)", exc)
        code, message = "unavailable", ERROR_CODES["unavailable"]
    else:
        log.error("internal error", exc_info=exc)
        code, message = "internal", ERROR_CODES["internal"]
    COUNTS.errors[code] += 1
    return code, message


def error_for(exc: BaseException, cid: str | None = None) -> str:
    """The ``error`` frame answering ``exc``; ``cid`` is used when the error carries none."""
    code, message = error_code(exc)
    if not isinstance(exc, ProtocolError):
        return error_frame(code, message, cid)
    return error_frame(code, message, exc.cid if exc.cid is not None else cid, exc.retry_after_s)
