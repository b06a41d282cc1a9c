"""``scripts/screenshot_page.py``: it writes a PNG of the chat page, A's view of a conversation, with
Chromium. (That the README shows the committed one: ``tests/unit/scripts/test_screenshot_page.py``.)"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.schemas import ROOT

SCRIPT = ROOT / "scripts" / "screenshot_page.py"

pytestmark = pytest.mark.clients  # Chromium: scripts/test.sh clients


def test_the_script_writes_a_png_of_the_page(tmp_path: Path) -> None:
    out = tmp_path / "page.png"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (1000, 700)
