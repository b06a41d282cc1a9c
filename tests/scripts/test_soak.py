"""scripts/soak.py as CI runs it: 60 seconds of chaos against real relay processes, real LLM worker
processes and a redis-server of its own (killed, restarted, frozen, refusing writes), then its checker.

Every fault is done at least once; the checker finds nothing lost, duplicated, reordered, missing or
made up, no spurious ``recovered: false``, and one terminal event per question. (The checker's own rules
are unit-tested in tests/unit/scripts/soakkit/test_check.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from soakkit.nemesis import FAULTS

ROOT = Path(__file__).resolve().parents[2]
DURATION_S = 60


@pytest.mark.timeout(DURATION_S + 300)
def test_a_minute_of_faults_loses_duplicates_and_reorders_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", str(DURATION_S),
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=DURATION_S + 280)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    outcome = orjson.loads(out.read_bytes())
    assert result.returncode == 0 and outcome["ok"], result.stdout[-6000:]
    assert outcome["drained"] is True
    assert set(outcome["faults"]) == set(FAULTS), outcome["faults"]
    assert all(n == 0 for n in outcome["violations"].values()), outcome["violations"]
    figures = outcome["figures"]
    assert figures["stored"] > 500 and figures["questions"] > 5 and figures["answered"] > 0
    assert figures["resends"] > 0 and figures["disconnects"] > figures["clients"]  # the faults were felt
