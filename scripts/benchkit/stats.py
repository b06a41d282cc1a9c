"""Figures, targets and the report of one run: a JSON line (for machines) and a table (for people).

A :class:`Report` holds the run's parameters, its figures, its check (``ok``: nothing lost,
duplicated or reordered...) and its targets. A target names the setup it is defined for; a run on
another setup still reports pass or fail, with ``setup_matches`` false, so nobody mistakes a
smoke run for a measurement.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from benchkit.procs import CpuSample


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of values sorted ascending; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_ms(samples_ns: Sequence[int], prefix: str = "latency_ms") -> dict[str, float | None]:
    """p50, p95, p99 and max of nanosecond samples, in milliseconds."""
    values = sorted(samples_ns)
    figures = {f"{prefix}_p{q}": percentile(values, q) / 1e6 for q in (50, 95, 99)}
    figures[f"{prefix}_max"] = values[-1] / 1e6 if values else math.nan
    return {name: _finite(value) for name, value in figures.items()}


def cpu_figures(used: CpuSample, per: int, unit: str) -> dict[str, float | None]:
    """CPU of the servers, Redis and this client: microseconds per ``unit`` (over ``per`` of them)
    and utilisation (1.0 = one core busy)."""
    figures: dict[str, float | None] = {}
    for who, seconds in (("server", used.server_s), ("redis", used.redis_s), ("client", used.client_s)):
        figures[f"{who}_cpu_us_per_{unit}"] = _finite(seconds / per * 1e6) if seconds is not None and per else None
        figures[f"{who}_cpu_util"] = _finite(seconds / used.wall_s) if seconds is not None and used.wall_s else None
    return figures


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else round(value, 4)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float | None
    op: str  # "<=", ">=" or ">"
    limit: float
    setup: str  # the setup the target is defined for
    setup_matches: bool

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return {"<=": self.value <= self.limit, ">=": self.value >= self.limit, ">": self.value > self.limit}[self.op]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "op": self.op, "limit": self.limit,
                "pass": self.passed, "setup": self.setup, "setup_matches": self.setup_matches}


@dataclass
class Report:
    mode: str
    params: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)  # must hold "ok"
    targets: list[Target] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)  # the table, in order
    error: str | None = None  # the run could not do its job (the figures are then partial)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.check.get("ok"))

    def as_json(self) -> dict[str, Any]:
        record = {"mode": self.mode, "ok": self.ok, "params": self.params, "figures": self.figures,
                  "check": self.check, "targets": [t.as_json() for t in self.targets]}
        if self.error is not None:
            record["error"] = self.error
        return record

    def json_line(self) -> str:
        return orjson.dumps(self.as_json()).decode()

    def print_table(self, out: TextIO = sys.stderr) -> None:
        title = " ".join(f"{k}={v}" for k, v in self.params.items() if v not in (None, ""))
        rows = [*self.rows]
        if self.error is not None:
            rows.append(("ERROR", self.error))
        rows += [(f"target {t.name}", f"{'PASS' if t.passed else 'FAIL'}  {fmt(t.value)} {t.op} {fmt(t.limit)}"
                  + ("" if t.setup_matches else f"  (defined for {t.setup}: not this setup)")) for t in self.targets]
        width = max((len(label) for label, _ in rows), default=0)
        print(f"\n== {self.mode}: {title}", file=out)
        for label, value in rows:
            print(f"  {label.ljust(width)}  {value}", file=out)
        print(f"  {'result'.ljust(width)}  {'ok' if self.ok else 'NOT OK'}", file=out, flush=True)


def fmt(value: float | int | None, digits: int = 2) -> str:
    """A figure for the table: thousands separators for big numbers, '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_cpu(figures: dict[str, Any], who: str, unit: str) -> str:
    per, util = figures.get(f"{who}_cpu_us_per_{unit}"), figures.get(f"{who}_cpu_util")
    if per is None:
        return "- (process not known)"
    return f"{fmt(per, 1)} us/{unit}  (util {fmt(util * 100 if util is not None else None, 0)}%)"


def errors_row(errors: int, closed: int, samples: Sequence[str]) -> tuple[str, str]:
    return "errors / closed", f"{errors} / {closed}" + (f", e.g. {samples[0]}" if samples else "")
